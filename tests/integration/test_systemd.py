"""Under systemd (`Type=notify`, `WatchdogSec=`): READY, watchdog pings, STOPPING."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.integration.harness import NodeProcess
from tests.polling import wait_for

pytestmark = pytest.mark.integration


def test_ready_watchdog_and_stopping_notifications(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.setblocking(False)
    received: list[str] = []

    def drain() -> list[str]:
        while True:
            try:
                received.append(listener.recv(4096).decode())
            except BlockingIOError:
                return received

    try:
        node = NodeProcess(
            tmp_path / "n",
            "--no-mdns",
            env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"},
        )
        nodes.append(node)
        node.start()
        wait_for(lambda: any(m.startswith("READY=1") for m in drain()), what="READY=1")
        wait_for(lambda: drain().count("WATCHDOG=1") >= 3, what="three watchdog pings")
        node.terminate()
        assert node.wait_exit() == 0
        wait_for(lambda: "STOPPING=1" in drain(), what="STOPPING=1")
    finally:
        listener.close()
    ready = next(m for m in received if m.startswith("READY=1"))
    assert f"STATUS=serving as {node.node_id}" in ready
    assert received.index("STOPPING=1") > received.index(ready)
