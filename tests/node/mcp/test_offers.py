"""Resources, prompts and completion at the gateway core (`McpCore`) over a real
`LocalCatalog`: the built-in status resource and a mounted official-SDK server
(`tests/integration/offers_server.py`, stdio) in the public zone, and one more mount of
it in the restricted zone."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from vsmcp.node.mcp.protocol import (
    INVALID_PARAMS,
    PROVIDER_ERROR,
    ZONE_DENIED,
    Caller,
    McpCore,
    Message,
    error_object,
)
from vsmcp.node.tools.config import MountConfig, ToolsConfig
from vsmcp.node.tools.node_offers import STATUS_URI
from vsmcp.node.tools.offers import offers_of
from vsmcp.node.tools.registry import LocalCatalog, build_local_catalog
from vsmcp.node.tools.supervisor import UnitState

SERVER = Path(__file__).resolve().parents[2] / "integration" / "offers_server.py"
PUBLIC = Caller("t", "public", "test")
RESTRICTED = Caller("r", "restricted", "test")
MAX_RESULT_BYTES = 64 << 10


def _mount(name: str, *args: str, zone: str = "public") -> MountConfig:
    return MountConfig(name=name, command=sys.executable, args=[str(SERVER), *args], zone=zone)


@pytest.fixture
async def core() -> AsyncIterator[McpCore]:
    cfg = ToolsConfig(
        entry_points=False,
        max_result_bytes=MAX_RESULT_BYTES,
        mounts=[
            _mount("docs", "--big", str(MAX_RESULT_BYTES + 1)),
            _mount("vault", "--secret", zone="restricted"),
            _mount("odd", "--refuse-templates"),
        ],
    )
    async with build_local_catalog(cfg, status=lambda: {"node_id": "n1"}) as catalog:
        await catalog.supervisor.wait_running(timeout_s=30)
        yield McpCore(catalog)


async def _ask(
    core: McpCore,
    method: str,
    params: dict[str, Any],
    caller: Caller = PUBLIC,
    modern: bool = False,
) -> dict[str, Any]:
    message = Message.of({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    return await core.handle(message, caller, modern=modern)


async def _error(
    core: McpCore, method: str, params: dict[str, Any], caller: Caller = PUBLIC
) -> Any:
    with pytest.raises(Exception) as caught:
        await _ask(core, method, params, caller)
    return error_object(caught.value)


async def test_lists_merge_what_the_callers_zone_may_see(core: McpCore) -> None:
    public = await _ask(core, "resources/list", {})
    uris = [r["uri"] for r in public["resources"]]
    assert sorted(uris) == sorted(["data://greeting", "data://big", STATUS_URI])
    restricted = await _ask(core, "resources/list", {}, RESTRICTED)
    assert "secret://plans" in [r["uri"] for r in restricted["resources"]]
    templates = await _ask(core, "resources/templates/list", {}, modern=True)
    assert [t["uriTemplate"] for t in templates["resourceTemplates"]] == ["colour://{name}"]
    assert templates["resultType"] == "complete" and templates["cacheScope"] == "private"
    prompts = await _ask(core, "prompts/list", {})
    assert sorted(p["name"] for p in prompts["prompts"]) == ["hello", "review"]
    assert "resources" in core.capabilities() and "prompts" in core.capabilities()


async def test_read_get_and_complete_go_to_the_provider(core: McpCore) -> None:
    read = await _ask(core, "resources/read", {"uri": "colour://red"})
    assert json.loads(read["contents"][0]["text"]) == {"colour": "red", "known": True}
    status = await _ask(core, "resources/read", {"uri": STATUS_URI}, modern=True)
    assert json.loads(status["contents"][0]["text"]) == {"node_id": "n1"}
    assert status["resultType"] == "complete"
    prompt = await _ask(core, "prompts/get", {"name": "review", "arguments": {"code": "x"}})
    assert prompt["messages"][0]["content"]["text"] == "Review this code (terse):\nx"
    ref = {"type": "ref/resource", "uri": "colour://{name}"}
    completed = await _ask(
        core, "completion/complete", {"ref": ref, "argument": {"name": "name", "value": "g"}}
    )
    assert completed["completion"]["values"] == ["green", "grey"]


async def test_offers_tools_are_not_tools(core: McpCore) -> None:
    tools = await _ask(core, "tools/list", {})
    assert not [t for t in tools["tools"] if t["name"].startswith("vsm.mcp.")]
    error = await _error(core, "tools/call", {"name": "vsm.mcp.mount.docs", "arguments": {}})
    assert error["code"] == INVALID_PARAMS


async def test_refusals_are_clear(core: McpCore) -> None:
    denied = await _error(core, "resources/read", {"uri": "secret://plans"})
    assert denied["code"] == ZONE_DENIED
    unknown = await _error(core, "resources/read", {"uri": "nothing://here"})
    assert unknown["code"] == INVALID_PARAMS and "Unknown resource" in unknown["message"]
    assert (await _error(core, "resources/read", {}))["code"] == INVALID_PARAMS
    assert (await _error(core, "prompts/get", {"name": "nope"}))["code"] == INVALID_PARAMS
    bad_ref = await _error(core, "completion/complete", {"ref": {"type": "x"}, "argument": {}})
    assert bad_ref["code"] == INVALID_PARAMS
    too_large = await _error(core, "resources/read", {"uri": "data://big"})
    assert too_large["code"] == PROVIDER_ERROR and "over the cap" in too_large["message"]
    upstream = await _error(core, "prompts/get", {"name": "review", "arguments": {}})
    assert upstream["code"] == PROVIDER_ERROR


async def test_a_list_the_server_refuses_is_empty_and_the_rest_serves(core: McpCore) -> None:
    assert isinstance(core.catalog, LocalCatalog)
    odd = next(s for s in core.catalog.all_offer_tools() if s.name == "vsm.mcp.mount.odd")
    offers = offers_of(odd)
    assert offers is not None
    assert offers.templates == ()
    assert {r["uri"] for r in offers.resources} >= {"data://greeting"}
    assert [p["name"] for p in offers.prompts] == ["review", "hello"]
    assert core.catalog.supervisor.units["mount:odd"].state is UnitState.RUNNING
