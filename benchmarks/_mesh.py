"""Real `vsmcpd --dev` processes for benchmarks: N nodes seeded with the first."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.harness import NodeProcess, wait_mesh_states


def start_seeded(root: Path, config: Path, count: int, nodes: list[NodeProcess]) -> None:
    """Start `count` nodes in `root/n<k>` with `config`, seeded with the first, and wait
    until all see each other alive. They are added to `nodes` as they start, so the
    caller stops every one that started, whatever fails."""
    first = NodeProcess(root / "n0", "--config", str(config)).start()
    nodes.append(first)
    seed = f"127.0.0.1:{first.mesh_port}"
    for k in range(1, count):
        node = NodeProcess(root / f"n{k}", "--config", str(config), "--seed", seed)
        nodes.append(node.start(wait=False))
    for node in nodes:
        node.wait_ready()
    wait_mesh_states(nodes, {n.node_id: "alive" for n in nodes}, timeout_s=120)
