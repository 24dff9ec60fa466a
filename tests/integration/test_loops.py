"""Supervised background loops on real `vsmcpd` processes: a loop that fails is restarted
and keeps doing its job; one that keeps failing fails `/healthz` naming it and starves the
systemd watchdog.

The fault is injected at one seam, `POST /api/debug/loop-fault?name=LOOP` (only with
`node.debug_api`): the loop's task is cancelled at whatever await it is in, and its
supervisor takes that as the loop having raised there. Nothing the anti-entropy loop reads
can be broken from outside without breaking the mesh itself, hence the seam.
"""

from __future__ import annotations

import re
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.harness import NodeProcess, wait_mesh_states
from tests.polling import wait_for
from vsmcp.mesh.loops import MAX_RESTARTS

pytestmark = pytest.mark.integration

CONVERGE_TIMEOUT_S = 30.0
WATCHDOG_USEC = "200000"  # a ping every 0.1 s


def _config(tmp_path: Path) -> str:
    path = tmp_path / "loops.toml"
    path.write_text('[node]\ndebug_api = true\n[mesh]\npreset = "local"\n')
    return str(path)


def _restarts(node: NodeProcess, loop: str) -> float:
    """The loop's restart count; every loop started is reported, at 0 before any
    restart, so a missing one is a failure (not a count that a later one exceeds)."""
    _, body, _ = node.get("/metrics")
    pattern = rf'^vsmcp_loop_restarts_total\{{loop="{re.escape(loop)}"\}} ([0-9.e+]+)$'
    match = re.search(pattern, body.decode(), re.MULTILINE)
    assert match is not None, f"no restart count for loop {loop} in /metrics"
    return float(match.group(1))


def _fault(node: NodeProcess, loop: str, tick: Callable[[], object] = list) -> None:
    """Fault `loop` once and wait for its restart to be counted (`tick` runs each poll)."""
    before = _restarts(node, loop)
    assert node.post(f"/api/debug/loop-fault?name={loop}") == 200
    wait_for(lambda: (tick(), _restarts(node, loop) > before)[1], what=f"{loop} restart counted")


def _fail_for_good(node: NodeProcess, loop: str, tick: Callable[[], object] = list) -> None:
    """Fault `loop` until its supervisor gives up on it."""
    for _ in range(MAX_RESTARTS - int(_restarts(node, loop))):
        _fault(node, loop, tick)
    assert node.post(f"/api/debug/loop-fault?name={loop}") == 200
    wait_for(lambda: (tick(), node.get("/healthz")[0] == 503)[1], what=f"{loop} given up")


def _unblock(node: NodeProcess, peer: NodeProcess) -> None:
    path = f"/api/debug/block?peer={peer.node_id}"
    request = urllib.request.Request(node.url + path, method="DELETE")
    with urllib.request.urlopen(request, timeout=5) as r:
        assert r.status == 200


def _offers(node: NodeProcess, name: str, provider: NodeProcess) -> bool:
    tools = node.get_json("/api/tools")["tools"]
    return any(t["name"] == name and t["provider"] == provider.node_id for t in tools)


def test_a_restarted_anti_entropy_loop_still_heals_a_cut_link(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    config = _config(tmp_path)
    a = NodeProcess(tmp_path / "a", "--config", config, "--no-mdns")
    nodes.append(a)
    a.start()
    b = NodeProcess(
        tmp_path / "b",
        "--config",
        config,
        "--no-mdns",
        "--seed",
        f"{a.node_id}@127.0.0.1:{a.mesh_port}",
    )
    nodes.append(b)
    b.start()
    wait_mesh_states([a, b], {a.node_id: "alive", b.node_id: "alive"})

    assert _restarts(a, "replication-anti-entropy") == 0
    _fault(a, "replication-anti-entropy")
    assert _restarts(a, "replication-anti-entropy") == 1
    assert a.get_json("/healthz") == {"status": "ok", "_http_status": 200}
    assert "loop replication-anti-entropy failed; restarting" in a.log_text()

    # b's own anti-entropy gone for good: from now on only a's restarted loop can pull.
    _fail_for_good(b, "replication-anti-entropy")
    health = b.get_json("/healthz")
    assert health["status"] == "unhealthy"
    assert any("loop replication-anti-entropy stopped" in p for p in health["problems"])

    # A tool added at b while the link is cut: b's push reaches nobody, so once the link
    # is back, a learns of it only through its anti-entropy.
    for here, there in ((a, b), (b, a)):
        assert here.post(f"/api/debug/block?peer={there.node_id}") == 200
    assert b.post("/api/debug/tools?name=late.echo&zone=public") == 200
    wait_for(lambda: _offers(b, "late.echo", b), what="late.echo announced at b")
    assert not _offers(a, "late.echo", b)
    for here, there in ((a, b), (b, a)):
        _unblock(here, there)
    wait_for(
        lambda: _offers(a, "late.echo", b),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="a pulled b's new tool through its restarted anti-entropy loop",
    )


class _NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.received: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.received.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.received

    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path), "WATCHDOG_USEC": WATCHDOG_USEC}


def test_a_loop_that_keeps_failing_fails_health_and_starves_the_watchdog(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    config = _config(tmp_path)
    failing_sock = _NotifySocket(tmp_path / "failing.sock")
    witness_sock = _NotifySocket(tmp_path / "witness.sock")
    try:
        failing = NodeProcess(
            tmp_path / "f", "--config", config, "--no-mdns", env=failing_sock.env()
        )
        # The witness runs without the debug API: no faults to be injected there.
        witness = NodeProcess(tmp_path / "w", "--no-mdns", env=witness_sock.env())
        nodes += [failing, witness]
        failing.start()
        witness.start()
        wait_for(lambda: failing_sock.drain().count("WATCHDOG=1") >= 2, what="failing pings")

        # Both sockets drained while we wait: a full queue would drop notifications.
        _fail_for_good(
            failing, "mesh-membership", lambda: (failing_sock.drain(), witness_sock.drain())
        )
        health = failing.get_json("/healthz")
        assert health["_http_status"] == 503
        assert any("loop mesh-membership stopped" in p for p in health["problems"])
        assert _restarts(failing, "mesh-membership") == MAX_RESTARTS
        status = wait_for(
            lambda: next((m for m in failing_sock.drain() if m.startswith("STATUS=")), None),
            what="the unhealthy status sent to systemd",
        )
        assert "mesh-membership" in status

        # Time passes by the witness's pings (same interval): three of them after the
        # status and the failing node would have pinged at least twice more if still fed.
        seen = len(witness_sock.drain())
        wait_for(lambda: witness_sock.drain()[seen:].count("WATCHDOG=1") >= 3, what="witness")
        after_status = failing_sock.drain()[failing_sock.received.index(status) + 1 :]
        assert "WATCHDOG=1" not in after_status
        assert witness.post("/api/debug/loop-fault?name=mesh-membership") == 403
        assert witness.get_json("/healthz")["status"] == "ok"
    finally:
        failing_sock.sock.close()
        witness_sock.sock.close()
