"""Under systemd (`Type=notify`, `WatchdogSec=`): READY, watchdog pings, STOPPING."""

from __future__ import annotations

import configparser
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import REPO_ROOT, NodeProcess
from tests.polling import wait_for
from vsmcp.mesh.transport import MAX_CANDIDATE_LINKS, MAX_PEERS
from vsmcp.node.app.descriptors import MIN_FREE_DESCRIPTORS
from vsmcp.node.app.sdnotify import UNHEALTHY_STATUS_PREFIX

pytestmark = pytest.mark.integration


# Low enough to run out of quickly, high enough to start (≈50 open at rest).
LOW_NOFILE = 160
MAX_HELD_CONNECTIONS = LOW_NOFILE


class NotifySocket:
    """A stand-in for systemd's notify socket, collecting what the node says."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.setblocking(False)
        self.received: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.received.append(self._sock.recv(4096).decode())
            except BlockingIOError:
                return self.received

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


class LowNofileNode(NodeProcess):
    """A vsmcpd started with a low RLIMIT_NOFILE (as `LimitNOFILE=` would set it)."""

    def command(self) -> list[str]:
        python, *rest = super().command()
        setup = (
            "import os, resource, sys; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({LOW_NOFILE}, {LOW_NOFILE})); "
            "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
        )
        return [python, "-c", setup, *rest]


def test_ready_watchdog_and_stopping_notifications(
    tmp_path: Path, nodes: list[NodeProcess], notify_socket: NotifySocket
) -> None:
    drain = notify_socket.drain
    node = NodeProcess(
        tmp_path / "n",
        "--no-mdns",
        env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "200000"},
    )
    nodes.append(node)
    node.start()
    wait_for(lambda: any(m.startswith("READY=1") for m in drain()), what="READY=1")
    wait_for(lambda: drain().count("WATCHDOG=1") >= 3, what="three watchdog pings")
    node.terminate()
    assert node.wait_exit() == 0
    wait_for(lambda: "STOPPING=1" in drain(), what="STOPPING=1")
    received = notify_socket.received
    ready = next(m for m in received if m.startswith("READY=1"))
    assert f"STATUS=serving as {node.node_id}" in ready
    assert received.index("STOPPING=1") > received.index(ready)


def test_out_of_descriptors_fails_health_and_starves_the_watchdog(
    nodes: list[NodeProcess], tmp_path: Path, notify_socket: NotifySocket
) -> None:
    node = LowNofileNode(
        tmp_path / "n",
        "--no-mdns",
        env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "200000"},
    )
    nodes.append(node)
    node.start()
    wait_for(lambda: notify_socket.drain().count("WATCHDOG=1") >= 2, what="watchdog pings")
    held: list[socket.socket] = []
    try:
        # Plain TCP connections to the mesh port: each one the node accepts costs it a
        # descriptor until the handshake times out.
        def exhausted() -> bool:
            for _ in range(10):
                if len(held) < MAX_HELD_CONNECTIONS:
                    held.append(socket.create_connection(("127.0.0.1", node.mesh_port)))
            return node.get_json("/healthz").get("_http_status") == 503

        wait_for(exhausted, timeout_s=30, what="/healthz failing with descriptors gone")

        # While unhealthy the watchdog says why and is not fed.
        def unhealthy_at(received: list[str]) -> list[int]:
            return [i for i, m in enumerate(received) if m.startswith(UNHEALTHY_STATUS_PREFIX)]

        wait_for(
            lambda: len(unhealthy_at(notify_socket.drain())) >= 3,
            what="three watchdog periods unhealthy",
        )
        received = notify_socket.drain()
        first_unhealthy, _, third_unhealthy = unhealthy_at(received)[:3]
        assert "WATCHDOG=1" not in received[first_unhealthy:third_unhealthy]
        assert "file descriptors" in received[first_unhealthy]
    finally:
        for conn in held:
            conn.close()
    wait_for(lambda: node.get_json("/healthz").get("status") == "ok", what="healthy again")
    fed_again = len(notify_socket.drain())
    wait_for(lambda: "WATCHDOG=1" in notify_socket.drain()[fed_again:], what="watchdog fed")
    assert "file descriptors left" in node.log_text()
    assert "Traceback" not in node.log_text()


def test_the_unit_allows_the_descriptors_a_node_may_need() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(REPO_ROOT / "systemd" / "vsmcpd.service")
    limit = int(unit["Service"]["LimitNOFILE"])
    # Every peer and candidate link (a descriptor or two each) with room to spare.
    assert limit >= 4 * (MAX_PEERS + MAX_CANDIDATE_LINKS) + MIN_FREE_DESCRIPTORS
    assert sys.platform != "linux" or limit <= 1 << 20  # the kernel's usual nr_open


@pytest.mark.parametrize(("invocation_id", "warned"), [("4f2a9c", True), ("", False)])
def test_accept_audit_rollback_from_a_unit_is_warned_about(
    tmp_path: Path, nodes: list[NodeProcess], invocation_id: str, warned: bool
) -> None:
    """Left in ExecStart, the flag would accept a rollback at every restart: said once
    at start when systemd runs the node (INVOCATION_ID), not otherwise."""
    node = NodeProcess(
        tmp_path / "n", "--accept-audit-rollback", env={"INVOCATION_ID": invocation_id}
    )
    nodes.append(node)
    node.start()
    node.terminate()
    assert node.wait_exit(timeout_s=30) == 0, node.log_text()
    assert ("meant for one start" in node.log_text()) is warned
