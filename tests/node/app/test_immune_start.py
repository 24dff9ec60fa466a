"""node.app: a node block restored from the snapshot is in force from the mesh's first
moment: the node restores the snapshot and wires the immune system to the mesh before
the mesh starts, so the blocked node cannot be admitted in between."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from vsmcp.mesh.identity import NodeKey
from vsmcp.node.app.config import Config, load_config
from vsmcp.node.app.node import Node
from vsmcp.node.vsm.mitigation import MitigationRequest


def _config(data_dir: Path) -> Config:
    overrides: dict[str, object] = {
        "node.data_dir": str(data_dir),
        "node.dev": True,
        "tools.entry_points": False,
        "http.port": 0,
        "mesh.port": 0,
        "mesh.preset": "local",
        "mesh.mdns": False,
    }
    return load_config(environ={}, overrides=overrides)


@contextlib.contextmanager
def _mesh_log(handler: logging.Handler) -> Iterator[None]:
    """`handler` sees the mesh's INFO records (such as "mesh listening on")."""
    logger = logging.getLogger("vsmcp.node.peers.service")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class _AtListening(logging.Handler):
    """Asks the node's mesh, as it starts listening, whether it refuses `target`."""

    def __init__(self, node: Node, target: str) -> None:
        super().__init__()
        self.node = node
        self.target = target
        self.answers: list[bool] = []

    def emit(self, record: logging.LogRecord) -> None:
        mesh = self.node._mesh
        if mesh is not None and record.getMessage().startswith("mesh listening on"):
            self.answers.append(mesh.cut_off(self.target))


async def test_a_node_blocked_in_the_snapshot_is_refused_as_soon_as_the_mesh_listens(
    tmp_path: Path,
) -> None:
    x = NodeKey.generate().node_id
    # First run: the node alone is a quorum of its own observation; it blocks x.
    async with Node(_config(tmp_path)) as node:
        assert node.immune is not None
        request = MitigationRequest(
            target_kind="node", target=x, ttl_s=600, source="test", reason="bad envelopes"
        )
        assert node.immune.mitigate(request).status == "issued"
    # Second run: the block comes back from the snapshot, in force when the mesh opens.
    node = Node(_config(tmp_path))
    handler = _AtListening(node, x)
    with _mesh_log(handler):
        async with node:
            assert node._mesh is not None and node._mesh.cut_off(x)
    assert handler.answers == [True]


class _GateAtListening(logging.Handler):
    """Notes, as the node's mesh starts listening, whether tool calls and System 5's
    blocks already go through the immune system."""

    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node
        self.wired: list[bool] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("mesh listening on"):
            node, immune = self.node, self.node.immune
            tools = node._tools
            self.wired.append(
                immune is not None
                and tools is not None
                and tools.gate == immune.check_call
                and node.vsm.s5.mitigator is immune
            )


async def test_tool_calls_and_s5_go_through_the_immune_system_before_the_mesh_listens(
    tmp_path: Path,
) -> None:
    node = Node(_config(tmp_path))
    handler = _GateAtListening(node)
    with _mesh_log(handler):
        async with node:
            pass
    assert handler.wired == [True]
