"""systemd notifications never block the event loop."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from vsmcp.node.app.sdnotify import SystemdNotifier

# Far more than a Unix datagram socket queues (net.unix.max_dgram_qlen, 512 at most).
FLOOD_MESSAGES = 5000
# Only a hang detector: a blocking send never returns at all.
HANG_TIMEOUT_S = 60.0


def test_a_notify_socket_nobody_reads_never_blocks_the_sender(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path)})
        done = threading.Event()

        def flood() -> None:
            for _ in range(FLOOD_MESSAGES):
                notifier.notify("WATCHDOG=1")
            done.set()

        threading.Thread(target=flood, daemon=True).start()
        assert done.wait(HANG_TIMEOUT_S), "notify blocked on a full notification socket"
        assert listener.recv(64) == b"WATCHDOG=1"  # the ones that fit were delivered
