"""The immune system across 5 real `vsmcpd` processes.

- `attacker` (zone public) probes a restricted tool at node A: A's built-in pattern
  blocks the origin, the signed policy reaches every node, and every node refuses
  `attacker` (even for `echo`) naming the policy, while `good` keeps working; the block
  ends by itself at its expiry; `/api/policies`, `vsmcp policies` and A's audit log
  carry the note. A revocation signed by a stranger is refused; the issuer's, made by
  `vsmcp policies revoke`, lifts the block everywhere before its expiry.
- A peer sending envelopes with bad signatures: observed by one node, it stays
  unblocked everywhere (pending); once a quorum of members saw it, every node blocks it
  and cuts its links (admission dropped, membership loses it, its HELLO refused).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.integration.harness import (
    NodeProcess,
    call_tool,
    counters,
    mesh_name_for,
    run_cli,
    wait_mesh_states,
)
from tests.integration.mesh_peer import dev_peer
from tests.polling import async_wait_for, wait_for
from vsmcp.crdt.policies import sign_revocation
from vsmcp.mesh.envelope import MsgType, Sealer
from vsmcp.mesh.identity import NodeKey, load_key_file, public_key_from_node_id
from vsmcp.mesh.transport import Priority, RemoteError
from vsmcp.node.peers.service import MeshService
from vsmcp.node.store.database import db_path_for

pytestmark = pytest.mark.integration

TOKENS = {"attacker": "attacker-token-0123456789", "good": "good-token-0123456789abc"}
# Long enough that a loaded machine cannot let a block run out between the steps that
# observe it (spreading to 5 nodes, the CLI, a revocation).
BLOCK_TTL_S = 45
DENIALS = 4
POLICY_BLOCKED = -32007
ZONE_DENIED = -32010


def _config() -> str:
    tokens = "".join(
        f'[[mcp.tokens]]\nname = "{name}"\ntoken = "{token}"\nzone = "public"\n'
        for name, token in TOKENS.items()
    )
    return f"""
[mesh]
preset = "local"
mdns = false
[node]
debug_api = true
[tools]
entry_points = false
[vsm.immune]
block_ttl_s = {BLOCK_TTL_S}
denial_count = {DENIALS}
denial_window_s = 30
bad_envelope_count = 3
bad_envelope_window_s = 30
observation_ttl_s = 120
{tokens}
"""


@pytest.fixture(scope="module")
def five(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    base = tmp_path_factory.mktemp("immune")
    config = base / "node.toml"
    config.write_text(_config())
    started: list[NodeProcess] = []
    failed = True
    try:
        first = NodeProcess(base / "a", "--config", str(config)).start()
        started.append(first)
        seed = f"127.0.0.1:{first.mesh_port}"
        for name in "bcde":
            node = NodeProcess(base / name, "--config", str(config), "--seed", seed)
            started.append(node.start(wait=False))
        for node in started:
            node.wait_ready()
        wait_mesh_states(started, {n.node_id: "alive" for n in started}, timeout_s=60)
        assert first.post("/api/debug/tools?name=secret.echo&zone=restricted") == 200
        failed = False
        yield started
    finally:
        for node in started:
            node.stop()
            if failed:
                print(f"--- log of {node.data_dir} ---\n{node.log_text()[-6000:]}")


def _call(node: NodeProcess, who: str, tool: str) -> dict[str, Any]:
    return call_tool(node, TOKENS[who], tool, {"text": "hi"} if tool == "echo" else {})


def _code(reply: dict[str, Any]) -> int | None:
    error = reply.get("error")
    return error["code"] if error else None


def _mitigations(node: NodeProcess, target: str) -> list[dict[str, Any]]:
    return [
        p
        for p in node.get_json("/api/policies")["policies"]
        if p["kind"] == "mitigation" and p["target"] == target
    ]


def _enforced(node: NodeProcess, target: str) -> dict[str, Any] | None:
    live = [p for p in _mitigations(node, target) if p["enforced"]]
    return live[0] if live else None


def test_an_origin_probing_at_one_node_is_refused_at_every_node_until_the_block_expires(
    five: list[NodeProcess],
) -> None:
    a = five[0]
    for _ in range(DENIALS):
        assert _code(_call(a, "attacker", "secret.echo")) == ZONE_DENIED
    policy = wait_for(
        lambda: all(_enforced(n, "http:attacker") for n in five) and _enforced(a, "http:attacker"),
        timeout_s=40,
        what="the block of http:attacker enforced on every node",
    )
    assert policy["issuer"] == a.node_id
    note = policy["note"]
    assert note["source"] == "pattern:immune-zone-denials"
    assert f"{DENIALS} events" in note["evidence"] and "secret.echo" in note["evidence"]
    assert "blocked caller http:attacker" in note["action"]
    assert note["until"] == policy["expires"]

    for node in five:
        refused = _call(node, "attacker", "echo")
        if "error" in refused:  # refused: named policy, its expiry
            error = refused["error"]
            assert error["code"] == POLICY_BLOCKED, error
            assert policy["id"] in error["message"] and policy["expires"] in error["message"]
            assert error["data"]["policy"] == policy["id"]
        else:  # only possible once the block has run out
            assert time.time() * 1000 >= policy["expires_at_ms"], refused
        assert "error" not in _call(node, "good", "echo")

    listed = run_cli("policies", "--data-dir", str(five[3].data_dir))
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if policy["id"] in line)
    assert "pattern:immune-zone-denials" in line and a.node_id in line

    with sqlite3.connect(f"file:{db_path_for(a.data_dir)}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT data FROM audit_entries WHERE kind = 'immune.mitigation'")
        entries = [json.loads(row[0]) for row in rows]
    (entry,) = [e for e in entries if e["policy"] == policy["id"]]
    assert entry["note"] == note

    def expired_everywhere() -> bool:
        return all("error" not in _call(node, "attacker", "echo") for node in five)

    wait_for(expired_everywhere, timeout_s=BLOCK_TTL_S + 20, what="the block expired")
    # Not before its time: the first success came after the expiry the policy named.
    assert time.time() * 1000 >= policy["expires_at_ms"]


@pytest.fixture
async def hostile(five: list[NodeProcess]) -> AsyncIterator[MeshService]:
    seeds = [f"127.0.0.1:{five[0].mesh_port}"]
    # A dev-mode member (self-certified, no `immune` role) admitted by the mesh.
    peer = dev_peer("127.0.0.1", seeds, mesh_name=mesh_name_for(five[0].data_dir), zone="public")
    async with peer:
        yield peer


def _send_bad_signatures(peer: MeshService, key: NodeKey, node: NodeProcess, count: int) -> None:
    target = public_key_from_node_id(node.node_id)
    sealer = Sealer(key)
    for _ in range(count):
        envelope = bytearray(sealer.seal(MsgType.MEMBERSHIP, b"x", recipient=target))
        envelope[-1] ^= 0x01  # the signature no longer verifies
        endpoint = f"tcp://127.0.0.1:{node.mesh_port}"
        assert peer.transport.send(target, endpoint, bytes(envelope), priority=Priority.MEMBERSHIP)


async def test_a_peer_with_bad_signatures_is_blocked_only_once_a_quorum_saw_it(
    five: list[NodeProcess], hostile: MeshService
) -> None:
    key: NodeKey = hostile._key
    x = hostile.node_id

    # The probes read the nodes over blocking HTTP: off this event loop, which runs the
    # hostile peer (blocked, it would miss its pings and turn suspect).
    def admitted_now() -> bool:
        # Admitted (HELLO done), not only known alive by gossip: a rejected envelope is
        # put on a peer only when the connection's key is an admitted peer's.
        return all(
            any(
                p["id"] == x and p["admitted"] and p["state"] == "alive"
                for p in n.get_json("/api/peers")["peers"]
            )
            for n in five
        )

    async def admitted_everywhere() -> bool:
        return await asyncio.to_thread(admitted_now)

    await async_wait_for(admitted_everywhere, timeout_s=30, what="the peer admitted by all")

    # One node alone sees it: its observation reaches everyone, and nobody blocks.
    a = five[0]
    before = a.get_json("/api/policies")["stats"]
    _send_bad_signatures(hostile, key, a, 3)

    def observed_now() -> bool:
        return all(
            any(
                p["kind"] == "observation" and p["target"] == x
                for p in n.get_json("/api/policies")["policies"]
            )
            for n in five
        )

    async def observed_everywhere() -> bool:
        return await asyncio.to_thread(observed_now)

    await async_wait_for(observed_everywhere, timeout_s=40, what="A's observation replicated")
    stats = a.get_json("/api/policies")["stats"]
    assert stats.get("pending", 0) > before.get("pending", 0), stats
    assert stats.get("issued", 0) == before.get("issued", 0), stats
    assert counters(a, "vsmcp_immune_events")["pending"] == stats["pending"]
    assert all(not _mitigations(n, x) for n in five)

    # Two more members see it: 3 observers out of 5 others make the quorum.
    for node in five[1:3]:
        _send_bad_signatures(hostile, key, node, 3)

    async def blocked_everywhere() -> bool:
        return await asyncio.to_thread(lambda: all(_enforced(n, x) for n in five))

    try:
        await async_wait_for(blocked_everywhere, timeout_s=40, what="the peer blocked everywhere")
    except AssertionError:
        for node in five:  # what each node held, for the failure report
            print(node.node_id, json.dumps(node.get_json("/api/policies")), flush=True)
        raise
    block = _enforced(five[4], x)
    assert block is not None and len(block["observers"]) >= 3
    assert not set(block["observers"]) & {x, five[3].node_id, five[4].node_id}

    # The block cuts x's links on every node while it lasts: its admission is dropped,
    # membership stops hearing it, and a new HELLO from it is refused.
    def cut_off_now() -> bool:
        return all(
            all(
                not p["admitted"] and p["state"] != "alive"
                for p in n.get_json("/api/peers")["peers"]
                if p["id"] == x
            )
            for n in five
        )

    async def cut_off_everywhere() -> bool:
        return await asyncio.to_thread(cut_off_now)

    await async_wait_for(cut_off_everywhere, timeout_s=40, what="x cut off by every node")
    for node in five:
        target = public_key_from_node_id(node.node_id)
        hello = hostile._sealer.seal(MsgType.HELLO, hostile._hello_payload(), recipient=target)
        with pytest.raises(RemoteError) as refused:
            await hostile.transport.request(
                target, f"tcp://127.0.0.1:{node.mesh_port}", hello, timeout_s=10,
                priority=Priority.REQUEST, candidate=True,
            )  # fmt: skip
        assert refused.value.reason == "blocked", refused.value
        assert (await asyncio.to_thread(counters, node, "vsmcp_mesh_refused"))["blocked"] >= 1


def test_a_forged_revocation_is_refused_and_the_issuers_revokes_the_block_everywhere(
    five: list[NodeProcess],
) -> None:
    a = five[0]
    wait_for(
        lambda: "error" not in _call(a, "attacker", "echo"),
        timeout_s=BLOCK_TTL_S + 20,
        what="no block of attacker left from an earlier test",
    )
    for _ in range(DENIALS):
        assert _code(_call(a, "attacker", "secret.echo")) == ZONE_DENIED
    policy = wait_for(
        lambda: all(_enforced(n, "http:attacker") for n in five) and _enforced(a, "http:attacker"),
        timeout_s=40,
        what="the block enforced on every node",
    )
    # Another member's key is neither the issuer's nor the authority's: refused.
    stranger = load_key_file(five[1].data_dir / "node.key")
    issuer = public_key_from_node_id(a.node_id)
    forged = sign_revocation(
        stranger, issuer, policy["id"], policy["version"], now_ms=int(time.time() * 1000)
    )
    status, answer = _post_record(five[2], forged)
    assert status == 403 and "refused" in answer["error"], answer
    assert "error" in _call(five[2], "attacker", "echo")
    # The issuer's key (a dev node is its own authority) signs the revocation in the CLI;
    # any node takes the signed record, and it travels.
    revoked = run_cli(
        "policies", "revoke", policy["id"], "--issuer", a.node_id,
        "--key", str(a.data_dir / "node.key"), "--data-dir", str(five[2].data_dir),
    )  # fmt: skip
    assert revoked.returncode == 0, revoked.stderr
    wait_for(
        lambda: all("error" not in _call(n, "attacker", "echo") for n in five),
        timeout_s=40,
        what="the revoked block lifted on every node",
    )
    assert time.time() * 1000 < policy["expires_at_ms"]  # lifted before its expiry


def _post_record(node: NodeProcess, blob: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        node.url + "/api/policies/revocations",
        data=json.dumps({"record": base64.b64encode(blob).decode()}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
