"""A child VSM dies with its parent, even when the parent is killed with SIGKILL.

The parent passes its pid in `VSMCP_PARENT_PID` (node/children/process.py). At start
the child asks the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG: fires
when the thread that forked us ends; the parent forks from its event loop's thread,
which lives as long as it does), then checks the parent is still the one it was given
(it may have died before the request took effect), and keeps a thread watching
`os.getppid()` as a second line: when we are re-parented, we stop. SIGTERM means a
clean stop: the child stops its own children in turn.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from typing import Final

from vsmcp.node.children.config import PARENT_PID_ENV

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG: Final = 1
WATCH_INTERVAL_S: Final = 0.5


def parent_pid_from(environ: Mapping[str, str]) -> int | None:
    text = environ.get(PARENT_PID_ENV, "")
    return int(text) if text.isdigit() and int(text) > 1 else None


def set_parent_death_signal(sig: signal.Signals = signal.SIGTERM) -> bool:
    """Ask Linux to send `sig` when our parent dies; False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    # Imported here: only a child VSM asks, and ctypes is ≈0.4 MiB of an idle node.
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return int(libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0


def watch_parent(parent_pid: int) -> None:
    """Die with `parent_pid`: death signal, an immediate check, and a watching thread."""
    if not set_parent_death_signal():
        log.warning("cannot set a parent-death signal; relying on the parent-pid watch")
    if os.getppid() != parent_pid:
        log.error("parent %d is gone before we started; exiting", parent_pid)
        os._exit(0)
    thread = threading.Thread(target=_watch, args=(parent_pid,), name="parent-watch", daemon=True)
    thread.start()


def _watch(parent_pid: int) -> None:
    stopped = threading.Event()
    while not stopped.wait(WATCH_INTERVAL_S):
        if os.getppid() != parent_pid:
            log.error("parent %d is gone; stopping", parent_pid)
            os.kill(os.getpid(), signal.SIGTERM)
            return
