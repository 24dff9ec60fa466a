"""`crdt` is transport-independent: it imports nothing from `mesh` or `node`."""

from __future__ import annotations

import ast
from pathlib import Path

import crdt


def test_crdt_imports_nothing_from_mesh_or_node() -> None:
    root = Path(crdt.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("mesh", "node")]
    assert offenders == []
    assert len(list(root.glob("*.py"))) >= 8
