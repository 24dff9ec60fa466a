"""Children left by a previous life of this node (pid files under <data_dir>/children).

A child normally dies with its parent (PDEATHSIG, parent-pid watch); should one
survive (e.g. it was stopped with SIGSTOP when the parent was killed), the restarted
parent ends it before it starts its configured children again, so there are never two.
A pid is only killed if that process is still a `vsmcpd` of that very data dir: pids
are reused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Final

from vsmcp.node.children.config import PID_FILE_NAME

log = logging.getLogger(__name__)

GONE_TIMEOUT_S: Final = 3.0
MAX_CMDLINE_BYTES: Final = 64 * 1024


def is_child_process(pid: int, data_dir: Path) -> bool:
    """Whether `pid` is a running `vsmcpd` serving `data_dir` (Linux /proc)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()[:MAX_CMDLINE_BYTES]
    except OSError:
        return False
    args = raw.split(b"\0")
    return b"vsmcp.node" in args and os.fsencode(str(data_dir)) in args


def clean_up_stale(children_root: Path) -> list[int]:
    """Kill every still-running child of a previous life; the pids killed."""
    killed: list[int] = []
    if not children_root.is_dir():
        return killed
    for pid_file in sorted(children_root.glob(f"*/{PID_FILE_NAME}")):
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = 0
        if pid > 0 and is_child_process(pid, pid_file.parent):
            log.warning("ending child %s (pid %d) of a previous run", pid_file.parent.name, pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, pid_file.parent)
            killed.append(pid)
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
    return killed


def _wait_gone(pid: int, data_dir: Path) -> None:
    # It is not our child: we cannot wait() for it, only see it leave /proc.
    deadline = time.monotonic() + GONE_TIMEOUT_S
    while is_child_process(pid, data_dir) and time.monotonic() < deadline:
        time.sleep(0.02)
