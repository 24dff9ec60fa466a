"""A local tool's MCP metadata (title, annotations, outputSchema, execution) goes into
its signed registry entry and comes back out as the same `tools/list` fields; metadata
over the cap is dropped, counted, and the tool still announced."""

from __future__ import annotations

from pathlib import Path

from tests.integration.mesh_peer import dev_peer
from vsmcp.crdt.tool_metadata import MAX_TOOL_METADATA_BYTES
from vsmcp.mesh.identity import NodeKey
from vsmcp.node.replication.service import ReplicationService
from vsmcp.node.store.database import Store
from vsmcp.node.tools.model import ToolSpec

DESCRIBED = ToolSpec(
    name="echo",
    description="says it back",
    input_schema={"type": "object", "properties": {"text": {"type": "string"}}},
    title="Echo",
    annotations={"readOnlyHint": True, "title": "Echo tool"},
    output_schema={"type": "object", "properties": {"text": {"type": "string"}}},
    execution={"taskSupport": "optional"},
)
OVERSIZED = ToolSpec(name="huge", title="x" * MAX_TOOL_METADATA_BYTES)
PLAIN = ToolSpec(name="plain", description="no metadata")
# JSON, but not a value the registry holds (integers beyond 64 bits): the metadata goes.
UNHOLDABLE = ToolSpec(name="counter", output_schema={"type": "integer", "maximum": 2**64})


def _service(tmp_path: Path, tools: list[ToolSpec]) -> ReplicationService:
    mesh = dev_peer("127.0.0.1", [], mesh_name="metadata-test", zone="public")
    return ReplicationService(
        key=NodeKey.generate(),
        authority_public_key=mesh.public_key,
        mesh=mesh,
        store=Store.open(tmp_path),
        local_tools=lambda: tools,
        max_envelope_bytes=1024 * 1024,
    )


def _listed(spec: ToolSpec) -> dict[str, object]:
    listed = spec.to_mcp()
    del listed["_meta"]
    return listed


def test_a_tools_metadata_comes_back_out_of_the_registry(tmp_path: Path) -> None:
    service = _service(tmp_path, [DESCRIBED, PLAIN])
    service.announce_local_tools()
    remote = {tool.name: tool for tool in service.tools()}
    assert remote["echo"].metadata == DESCRIBED.metadata() != {}
    assert remote["plain"].metadata == {}
    for spec in (DESCRIBED, PLAIN):
        tool = remote[spec.name]
        back = ToolSpec(
            name=tool.name, description=tool.description, input_schema=tool.input_schema
        ).with_metadata(tool.metadata)
        assert _listed(back) == _listed(spec)
    assert service.stats["metadata_dropped"] == 0


def test_oversized_metadata_is_dropped_counted_and_the_tool_still_announced(
    tmp_path: Path,
) -> None:
    service = _service(tmp_path, [OVERSIZED, DESCRIBED])
    service.announce_local_tools()
    remote = {tool.name: tool for tool in service.tools()}
    assert remote["huge"].metadata == {}
    assert remote["echo"].metadata == DESCRIBED.metadata()
    assert service.stats["metadata_dropped"] == 1
    assert service.stats["announce_failed"] == 0
    service.announce_local_tools()  # unchanged: not announced (nor dropped) again
    assert service.stats["metadata_dropped"] == 1


def test_metadata_the_registry_cannot_hold_is_dropped_not_the_tool(tmp_path: Path) -> None:
    service = _service(tmp_path, [UNHOLDABLE])
    service.announce_local_tools()
    remote = {tool.name: tool for tool in service.tools()}
    assert remote["counter"].metadata == {}
    assert service.stats["metadata_dropped"] == 1 and service.stats["announce_failed"] == 0


def test_metadata_of_the_wrong_shape_is_left_out_of_a_spec() -> None:
    spec = ToolSpec(name="t").with_metadata(
        {"title": 7, "annotations": "no", "outputSchema": [], "execution": {"taskSupport": "x"}}
    )
    assert spec.metadata() == {"execution": {"taskSupport": "x"}}
