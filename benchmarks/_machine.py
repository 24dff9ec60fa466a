"""What machine a benchmark ran on, for the line written beside its results."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(*extras: str) -> str:
    """`nproc 2, AMD EPYC ..., Python 3.11.7[, extras...]`."""
    parts = [f"nproc {os.cpu_count()}", cpu_model(), f"Python {platform.python_version()}"]
    return ", ".join([*parts, *extras])
