"""The stream and the engine stand alone: importing them loads no HTTP, MCP or mesh
transport code (they will be wired into the node, never the reverse)."""

from __future__ import annotations

import json
import subprocess
import sys

MODULES = [
    "node.vsm.events",
    "node.vsm.stream",
    "node.vsm.patterns",
    "node.vsm.patterns.compile",
    "node.vsm.patterns.reference",
    "node.vsm.patterns.loader",
    "node.cli_patterns",
]
FORBIDDEN = ("node.http", "node.mcp", "node.app", "mesh.transport", "mesh.membership", "zmq")


def test_vsm_imports_no_transport() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for m in {MODULES!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = json.loads(result.stdout)
    assert "node.vsm.patterns.compile" in loaded
    bad = [m for m in loaded if m.startswith(FORBIDDEN)]
    assert bad == []
