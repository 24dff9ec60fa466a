"""Same name, different schemas (node/routing/variants.py): distinct tools with names
that do not change when another provider appears; calls reach the variant named.

Four real nodes in one process: C (the entry, no `calc` of its own), A and B offering
`calc` with two schemas, then D with a third; A's own /mcp shows its local variant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.node.routing.test_catalog import MODERN, _call, _config, _post
from tests.polling import async_wait_for
from vsmcp.node.app.node import Node
from vsmcp.node.mcp.protocol import INVALID_PARAMS
from vsmcp.node.routing.variants import (
    AmbiguousTool,
    schema_digest,
    split_variant,
    variant_name,
)

INTEGERS = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
}
NUMBERS = {
    "type": "object",
    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
    "required": ["a", "b"],
}
WITH_NOTE = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}, "note": {"type": "string"}},
    "required": ["a", "b"],
}
SCHEMAS = (INTEGERS, NUMBERS, WITH_NOTE)


# -- names (pure) ------------------------------------------------------------------------------


def test_the_digest_is_of_the_schema_alone_whatever_its_key_order() -> None:
    reordered = {"required": ["a", "b"], "properties": INTEGERS["properties"], "type": "object"}
    assert schema_digest(INTEGERS) == schema_digest(reordered)
    assert schema_digest(INTEGERS) != schema_digest(NUMBERS)
    assert len(schema_digest(INTEGERS)) == 8


def test_a_variant_name_splits_back_and_other_names_do_not() -> None:
    digest = schema_digest(NUMBERS)
    assert split_variant(variant_name("time.add", digest)) == ("time.add", digest)
    for name in ("time.get_current_time", "calc", "calc.ABCDEF12", "calc.abc", ".0123abcd"):
        assert split_variant(name) is None, name


def test_an_ambiguous_name_is_refused_naming_the_variants() -> None:
    error = AmbiguousTool("calc", ["calc.2222bbbb", "calc.1111aaaa"])
    assert error.data["variants"] == ["calc.1111aaaa", "calc.2222bbbb"]
    assert "calc.1111aaaa, calc.2222bbbb" in str(error)


# -- across real nodes ---------------------------------------------------------------------------


def _calc(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"name": "calc", "target": "tests.node.tools.sample_plugins:add", "input_schema": schema}
    ]


@dataclass
class Mesh:
    a: Node
    b: Node
    c: Node
    base: Path
    seed: str

    def url(self, node: Node) -> str:
        return f"http://127.0.0.1:{node.http_port}/mcp"


async def _list(url: str) -> dict[str, dict[str, Any]]:
    _, body = await _post(
        url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": MODERN}}
    )
    return {t["name"]: t for t in body["result"]["tools"]}


def _calcs(tools: dict[str, dict[str, Any]]) -> set[str]:
    return {name for name in tools if name.startswith("calc")}


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with Node(_config(tmp_path / "a", **{"tools.plugins": _calc(INTEGERS)})) as a:
        seed = f"{a.identity.node_id}@127.0.0.1:{a.mesh_port}"
        b_cfg = _config(tmp_path / "b", **{"mesh.seeds": [seed], "tools.plugins": _calc(NUMBERS)})
        async with Node(b_cfg) as b, Node(_config(tmp_path / "c", **{"mesh.seeds": [seed]})) as c:
            yield Mesh(a, b, c, tmp_path, seed)


async def test_variants_are_listed_apart_called_apart_and_keep_their_names(mesh: Mesh) -> None:
    ints, nums, notes = (
        variant_name("calc", schema_digest(s)) for s in (INTEGERS, NUMBERS, WITH_NOTE)
    )

    async def listed(url: str, names: set[str]) -> bool:
        return _calcs(await _list(url)) == names

    await async_wait_for(
        lambda: listed(mesh.url(mesh.c), {ints, nums}), timeout_s=20, what="two calc variants at C"
    )
    tools = await _list(mesh.url(mesh.c))
    assert tools[ints]["inputSchema"] == INTEGERS and tools[nums]["inputSchema"] == NUMBERS

    # Each variant runs where its schema is offered, checked against its own schema.
    status, body = await _call(mesh.url(mesh.c), nums, {"a": 1.5, "b": 2})
    assert status == 200, body
    assert body["result"]["structuredContent"] == {"sum": 3.5}
    assert body["result"]["_meta"]["vsmcp/provider"] == mesh.b.identity.node_id
    status, body = await _call(mesh.url(mesh.c), ints, {"a": 1, "b": 2})
    assert body["result"]["_meta"]["vsmcp/provider"] == mesh.a.identity.node_id
    status, body = await _call(mesh.url(mesh.c), ints, {"a": 1.5, "b": 2})
    assert body["error"]["code"] == INVALID_PARAMS  # 1.5 is no integer for this one

    # The plain name is ambiguous at C (no variant of its own): refused, naming both.
    status, body = await _call(mesh.url(mesh.c), "calc", {"a": 1, "b": 2})
    assert body["error"]["code"] == INVALID_PARAMS
    assert body["error"]["data"]["variants"] == sorted([ints, nums])
    # Pinned to a node, a variant must be that node's.
    meta = {**MODERN, "vsmcp/node": mesh.a.identity.node_id}
    params = {"name": nums, "arguments": {"a": 1, "b": 2}, "_meta": meta}
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    status, body = await _post(mesh.url(mesh.c), message)
    assert body["error"]["code"] == INVALID_PARAMS
    assert f"Tool {nums!r} is not offered by node" in body["error"]["message"]
    # At A the plain name is A's own (as before variants), and B's is listed apart.
    await async_wait_for(
        lambda: listed(mesh.url(mesh.a), {ints, nums}), timeout_s=20, what="variants at A"
    )
    status, body = await _call(mesh.url(mesh.a), "calc", {"a": 2, "b": 2})
    assert body["result"]["structuredContent"] == {"sum": 4}
    assert "vsmcp/provider" not in body["result"].get("_meta", {})  # ran at A

    # A third provider with a third schema: one more name, the others unchanged.
    d_cfg = _config(
        mesh.base / "d", **{"mesh.seeds": [mesh.seed], "tools.plugins": _calc(WITH_NOTE)}
    )
    async with Node(d_cfg) as d:
        await async_wait_for(
            lambda: listed(mesh.url(mesh.c), {ints, nums, notes}),
            timeout_s=20,
            what="three calc variants at C",
        )
        status, body = await _call(mesh.url(mesh.c), notes, {"a": 1, "b": 1, "note": "d"})
        assert body["result"]["_meta"]["vsmcp/provider"] == d.identity.node_id
