"""systemd readiness and watchdog notifications (`Type=notify`, `WatchdogSec=`).

A few datagrams to `$NOTIFY_SOCKET`: READY=1 once serving, WATCHDOG=1 at half the
watchdog interval while the event loop runs and the node is healthy (a stalled event
loop, a background loop given up by its supervisor, or a node that cannot serve, e.g.
out of file descriptors, stops the pings and systemd
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

UNHEALTHY_STATUS_PREFIX = "STATUS=unhealthy"

log = logging.getLogger(__name__)

MAX_NOTIFY_BYTES = 4096


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
        self._healthy: Callable[[], bool] = lambda: True
        self._problems: Callable[[], list[str]] = list

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, state: str) -> None:
        if not self._address:
            return
        data = state.encode()[:MAX_NOTIFY_BYTES]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # Never block the event loop: a full receive queue drops this one.
                sock.setblocking(False)
                sock.sendto(data, self._address)
        except OSError as e:
            log.warning("systemd notification %r failed: %s", state, e)

    def ready(
        self,
        status: str = "",
        *,
        healthy: Callable[[], bool] | None = None,
        problems: Callable[[], list[str]] | None = None,
    ) -> None:
        """READY=1; then watchdog pings only while `healthy()` (`problems()` says why not)."""
        if healthy is not None:
            self._healthy = healthy
        if problems is not None:
            self._problems = problems
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
        fed = True
        while True:
            if self._healthy():
                self.notify("WATCHDOG=1")
                fed = True
            else:
                # Starve the watchdog: systemd restarts us at its deadline. The status says
                # why every period (systemctl status shows the latest); the log once.
                why = "; ".join(self._problems()) or "unhealthy"
                if fed:
                    log.error("unhealthy, no more watchdog pings: %s", why)
                fed = False
                self.notify(f"{UNHEALTHY_STATUS_PREFIX}: {why}")
            await asyncio.sleep(self.watchdog_interval_s)
