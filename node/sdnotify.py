"""systemd readiness and watchdog notifications (`Type=notify`, `WatchdogSec=`).

A few datagrams to `$NOTIFY_SOCKET`: READY=1 once serving, WATCHDOG=1 at half the
watchdog interval while the event loop runs and the node is healthy (a stalled loop or
a node that cannot serve, e.g. out of file descriptors, stops the pings and systemd
restarts the service), STOPPING=1 on shutdown. Without `$NOTIFY_SOCKET`
(not under systemd) every call does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

MAX_NOTIFY_BYTES = 4096
UNHEALTHY_STATUS = "STATUS=unhealthy (see the log): watchdog not fed"


class SystemdNotifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # An abstract socket is written "@name"; its real name starts with a NUL byte.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog_for_us = not pid or pid == str(os.getpid())
        self.watchdog_interval_s = (
            int(usec) / 1_000_000 / 2 if usec.isdigit() and watchdog_for_us else None
        )
        self._task: asyncio.Task[None] | None = None
        self._healthy: Callable[[], bool] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, state: str) -> None:
        if not self._address:
            return
        data = state.encode()[:MAX_NOTIFY_BYTES]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(data, self._address)
        except OSError as e:
            log.warning("systemd notification %r failed: %s", state, e)

    def ready(self, status: str = "", *, healthy: Callable[[], bool] | None = None) -> None:
        """READY=1; then the watchdog pings, only while `healthy()` (when given) is true."""
        self._healthy = healthy
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))
        if self.watchdog_interval_s is not None and self._task is None:
            self._task = asyncio.create_task(self._watchdog(), name="systemd-watchdog")

    async def stopping(self) -> None:
        self.notify("STOPPING=1")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watchdog(self) -> None:
        assert self.watchdog_interval_s is not None
        while True:
            if self._healthy is None or self._healthy():
                self.notify("WATCHDOG=1")
            else:
                # No ping: systemd restarts us at the deadline; say why meanwhile.
                self.notify(UNHEALTHY_STATUS)
            await asyncio.sleep(self.watchdog_interval_s)
