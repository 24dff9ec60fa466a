"""Replicated registry on real `vsmcpd` processes: announce, retire, partition and heal,
restore from the signed snapshot, refuse a tampered one.

Every group finds itself through one seed with mDNS off, so nodes of other test runs
on the same host never join it (and never add their tools to our registries).
"""

from __future__ import annotations

import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from tests.integration.harness import NodeProcess, counters, wait_mesh_states
from tests.polling import wait_for

pytestmark = pytest.mark.integration

# Pushes arrive in milliseconds; the deadline covers loaded CI machines and, after a heal,
# membership re-admitting peers plus an anti-entropy round.
CONVERGE_TIMEOUT_S = 30.0
# Anti-entropy rounds every node runs while a partition is watched, so that a leak
# through anti-entropy would show.
PARTITION_ROUNDS = 2

Entry = tuple[str, str, int]  # (name, provider, version)


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "replication.toml"
    path.write_text(f'[node]\ndebug_api = true\n[mesh]\npreset = "local"\n{extra}')
    return path


def _start_group(
    tmp_path: Path, nodes: list[NodeProcess], count: int, extra_config: str = ""
) -> list[NodeProcess]:
    """`count` nodes that know only the first one (seed); all alive everywhere."""
    config = str(_config(tmp_path, extra_config))
    first = NodeProcess(tmp_path / "n0", "--config", config, "--no-mdns")
    nodes.append(first)
    first.start()
    seed = f"{first.node_id}@127.0.0.1:{first.mesh_port}"
    others = []
    for i in range(1, count):
        node = NodeProcess(tmp_path / f"n{i}", "--config", config, "--no-mdns", "--seed", seed)
        nodes.append(node)
        others.append(node.start(wait=False))
    for node in others:
        node.wait_ready()
    group = [first, *others]
    wait_mesh_states(group, {n.node_id: "alive" for n in group})
    return group


def _restart(node: NodeProcess, nodes: list[NodeProcess], *args: str) -> NodeProcess:
    again = NodeProcess(node.data_dir, *args)
    nodes.append(again)
    return again.start()


def _tools(node: NodeProcess) -> list[dict[str, object]]:
    tools: list[dict[str, object]] = node.get_json("/api/tools")["tools"]
    return tools


def _entries(node: NodeProcess) -> set[Entry]:
    return {(str(t["name"]), str(t["provider"]), int(str(t["version"]))) for t in _tools(node)}


def _offers(node: NodeProcess, name: str, provider: NodeProcess) -> bool:
    return any(e[0] == name and e[1] == provider.node_id for e in _entries(node))


def _anti_entropy_rounds(node: NodeProcess) -> int:
    return counters(node, "vsmcp_replication_events").get("anti_entropy_rounds", 0)


def _wait_all(
    group: Iterable[NodeProcess], probe: Callable[[NodeProcess], bool], what: str
) -> None:
    members = list(group)
    wait_for(
        lambda: all(probe(n) for n in members),
        timeout_s=CONVERGE_TIMEOUT_S,
        what=what,
    )


def _converged(group: list[NodeProcess]) -> set[Entry] | None:
    """The registry every node of `group` holds, or None while they differ."""
    views = [_entries(n) for n in group]
    return views[0] if all(v == views[0] for v in views) else None


def _cut(side_a: list[NodeProcess], side_b: list[NodeProcess], *, cut: bool) -> None:
    for a in side_a:
        for b in side_b:
            for here, there in ((a, b), (b, a)):
                path = f"/api/debug/block?peer={there.node_id}"
                status = here.post(path) if cut else _delete(here, path)
                assert status == 200, f"{'block' if cut else 'unblock'} {path}: {status}"


def _delete(node: NodeProcess, path: str) -> int:
    request = urllib.request.Request(node.url + path, method="DELETE")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_tool_announced_on_one_node_reaches_all_and_its_removal_retires_it_everywhere(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    group = _start_group(tmp_path, nodes, 5)
    provider = group[2]
    assert provider.post("/api/debug/tools?name=shown-echo&zone=public") == 200

    _wait_all(group, lambda n: _offers(n, "shown-echo", provider), "shown-echo everywhere")
    for node in group:
        (entry,) = [t for t in _tools(node) if t["name"] == "shown-echo"]
        assert entry["provider"] == provider.node_id
        assert entry["zone"] == "public"
        assert entry["provider_state"] == ("self" if node is provider else "alive")
        first_version = int(str(entry["version"]))
    # Every node holds the same registry, not only the new tool.
    assert wait_for(lambda: _converged(group), timeout_s=CONVERGE_TIMEOUT_S, what="same registry")

    assert _delete(provider, "/api/debug/tools?name=shown-echo") == 200
    _wait_all(
        group,
        lambda n: not any(t["name"] == "shown-echo" for t in _tools(n)),
        "shown-echo retired everywhere",
    )
    # Retiring one tool leaves the provider's other tools in place.
    for node in group:
        assert any(e[1] == provider.node_id for e in _entries(node)), node.node_id

    # Added again at once: the new announcement must outrank the tombstone everywhere.
    assert provider.post("/api/debug/tools?name=shown-echo&zone=public") == 200
    _wait_all(group, lambda n: _offers(n, "shown-echo", provider), "shown-echo back everywhere")
    for node in group:
        (again,) = [v for name, _, v in _entries(node) if name == "shown-echo"]
        assert again > first_version, (node.node_id, again, first_version)


def test_partition_keeps_each_side_to_itself_then_heals_to_one_registry(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    group = _start_group(tmp_path, nodes, 5)
    left, right = group[:2], group[2:]
    assert left[0].post("/api/debug/tools?name=doomed-echo&zone=public") == 200
    _wait_all(group, lambda n: _offers(n, "doomed-echo", left[0]), "doomed-echo everywhere")
    _cut(left, right, cut=True)
    # Retired while cut off: only the left side learns of it until the heal.
    assert _delete(left[0], "/api/debug/tools?name=doomed-echo") == 200
    _wait_all(left, lambda n: not _offers(n, "doomed-echo", left[0]), "doomed-echo retired left")

    assert left[0].post("/api/debug/tools?name=left-echo&zone=public") == 200
    assert right[-1].post("/api/debug/tools?name=right-echo&zone=public") == 200
    _wait_all(left, lambda n: _offers(n, "left-echo", left[0]), "left-echo on the left side")
    _wait_all(right, lambda n: _offers(n, "right-echo", right[-1]), "right-echo on the right")

    # Neither tool crosses the cut: not by push, not by anti-entropy, not by relay.
    # Watched until every node has run PARTITION_ROUNDS anti-entropy rounds (counted).
    start = {n.node_id: _anti_entropy_rounds(n) for n in group}

    def watched_long_enough() -> bool:
        for node in left:
            assert not any(t["name"] == "right-echo" for t in _tools(node)), node.node_id
        for node in right:
            assert not any(t["name"] == "left-echo" for t in _tools(node)), node.node_id
            assert _offers(node, "doomed-echo", left[0]), node.node_id
        return all(_anti_entropy_rounds(n) - start[n.node_id] >= PARTITION_ROUNDS for n in group)

    wait_for(watched_long_enough, timeout_s=CONVERGE_TIMEOUT_S, what="anti-entropy rounds")

    _cut(left, right, cut=False)
    registry = wait_for(
        lambda: _converged(group), timeout_s=CONVERGE_TIMEOUT_S * 2, what="one registry"
    )
    names = {(name, provider) for name, provider, _ in registry}
    assert ("left-echo", left[0].node_id) in names
    assert ("right-echo", right[-1].node_id) in names
    assert not any(name == "doomed-echo" for name, _ in names), "the tombstone lost the merge"
    # Every node's own tools survive the merge.
    assert {provider for _, provider, _ in registry} == {n.node_id for n in group}


def test_restarted_node_knows_the_registry_from_its_snapshot_before_any_peer(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    group = _start_group(tmp_path, nodes, 3)
    restarted, *others = group
    for i, node in enumerate(others):
        assert node.post(f"/api/debug/tools?name=kept-echo-{i}&zone=public") == 200
    _wait_all(
        group,
        lambda n: all(_offers(n, f"kept-echo-{i}", o) for i, o in enumerate(others)),
        "kept-echo-* everywhere",
    )
    before = wait_for(lambda: _converged(group), timeout_s=CONVERGE_TIMEOUT_S, what="registry")
    of_others = {e for e in before if e[1] != restarted.node_id}

    restarted.terminate()
    assert restarted.wait_exit() == 0
    # No mDNS, no seeds and a new mesh port: nobody can reach it and it reaches nobody.
    again = _restart(restarted, nodes, "--config", str(_config(tmp_path)), "--no-mdns")
    assert again.node_id == restarted.node_id
    assert again.mesh_port != restarted.mesh_port
    entries = _entries(again)
    peers = again.get_json("/api/peers")["peers"]
    assert not any(p["admitted"] for p in peers), peers
    assert of_others <= entries, sorted(of_others - entries)
    assert "restored registry snapshot" in again.log_text()
    # Its own tools were retired at stop and announced afresh at start.
    assert any(e[1] == again.node_id for e in entries)


def _tamper(db: Path, old: bytes, new: bytes) -> None:
    """Rewrite the stored registry snapshot with `old` replaced by `new` (same length)."""
    assert len(old) == len(new)
    with sqlite3.connect(db) as conn:
        (snapshot,) = conn.execute("SELECT value FROM kv WHERE key = 'crdt_snapshot'").fetchone()
        assert old in snapshot, "the snapshot does not hold the tool to forge"
        forged = snapshot.replace(old, new)
        conn.execute("UPDATE kv SET value = ? WHERE key = 'crdt_snapshot'", (forged,))


def test_tampered_snapshot_is_refused_and_the_registry_comes_back_from_peers(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    group = _start_group(tmp_path, nodes, 3)
    victim, seed, other = group
    assert other.post("/api/debug/tools?name=true-echo&zone=public") == 200
    _wait_all(group, lambda n: _offers(n, "true-echo", other), "true-echo everywhere")

    victim.terminate()
    assert victim.wait_exit() == 0
    # A forged tool name under the same provider: only a snapshot check can catch it here.
    _tamper(victim.data_dir / "vsmcp.db", b"true-echo", b"evil-echo")

    again = _restart(
        victim,
        nodes,
        "--config",
        str(_config(tmp_path)),
        "--no-mdns",
        "--seed",
        f"{seed.node_id}@127.0.0.1:{seed.mesh_port}",
    )
    assert "stored registry snapshot unusable" in again.log_text()
    assert "restored registry snapshot" not in again.log_text()
    survivors = [seed, other]
    wait_mesh_states([again, *survivors], {n.node_id: "alive" for n in [again, *survivors]})
    _wait_all([again], lambda n: _offers(n, "true-echo", other), "true-echo back from peers")
    registry = wait_for(
        lambda: _converged([again, *survivors]), timeout_s=CONVERGE_TIMEOUT_S, what="registry"
    )
    assert not any(name == "evil-echo" for name, _, _ in registry)
    assert {provider for _, provider, _ in registry} == {n.node_id for n in group}


def test_graceful_stop_retires_a_nodes_tools_everywhere_and_a_killed_node_shows_dead(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    group = _start_group(tmp_path, nodes, 4)
    leaver, crashed, *stayers = group
    for node in (leaver, crashed):
        assert node.post("/api/debug/tools?name=owned-echo&zone=public") == 200
    _wait_all(
        group,
        lambda n: _offers(n, "owned-echo", leaver) and _offers(n, "owned-echo", crashed),
        "owned-echo of both everywhere",
    )

    leaver.terminate()
    crashed.kill()
    assert leaver.wait_exit() == 0
    # SIGTERM: signed tombstones go out before the node leaves; nobody waits for expiry.
    _wait_all(
        stayers,
        lambda n: not any(e[1] == leaver.node_id for e in _entries(n)),
        "the stopped node's tools retired everywhere",
    )
    # SIGKILL: nothing was retired; liveness comes from membership at read time.
    wait_mesh_states(stayers, {crashed.node_id: "dead"}, timeout_s=CONVERGE_TIMEOUT_S)
    for node in stayers:
        states = {t["provider_state"] for t in _tools(node) if t["provider"] == crashed.node_id}
        assert states == {"dead"}, (node.node_id, states)


# After a crash the replay guard is lost, so a node refuses every envelope stamped before
# restart + envelope.max_future_skew_s (node.app; default 5 s): defaults, no shortcut.
def test_node_restarted_after_a_crash_replicates_both_ways(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    group = _start_group(tmp_path, nodes, 3)
    crashed, seed, other = group
    assert crashed.post("/api/debug/tools?name=lost-echo&zone=public") == 200
    _wait_all(group, lambda n: _offers(n, "lost-echo", crashed), "lost-echo everywhere")

    crashed.kill()
    crashed.wait_exit()
    assert other.post("/api/debug/tools?name=while-down-echo&zone=public") == 200
    _wait_all([seed, other], lambda n: _offers(n, "while-down-echo", other), "while-down-echo")
    again = _restart(
        crashed,
        nodes,
        "--config",
        str(_config(tmp_path)),
        "--no-mdns",
        "--seed",
        f"{seed.node_id}@127.0.0.1:{seed.mesh_port}",
    )
    assert "did not stop cleanly" in again.log_text()
    # It pulls what it missed, and its own tools after the crash reach the others.
    _wait_all([again], lambda n: _offers(n, "while-down-echo", other), "pulled after crash")
    assert again.post("/api/debug/tools?name=after-crash-echo&zone=public") == 200
    _wait_all([seed, other], lambda n: _offers(n, "after-crash-echo", again), "pushed after crash")
    survivors = [again, seed, other]
    registry = wait_for(
        lambda: _converged(survivors), timeout_s=CONVERGE_TIMEOUT_S, what="one registry"
    )
    assert {p for _, p, _ in registry} == {n.node_id for n in survivors}


# A registry whose full state does not fit in one envelope: 80 tools of ~300 B against a
# 16 KiB envelope cap (the default 1 MiB cap is reached the same way at ~3,400 tools).
SMALL_ENVELOPE = "[envelope]\nmax_bytes = 16384\n"
MANY_TOOLS = 80


def test_joining_node_gets_a_registry_larger_than_one_envelope(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    config = str(_config(tmp_path, SMALL_ENVELOPE))
    big = NodeProcess(tmp_path / "big", "--config", config, "--no-mdns")
    nodes.append(big)
    big.start()
    for i in range(MANY_TOOLS):
        assert big.post(f"/api/debug/tools?name=many-echo-{i:03d}&zone=public") == 200
    wait_for(lambda: len(_entries(big)) > MANY_TOOLS, what="all tools in the registry")

    seed = f"{big.node_id}@127.0.0.1:{big.mesh_port}"
    joiner = NodeProcess(tmp_path / "joiner", "--config", config, "--no-mdns", "--seed", seed)
    nodes.append(joiner)
    joiner.start()

    def joined() -> bool:
        for node in (big, joiner):
            assert "mesh task mesh-inbound failed" not in node.log_text(), node.node_id
        return _entries(big) <= _entries(joiner)

    wait_for(joined, timeout_s=CONVERGE_TIMEOUT_S, what="the joiner holds the big registry")
    wait_mesh_states([big, joiner], {big.node_id: "alive", joiner.node_id: "alive"})
