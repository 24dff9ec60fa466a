"""Open file descriptors against the process's limit.

A node out of descriptors accepts no connection and opens no socket, yet its process
stays up: health must say so (and the systemd watchdog must stop being fed), so that
whoever watches it restarts it. `process_open_fds` / `process_max_fds` in `/metrics`
show the same numbers.
"""

from __future__ import annotations

import errno
import os
import resource

PROC_FD_DIR = "/proc/self/fd"
# Unhealthy below this many free descriptors: enough left to answer /healthz and to log.
MIN_FREE_DESCRIPTORS = 64


def descriptor_usage() -> tuple[int, int] | None:
    """(open descriptors, soft limit), or None where either cannot be known."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        # listdir holds one descriptor of its own while it reads: not counted.
        opened = len(os.listdir(PROC_FD_DIR)) - 1
    except OSError as e:
        if e.errno in (errno.EMFILE, errno.ENFILE):
            return soft, soft  # not even one more: that is the answer
        return None  # no /proc (not Linux)
    return opened, soft


def descriptors_exhausted() -> bool:
    """True when fewer than MIN_FREE_DESCRIPTORS descriptors are left."""
    usage = descriptor_usage()
    return usage is not None and usage[1] - usage[0] < MIN_FREE_DESCRIPTORS
