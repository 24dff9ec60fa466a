"""Real `vsmcpd` processes on loopback: discovery, admission, dead and zombie detection."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from tests.integration.harness import NodeProcess, counters, run_cli, wait_mesh_states
from tests.polling import wait_for

pytestmark = pytest.mark.integration

# Loopback timing (probe every 250 ms): a verdict needs suspicion plus a quorum round.
DETECT_TIMEOUT_S = 30.0
# Relays asked to probe a cut-off peer (2 per failed direct probe here): 30 is about 15
# failed direct probes each way, many times what a verdict would need.
CUT_INDIRECT_PROBES = 30


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "mesh.toml"
    path.write_text(f'[mesh]\npreset = "local"\n{extra}')
    return path


def _start(tmp_path: Path, nodes: list[NodeProcess], count: int, *args: str) -> list[NodeProcess]:
    started = []
    for _ in range(count):
        node = NodeProcess(tmp_path / f"n{len(nodes)}", *args)
        nodes.append(node)
        started.append(node.start(wait=False))
    for node in started:
        node.wait_ready()
    return started


def _indirect_probes(node: NodeProcess) -> int:
    return counters(node, "vsmcp_membership_events").get("indirect_probes", 0)


def _mdns_state(node: NodeProcess) -> str:
    """The state whose `vsmcp_mdns_state` gauge is 1 (registration runs after healthy)."""
    text = node.get("/metrics")[1].decode()
    states = re.findall(r'^vsmcp_mdns_state\{state="(\w+)"\} 1\.0$', text, re.MULTILINE)
    assert len(states) == 1, states
    return states[0]


def _all_alive(group: list[NodeProcess]) -> dict[str, str]:
    return {n.node_id: "alive" for n in group}


def test_five_nodes_find_each_other_by_mdns_then_dead_zombie_and_recovery(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    config = _config(tmp_path)
    group = _start(tmp_path, nodes, 5, "--config", str(config))
    wait_mesh_states(group, _all_alive(group))
    for node in group:
        wait_for(
            lambda node=node: _mdns_state(node) == "registered",
            timeout_s=30,
            what=f"{node.node_id} registering its mDNS service",
        )
    # Gossip can make a member alive here before its HELLO has been admitted: wait for both.
    for node in group:
        wait_for(
            lambda node=node: all(p["admitted"] for p in node.get_json("/api/peers")["peers"]),
            timeout_s=30,
            what=f"{node.node_id} admitting every peer",
        )

    victim, sleeper, *survivors = group
    victim.kill()
    sleeper.signal(signal.SIGSTOP)
    try:
        wait_mesh_states(
            survivors,
            {victim.node_id: "dead", sleeper.node_id: "zombie"},
            timeout_s=DETECT_TIMEOUT_S,
        )
    finally:
        sleeper.signal(signal.SIGCONT)
    # Resumed: it refutes the verdict with a higher incarnation and is alive everywhere.
    wait_mesh_states(survivors, {sleeper.node_id: "alive"}, timeout_s=DETECT_TIMEOUT_S)
    wait_mesh_states([sleeper], {victim.node_id: "dead"}, timeout_s=DETECT_TIMEOUT_S)
    metrics = survivors[0].get("/metrics")[1].decode()
    assert 'vsmcp_mesh_members{state="dead"} 1.0' in metrics


def test_five_nodes_find_each_other_through_one_seed_without_mdns(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    config = _config(tmp_path)
    (first,) = _start(tmp_path, nodes, 1, "--config", str(config), "--no-mdns")
    # A plain HOST:PORT seed: its identity is learnt by a signed UDP whois, then HELLO.
    plain = f"127.0.0.1:{first.mesh_port}"
    with_id = f"{first.node_id}@{plain}"
    others = [
        *_start(tmp_path, nodes, 3, "--config", str(config), "--no-mdns", "--seed", plain),
        *_start(tmp_path, nodes, 1, "--config", str(config), "--no-mdns", "--seed", with_id),
    ]
    group = [first, *others]
    # Each of the others knows only the seed: the rest it learns by gossip.
    wait_mesh_states(group, _all_alive(group))
    assert {_mdns_state(node) for node in group} == {"off"}


def test_a_dead_node_is_forgotten_after_the_reap_time_and_rejoins_when_restarted(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    config = _config(tmp_path, "dead_reap_after_s = 2\n")
    group = _start(tmp_path, nodes, 4, "--config", str(config))
    wait_mesh_states(group, _all_alive(group))
    victim, *survivors = group
    victim.kill()
    victim.wait_exit()
    wait_mesh_states(survivors, {victim.node_id: "dead"}, timeout_s=DETECT_TIMEOUT_S)

    def forgotten() -> bool:
        views = [n.peer_states() for n in survivors]
        return all(view and victim.node_id not in view for view in views)

    wait_for(forgotten, timeout_s=DETECT_TIMEOUT_S, what="the dead node reaped everywhere")
    metrics = survivors[0].get("/metrics")[1].decode()
    assert 'vsmcp_mesh_members{state="dead"} 0.0' in metrics
    # Restarted from its data dir (same identity, incarnation 0): it is told its verdict
    # by whoever it reaches, refutes it, and is alive everywhere again.
    again = NodeProcess(victim.data_dir, "--config", str(config))
    nodes.append(again)
    again.start()
    assert again.node_id == victim.node_id
    wait_mesh_states([*survivors, again], _all_alive(group), timeout_s=DETECT_TIMEOUT_S)


def test_a_partition_healed_after_the_reap_time_merges_again(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # No mDNS, and nobody has the cut-off node as a seed: after the reap, only the
    # endpoint remembered for reaped members lets the others answer it.
    config = _config(tmp_path, "dead_reap_after_s = 2\n")
    config.write_text("[node]\ndebug_api = true\n" + config.read_text())
    args = ("--config", str(config), "--no-mdns")
    (seed,) = _start(tmp_path, nodes, 1, *args)
    others = _start(
        tmp_path, nodes, 3, *args, "--seed", f"{seed.node_id}@127.0.0.1:{seed.mesh_port}"
    )
    group = [seed, *others]
    wait_mesh_states(group, _all_alive(group))
    *majority, cut_off = group

    def cut(method: str) -> None:
        for node in majority:
            assert node.post(f"/api/debug/block?peer={cut_off.node_id}", method=method) == 200
            assert cut_off.post(f"/api/debug/block?peer={node.node_id}", method=method) == 200

    cut("POST")
    wait_mesh_states(majority, {cut_off.node_id: "dead"}, timeout_s=DETECT_TIMEOUT_S)
    wait_for(
        lambda: all(n.peer_states() and cut_off.node_id not in n.peer_states() for n in majority),
        timeout_s=DETECT_TIMEOUT_S,
        what="the cut-off node reaped by the majority",
    )
    # The cut-off node could not gather a quorum against anyone.
    assert set(cut_off.peer_states().values()) <= {"alive", "suspect"}
    cut("DELETE")
    wait_mesh_states(group, _all_alive(group), timeout_s=DETECT_TIMEOUT_S)


def test_a_cut_link_between_two_peers_evicts_nobody(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    config = _config(tmp_path)
    config.write_text("[node]\ndebug_api = true\n" + config.read_text())
    group = _start(tmp_path, nodes, 4, "--config", str(config))
    wait_mesh_states(group, _all_alive(group))
    a, b, *_ = group
    assert a.post(f"/api/debug/block?peer={b.node_id}") == 200
    assert b.post(f"/api/debug/block?peer={a.node_id}") == 200
    # Watch until a and b have each had to reach the other through relays many times
    # (counted, not timed): the others still reach both, so no quorum forms and nobody
    # is declared dead or zombie.
    ours = {n.node_id for n in group}
    start = {n.node_id: _indirect_probes(n) for n in (a, b)}

    def watched_long_enough() -> bool:
        for observer in group:
            states = observer.peer_states()
            assert set(states) <= ours, f"foreign members: {set(states) - ours}"
            bad = {k[-6:]: v for k, v in states.items() if v in ("dead", "zombie")}
            assert not bad, f"{observer.node_id[-6:]} declared {bad}"
        return all(_indirect_probes(n) - start[n.node_id] >= CUT_INDIRECT_PROBES for n in (a, b))

    wait_for(watched_long_enough, timeout_s=DETECT_TIMEOUT_S * 2, what="indirect probes counted")
    assert a.post(f"/api/debug/block?peer={b.node_id}") == 200  # still allowed


def test_debug_api_is_off_by_default(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    (node,) = _start(tmp_path, nodes, 1, "--no-mdns")
    assert node.post("/api/debug/block?peer=x") == 403


def test_uncertified_node_is_refused_and_counted(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    authority = tmp_path / "authority.key"
    out = run_cli("keys", "init-authority", "--out", str(authority))
    match = re.search(r"authority public key: ([0-9a-f]{64})", out.stdout)
    assert match, out.stdout + out.stderr
    certified: list[NodeProcess] = []
    for name in ("c1", "c2"):
        data = tmp_path / name
        node_id = run_cli("keys", "node", "--data-dir", str(data), "--json").stdout
        node_id = node_id.split('"node_id": "')[1].split('"')[0]
        cert = data / "node.cert"
        issued = run_cli(
            "keys",
            "issue",
            "--authority-key",
            str(authority),
            "--node",
            node_id,
            "--zone",
            "ops",
            "--out",
            str(cert),
        )
        assert issued.returncode == 0, issued.stderr
        config = tmp_path / f"{name}.toml"
        config.write_text(
            f'[trust]\nauthority_public_key = "{match.group(1)}"\n[mesh]\npreset = "local"\n'
        )
        node = NodeProcess(data, "--config", str(config), dev=False)
        nodes.append(node)
        certified.append(node.start())
    wait_mesh_states(certified, _all_alive(certified))

    # A dev node certifies itself: the certified nodes must refuse it.
    intruder = NodeProcess(tmp_path / "intruder", "--config", str(_config(tmp_path)), dev=True)
    nodes.append(intruder)
    intruder.start()

    def refused_everywhere() -> bool:
        for node in certified:
            text = node.get("/metrics")[1].decode()
            m = re.search(r'vsmcp_mesh_refused_total\{reason="foreign_authority"\} (\d+)', text)
            if not m or int(m.group(1)) < 1:
                return False
        return True

    wait_for(refused_everywhere, timeout_s=20, what="certified nodes refusing the intruder")
    for node in certified:
        assert intruder.node_id not in node.peer_states()


def test_meshes_with_different_names_stay_apart(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    config = _config(tmp_path)
    ours = _start(tmp_path, nodes, 2, "--config", str(config))
    wait_mesh_states(ours, _all_alive(ours))
    stranger = NodeProcess(
        tmp_path / "stranger", "--config", str(config), env={"VSMCP_MESH_NAME": "another-mesh"}
    )
    nodes.append(stranger)
    stranger.start()

    def refused_by_both() -> bool:
        for node in ours:
            text = node.get("/metrics")[1].decode()
            if not re.search(r'vsmcp_mesh_refused_total\{reason="other_mesh"\} [1-9]', text):
                return False
        return True

    # mDNS brings them together; admission keeps them apart.
    wait_for(refused_by_both, timeout_s=20, what="both nodes refusing the other mesh")
    for node in ours:
        assert stranger.node_id not in node.peer_states()
    assert stranger.peer_states() == {}
