"""Run Python code in a fresh interpreter, for what is decided once per process: which
modules it imports, which kind of module an import finds, which threads it starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str) -> str:
    """`code`'s standard output; fails the test if it exits non-zero (with its stderr)."""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout
