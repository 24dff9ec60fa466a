"""Signed WASM module distribution between real nodes: three nodes certified by one
authority (none with the `publisher` role); B and C run every published module (`[edge]
run = "*"`), A only takes publications and holds their bytes. The echo example published
on A with `vsmcp wasm publish --authority-key` is fetched over the mesh by B and C,
loaded there and called by an MCP client on C; `vsmcp wasm unpublish` retires it
everywhere. A manifest signed by a stranger key, bytes that do not match their manifest
(posted, or served by a holder: the next holder is asked), and a node without the
publisher role signing are refused on every node and counted. B and C also have a WASM
tool of their own configured: it shares one runtime (one engine and its instance pool)
with the published modules."""

from __future__ import annotations

import base64
import json
import re
import socket
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client

from tests.integration.harness import (
    REPO_ROOT,
    NodeProcess,
    counters,
    run_cli,
    running,
)
from tests.integration.sdk_client import mcp_http_client
from tests.polling import wait_for
from tests.skips import require_module
from vsmcp.crdt.policies import sign_grant
from vsmcp.edge.engine import pool_slots
from vsmcp.edge.runtime import DEFAULT_THREADS
from vsmcp.mesh.identity import load_key_file
from vsmcp.node.store.database import db_path_for
from vsmcp.node.wasmdist.model import WASM_MODULE_KIND

pytestmark = pytest.mark.integration

ECHO_WAT = REPO_ROOT / "examples" / "wasm" / "echo.wat"
ECHO_TOML = REPO_ROOT / "examples" / "wasm" / "echo.toml"
FAMILY = "vsmcp_wasm_distribution_events"
PUBLIC_TOKEN = "public-token-0123456789"
RESTRICTED_TOKEN = "restricted-token-0123456789"
CONFIG = '[trust]\nauthority_public_key = "{key}"\n[mesh]\npreset = "local"\n' + (
    "[tools]\nentry_points = false\n"
    f'[[mcp.tokens]]\nname = "web"\ntoken = "{PUBLIC_TOKEN}"\nzone = "public"\n'
    f'[[mcp.tokens]]\nname = "ci"\ntoken = "{RESTRICTED_TOKEN}"\nzone = "restricted"\n'
)
# Runners audit often: the probe test waits for a probe's result, not only its listing.
RUN_ALL = '[edge]\nrun = "*"\n[vsm.audits]\nmin_interval_s = 1.0\nmax_interval_s = 2.0\n'
# A WASM tool the runners have configured (beside the published ones).
LOCAL_ECHO = 'name = "local.echo"\nmodule = "{module}"\nzone = "public"\n'
# One engine's instance pool: its slots of ≈4 GiB of address space (`vsmcp.edge.engine`).
POOL_ADDRESS_SPACE = pool_slots(DEFAULT_THREADS) * (4 << 30)


class Mesh:
    def __init__(self, nodes: list[NodeProcess], authority: Path, stranger: Path) -> None:
        self.nodes = nodes
        self.authority = authority
        self.stranger = stranger


def _certified(tmp: Path, authority: Path, name: str) -> Path:
    data = tmp / name
    node_id = json.loads(run_cli("keys", "node", "--data-dir", str(data), "--json").stdout)[
        "node_id"
    ]
    issued = run_cli(
        "keys", "issue", "--authority-key", str(authority), "--node", node_id,
        "--zone", "ops", "--out", str(data / "node.cert"),
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    return data


def _authority(path: Path) -> str:
    out = run_cli("keys", "init-authority", "--out", str(path))
    match = re.search(r"authority public key: ([0-9a-f]{64})", out.stdout)
    assert match, out.stdout + out.stderr
    return match.group(1)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    require_module("wasmtime")
    tmp = tmp_path_factory.mktemp("wasm-publish")
    authority = tmp / "authority.key"
    key = _authority(authority)
    holder, runner = tmp / "holder.toml", tmp / "runner.toml"
    holder.write_text(CONFIG.format(key=key))
    local = tmp / "local-echo.toml"
    local.write_text(LOCAL_ECHO.format(module=ECHO_WAT))
    runner.write_text(CONFIG.format(key=key) + RUN_ALL + f'[[tools.wasm]]\nmanifest = "{local}"\n')
    stranger = tmp / "stranger.key"
    _authority(stranger)
    nodes = [
        NodeProcess(_certified(tmp, authority, name), "--config", str(config), dev=False)
        for name, config in (("a", holder), ("b", runner), ("c", runner))
    ]
    with running(nodes) as started:
        yield Mesh(started, authority, stranger)


def _owner_token(node: NodeProcess) -> str:
    """The data dir's secret: what `vsmcp wasm publish --data-dir` presents."""
    return (node.data_dir / "stdio.token").read_text(encoding="utf-8").strip()


def _post(
    node: NodeProcess, body: dict[str, Any], token: str | None = ""
) -> tuple[int, dict[str, Any]]:
    """POST /api/wasm/modules as the node's owner ("" ), with `token`, or with none."""
    bearer = _owner_token(node) if token == "" else token
    status, answer = node.post_json("/api/wasm/modules", body, token=bearer)
    return status, answer


def _providers(node: NodeProcess, tool: str) -> set[str]:
    return {t["provider"] for t in node.get_json("/api/tools")["tools"] if t["name"] == tool}


def _module(node: NodeProcess, name: str) -> dict[str, Any] | None:
    modules = node.get_json("/api/wasm/modules")["modules"]
    return next((m for m in modules if m["name"] == name), None)


def _virtual_size(node: NodeProcess) -> int:
    for line in Path(f"/proc/{node.pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) << 10
    raise AssertionError(f"no VmSize for pid {node.pid}")


def _audited_refusals(node: NodeProcess) -> set[tuple[str, str]]:
    with sqlite3.connect(f"file:{db_path_for(node.data_dir)}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT data FROM audit_entries WHERE kind = 'wasm.refused'")
        entries = [json.loads(row[0]) for row in rows]
    return {(e["module"], e["reason"]) for e in entries}


def _echo_bytes() -> bytes:
    import wasmtime

    return bytes(wasmtime.wat2wasm(ECHO_WAT.read_text()))


def _signed(key_file: Path, name: str, module: bytes, holder: str, manifest: str) -> str:
    import hashlib

    body = {
        "name": name,
        "sha256": hashlib.sha256(module).hexdigest(),
        "size": len(module),
        "manifest": manifest,
        "holder": holder,
    }
    now_ms = int(time.time() * 1000)
    blob = sign_grant(
        load_key_file(key_file), name, WASM_MODULE_KIND, body, now_ms=now_ms, ttl_ms=3_600_000
    )
    return base64.b64encode(blob).decode()


async def test_published_on_a_runs_on_b_and_c_and_unpublish_retires_it(mesh: Mesh) -> None:
    a, b, c = mesh.nodes
    published = run_cli(
        "wasm", "publish", str(ECHO_WAT), "--manifest", str(ECHO_TOML),
        "--authority-key", str(mesh.authority), "--data-dir", str(a.data_dir),
    )  # fmt: skip
    assert published.returncode == 0, published.stderr
    assert "wasm.echo: published" in published.stdout

    # B and C fetched the bytes over the mesh, loaded and announced the tool.
    def everywhere() -> bool:
        return all(_providers(n, "wasm.echo") == {b.node_id, c.node_id} for n in mesh.nodes)

    wait_for(everywhere, timeout_s=60, what="wasm.echo announced by B and C")
    held_at_a = _module(a, "wasm.echo")
    assert held_at_a is not None and held_at_a["held"] and not held_at_a["loaded"], held_at_a
    for node in (b, c):
        entry = _module(node, "wasm.echo")
        assert entry is not None and entry["held"] and entry["loaded"], entry
        assert counters(node, FAMILY).get("fetched", 0) == 1
        held = list((node.data_dir / "wasm").glob("*.wasm"))
        assert [p.name for p in held] == [f"{entry['sha256']}.wasm"]
        assert held[0].read_bytes() == _echo_bytes()

    # An MCP client at C calls it, and C runs it itself (its local copy).
    async with mcp_http_client() as http:
        transport = streamable_http_client(c.url + "/mcp", http_client=http)
        async with Client(transport, cache=None) as client:
            result = await client.call_tool("wasm.echo", {"from": "c"})
            local = await client.call_tool("local.echo", {"at": "c"})
    assert not result.is_error
    assert result.structured_content == {"echo": {"from": "c"}}
    assert local.structured_content == {"echo": {"at": "c"}}
    assert counters(c, "vsmcp_wasm_stops") == {}
    # Both ran in one runtime: one instance pool's address space, not one per runtime
    # (none when the node had to fall back to the on-demand allocator).
    assert _virtual_size(c) < 1.5 * POOL_ADDRESS_SPACE, _virtual_size(c)

    listed = run_cli("wasm", "list", "--url", b.url)
    assert listed.returncode == 0 and "wasm.echo" in listed.stdout

    gone = run_cli(
        "wasm", "unpublish", "wasm.echo", "--authority-key", str(mesh.authority), "--url", c.url
    )
    assert gone.returncode == 0, gone.stderr

    def retired() -> bool:
        return all(
            not _providers(n, "wasm.echo") and _module(n, "wasm.echo") is None for n in mesh.nodes
        )

    wait_for(retired, timeout_s=60, what="wasm.echo gone from every node")
    # Counted once the unit has stopped, which may be after its tool left the listing.
    wait_for(
        lambda: all(counters(n, FAMILY).get("unloaded", 0) >= 1 for n in (b, c)),
        timeout_s=30,
        what="the unload counted on B and C",
    )


def test_a_stranger_signed_manifest_is_refused_on_every_node(mesh: Mesh) -> None:
    module = _echo_bytes()
    record = _signed(mesh.stranger, "wasm.forged", module, "", ECHO_TOML.read_text())
    for node in mesh.nodes:
        before = counters(node, FAMILY).get("refused_signature", 0)
        status, answer = _post(
            node, {"record": record, "module": base64.b64encode(module).decode()}
        )
        assert status == 403 and "refused" in answer["error"], answer
        assert counters(node, FAMILY).get("refused_signature", 0) == before + 1
        assert _module(node, "wasm.forged") is None


def test_a_node_without_the_publisher_role_may_not_sign(mesh: Mesh) -> None:
    b = mesh.nodes[1]
    before = counters(b, FAMILY).get("refused_signature", 0)
    done = run_cli(
        "wasm", "publish", str(ECHO_WAT), "--manifest", str(ECHO_TOML),
        "--data-dir", str(b.data_dir),
    )  # fmt: skip
    assert done.returncode == 1
    assert "publisher role" in done.stderr
    assert counters(b, FAMILY).get("refused_signature", 0) == before + 1


def test_bytes_that_do_not_match_their_manifest_are_refused_on_every_node(mesh: Mesh) -> None:
    a = mesh.nodes[0]
    # Bytes no node holds yet (a node holding the named bytes would use its own copy).
    module = _echo_bytes().replace(b"echo", b"echq")
    other = _echo_bytes().replace(b"echo", b"ecko")  # same size, another hash
    assert len(other) == len(module) and other != module
    manifest = ECHO_TOML.read_text().replace('"wasm.echo"', '"wasm.mismatch"')
    record = _signed(mesh.authority, "wasm.mismatch", module, a.node_id, manifest)

    # Posted with other bytes: refused at once, by each node.
    for node in mesh.nodes:
        before = counters(node, FAMILY).get("refused_hash", 0)
        status, answer = _post(node, {"record": record, "module": base64.b64encode(other).decode()})
        assert status == 403 and "SHA-256" in answer["error"], answer
        assert counters(node, FAMILY).get("refused_hash", 0) == before + 1
        assert _module(node, "wasm.mismatch") is None

    # Served by a holder whose file is not what the manifest names: every node that runs
    # it (B and C, after fetching from A) refuses it and counts it.
    import hashlib

    digest = hashlib.sha256(module).hexdigest()
    (a.data_dir / "wasm").mkdir(exist_ok=True)
    (a.data_dir / "wasm" / f"{digest}.wasm").write_bytes(other)
    before = {n.node_id: counters(n, FAMILY).get("refused_hash", 0) for n in mesh.nodes}
    status, answer = _post(a, {"record": record})
    assert status == 200, answer

    def refused_everywhere() -> bool:
        return all(
            counters(n, FAMILY).get("refused_hash", 0) == before[n.node_id] + 1
            for n in mesh.nodes[1:]
        )

    wait_for(refused_everywhere, timeout_s=60, what="the mismatching bytes refused everywhere")
    for node in mesh.nodes:
        assert not _providers(node, "wasm.mismatch")
        entry = _module(node, "wasm.mismatch")
        assert entry is not None and not entry["loaded"], entry
        if node is a:
            continue
        assert not (node.data_dir / "wasm" / f"{digest}.wasm").exists()
        wait_for(
            lambda node=node: ("wasm.mismatch", "hash") in _audited_refusals(node),  # type: ignore[misc]
            timeout_s=30,
            what="the refusal in the audit log",
        )


def test_a_holder_serving_other_bytes_is_passed_over_for_another(mesh: Mesh) -> None:
    """The manifest names A as holder, but A's file is not the module; C holds the
    module. B refuses A's bytes and takes C's."""
    import hashlib

    a, b, c = mesh.nodes
    module = _echo_bytes().replace(b"echo", b"echr")
    other = _echo_bytes().replace(b"echo", b"ecks")
    digest = hashlib.sha256(module).hexdigest()
    manifest = ECHO_TOML.read_text().replace('"wasm.echo"', '"wasm.relay"')
    record = _signed(mesh.authority, "wasm.relay", module, a.node_id, manifest)
    for node, data in ((a, other), (c, module)):
        (node.data_dir / "wasm").mkdir(exist_ok=True)
        (node.data_dir / "wasm" / f"{digest}.wasm").write_bytes(data)
    before = {n.node_id: counters(n, FAMILY) for n in mesh.nodes}
    status, answer = _post(a, {"record": record})
    assert status == 200, answer

    def loaded() -> bool:
        return all(_providers(n, "wasm.relay") == {b.node_id, c.node_id} for n in (b, c))

    wait_for(loaded, timeout_s=60, what="wasm.relay loaded on B and C")
    was, now = before[b.node_id], counters(b, FAMILY)
    assert now.get("refused_hash", 0) == was.get("refused_hash", 0) + 1, (was, now)
    assert now.get("fetched", 0) == was.get("fetched", 0) + 1, (was, now)
    assert (b.data_dir / "wasm" / f"{digest}.wasm").read_bytes() == module
    served = counters(c, FAMILY).get("chunks_served", 0)
    assert served > before[c.node_id].get("chunks_served", 0)
    assert counters(c, FAMILY).get("fetched", 0) == before[c.node_id].get("fetched", 0)


def test_publishing_needs_a_token_of_the_publish_zone(mesh: Mesh) -> None:
    """A module posted here is signed or held by the node and run by every `run = "*"`
    node: only its owner or a token of `edge.publish_zone` (restricted) may post one."""
    a = mesh.nodes[0]
    module = _echo_bytes().replace(b"echo", b"echt")
    manifest = ECHO_TOML.read_text().replace('"wasm.echo"', '"wasm.gated"')
    record = _signed(mesh.authority, "wasm.gated", module, a.node_id, manifest)
    body = {"record": record, "module": base64.b64encode(module).decode()}
    before = counters(a, FAMILY).get("published", 0)

    status, answer = _post(a, body, token="not-a-configured-token-at-all")
    assert status == 401 and "bearer token" in answer["error"], answer
    # No token: a loopback client (a local web page too) gets mcp.loopback_zone, public.
    status, answer = _post(a, body, token=None)
    assert status == 403 and "edge.publish_zone" in answer["error"], answer
    status, answer = _post(a, body, token=PUBLIC_TOKEN)
    assert status == 403 and "'public'" in answer["error"], answer
    unpublish = urllib.request.Request(
        a.url + "/api/wasm/modules/wasm.echo",
        headers={"Authorization": f"Bearer {PUBLIC_TOKEN}"},
        method="DELETE",
    )
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(unpublish, timeout=30)
    assert denied.value.code == 403
    assert counters(a, FAMILY).get("published", 0) == before
    assert _module(a, "wasm.gated") is None

    status, answer = _post(a, body, token=RESTRICTED_TOKEN)
    assert status == 200 and answer["name"] == "wasm.gated", answer
    assert counters(a, FAMILY).get("published", 0) == before + 1


def test_the_cli_with_url_needs_a_token_of_the_publish_zone(mesh: Mesh, tmp_path: Path) -> None:
    a = mesh.nodes[0]
    manifest = tmp_path / "cli.toml"
    manifest.write_text(ECHO_TOML.read_text().replace('"wasm.echo"', '"wasm.cli"'))
    publish = (
        "wasm", "publish", str(ECHO_WAT), "--manifest", str(manifest),
        "--authority-key", str(mesh.authority), "--url", a.url,
    )  # fmt: skip
    for token in ([], ["--token", PUBLIC_TOKEN]):
        refused = run_cli(*publish, *token)
        assert refused.returncode == 1, refused.stdout
        assert "403" in refused.stderr and "edge.publish_zone" in refused.stderr, refused.stderr
        assert _module(a, "wasm.cli") is None
    done = run_cli(*publish, "--token", RESTRICTED_TOKEN)
    assert done.returncode == 0, done.stderr
    assert "wasm.cli: published" in done.stdout


def test_an_oversized_content_length_is_refused_before_the_body_is_read(mesh: Mesh) -> None:
    """413 on the declared length alone: the node answers though the body never comes."""
    a = mesh.nodes[0]
    host, port = a.url.removeprefix("http://").rsplit(":", 1)
    declared = 8 << 20  # edge.max_module_bytes by default: its base64 is larger still
    head = (
        f"POST /api/wasm/modules HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {_owner_token(a)}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared * 2}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(head.encode())
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"413", answer[:500]
    assert b"body over" in rest, answer[:500]


def test_a_holder_giving_a_short_chunk_is_passed_over_for_another(mesh: Mesh) -> None:
    """A's file is cut short (it gives fewer bytes than asked); C holds the module.
    B counts the short chunk and takes C's bytes at once."""
    import hashlib

    a, b, c = mesh.nodes
    module = _echo_bytes().replace(b"echo", b"echs")
    digest = hashlib.sha256(module).hexdigest()
    manifest = ECHO_TOML.read_text().replace('"wasm.echo"', '"wasm.short"')
    record = _signed(mesh.authority, "wasm.short", module, a.node_id, manifest)
    for node, data in ((a, module[: len(module) // 2]), (c, module)):
        (node.data_dir / "wasm").mkdir(exist_ok=True)
        (node.data_dir / "wasm" / f"{digest}.wasm").write_bytes(data)
    before = counters(b, FAMILY)
    status, answer = _post(a, {"record": record})
    assert status == 200, answer

    def loaded() -> bool:
        return all(_providers(n, "wasm.short") == {b.node_id, c.node_id} for n in (b, c))

    wait_for(loaded, timeout_s=60, what="wasm.short loaded on B and C")
    now = counters(b, FAMILY)
    assert now.get("short_chunk", 0) == before.get("short_chunk", 0) + 1, (before, now)
    assert now.get("refused_hash", 0) == before.get("refused_hash", 0), (before, now)
    assert (b.data_dir / "wasm" / f"{digest}.wasm").read_bytes() == module


def test_a_published_module_is_audited_by_the_probe_in_its_manifest(
    mesh: Mesh, tmp_path: Path
) -> None:
    """System 3* on the nodes that run a published module audits it by its manifest's
    `[probe]`: the unit is audited, not listed as unaudited (an unpublished plain module
    would be)."""
    a, b, c = mesh.nodes
    manifest = tmp_path / "probed.toml"
    manifest.write_text(
        ECHO_TOML.read_text().replace('"wasm.echo"', '"wasm.probed"')
        + '\n[probe]\narguments = { text = "probe" }\nexpect = { required = ["echo"] }\n'
    )
    published = run_cli(
        "wasm", "publish", str(ECHO_WAT), "--manifest", str(manifest),
        "--authority-key", str(mesh.authority), "--data-dir", str(a.data_dir),
    )  # fmt: skip
    assert published.returncode == 0, published.stderr

    def probed_on_runners() -> bool:
        for node in (b, c):
            audits = node.get_json("/api/vsm")["s3"]["audits"]
            assert "wasm:wasm.probed" not in audits["unaudited"], audits
            # Listed as audited before any probe ran: wait for a probe's result.
            last = audits["audited"].get("wasm.probed")
            if last is None:
                return False
            assert last["ok"], last
        return True

    wait_for(probed_on_runners, timeout_s=90, what="a probe of wasm.probed passed on B and C")
    # A holds it without running it: nothing there to audit.
    assert "wasm.probed" not in a.get_json("/api/vsm")["s3"]["audits"]["audited"]
    gone = run_cli(
        "wasm", "unpublish", "wasm.probed", "--authority-key", str(mesh.authority), "--url", b.url
    )
    assert gone.returncode == 0, gone.stderr
    wait_for(
        lambda: all(
            "wasm.probed" not in n.get_json("/api/vsm")["s3"]["audits"]["audited"] for n in (b, c)
        ),
        timeout_s=60,
        what="wasm.probed no longer audited once unpublished",
    )
