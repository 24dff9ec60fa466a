"""The stream and the engine stand alone: importing them loads no HTTP, MCP or mesh
transport code (they will be wired into the node, never the reverse)."""

from __future__ import annotations

import json
import subprocess
import sys

MODULES = [
    "vsmcp.node.vsm.events",
    "vsmcp.node.vsm.stream",
    "vsmcp.node.vsm.patterns",
    "vsmcp.node.vsm.patterns.compile",
    "vsmcp.node.vsm.patterns.reference",
    "vsmcp.node.vsm.patterns.loader",
    "vsmcp.node.vsm.patterns.service",
]
FORBIDDEN = (
    "vsmcp.node.http",
    "vsmcp.node.mcp",
    "vsmcp.node.app",
    "vsmcp.mesh.transport",
    "vsmcp.mesh.membership",
    "zmq",
)


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
    assert "vsmcp.node.vsm.patterns.compile" in loaded
    bad = [m for m in loaded if m.startswith(FORBIDDEN)]
    assert bad == []
