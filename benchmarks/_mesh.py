"""Real `vsmcpd --dev` processes for benchmarks: N nodes seeded with the first, or a
pair A and C (C seeded with A) without mDNS."""

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


def start_pair(base: Path, a_config: Path, c_config: Path) -> tuple[NodeProcess, NodeProcess]:
    """A in `base/a` and C in `base/c` (seeded with A's id and port), without mDNS, once
    both see each other alive; A is stopped again if C does not come up."""
    a = NodeProcess(base / "a", "--config", str(a_config), "--no-mdns").start()
    try:
        seed = f"{a.node_id}@127.0.0.1:{a.mesh_port}"
        c = NodeProcess(base / "c", "--config", str(c_config), "--no-mdns", "--seed", seed)
        c.start()
    except BaseException:
        a.stop()
        raise
    try:
        wait_mesh_states([a, c], {a.node_id: "alive", c.node_id: "alive"})
    except BaseException:
        c.stop()
        a.stop()
        raise
    return a, c
