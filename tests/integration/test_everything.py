"""The MCP reference server, `@modelcontextprotocol/server-everything` from npm (pinned in
tests/integration/everything/package.json, run by the repo's pinned Node 22), mounted on
node A of three real `vsmcpd` processes under the default mount mode; the official SDK
client on C, in both revisions, uses every capability it offers — tools, resources,
resource templates, prompts, completion, log notifications at a level, progress,
sampling and elicitation answered by the client's own callbacks — and every answer is
compared with the same request sent to the server directly (an SDK client over stdio)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import mcp_types as types
import pytest
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.subscriptions import ResourceUpdated
from mcp.shared.exceptions import MCPError
from mcp_types import PromptReference, ResourceTemplateReference
from pydantic import BaseModel

from tests.integration.harness import REPO_ROOT, NodeProcess, alive_mesh
from tests.integration.sdk_client import MODES, sdk_client
from tests.integration.test_client_requests import _roots, _sampling
from tests.integration.test_offers_mesh import MESH
from tests.polling import async_wait_for, async_wait_until
from tests.skips import skip_or_fail

pytestmark = pytest.mark.integration

PACKAGE = REPO_ROOT / "tests" / "integration" / "everything"
NODE = PACKAGE / "node_modules" / ".bin" / "node"
SERVER = PACKAGE / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist"
ENTRY = SERVER / "index.js"
MOUNT = "everything"
# The default mount mode: no `mode` key.
A_CONFIG = f"""{MESH}
[[tools.mounts]]
name = "{MOUNT}"
command = "{NODE}"
args = ["{ENTRY}", "stdio"]
# A 2025-11-25 server over stdio names no call in its requests and log lines: with one
# call in flight at a time here, they belong to it (docs/mcp-client-requests.md).
only_call_fallback = true
"""
# What differs by transport and revision, not by content.
ENVELOPE = {"meta", "result_type", "ttl_ms", "cache_scope", "next_cursor"}
TIME = re.compile(r"\d{1,2}:\d{2}:\d{2}(\s?[AP]M)?")
UPDATE_WAIT_S = 30.0
# The client's log level: the server's simulated log lines come at random levels, half
# of them below it.
LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
LEVEL = "error"
REVISIONS = {"auto": "2026-07-28", "legacy": "2025-11-25"}
STATIC_DOC = "demo://resource/static/document/architecture.md"


def _require_server() -> None:
    if not (NODE.exists() and ENTRY.exists()):
        skip_or_fail(
            "@modelcontextprotocol/server-everything is not installed: "
            "npm ci --prefix tests/integration/everything"
        )


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    _require_server()
    base = tmp_path_factory.mktemp("everything")
    with alive_mesh(base, {"a": A_CONFIG, "b": MESH, "c": MESH}) as started:
        yield started


async def _elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"name": "Ada", "check": True})


class Logs:
    def __init__(self) -> None:
        self.seen: list[types.LoggingMessageNotificationParams] = []

    async def __call__(self, params: types.LoggingMessageNotificationParams) -> None:
        self.seen.append(params)


def _callbacks(logs: Logs) -> dict[str, Any]:
    return {
        "sampling_callback": _sampling,
        "elicitation_callback": _elicitation,
        "list_roots_callback": _roots,
        "logging_callback": logs,
    }


@asynccontextmanager
async def direct(mode: str, logs: Logs) -> AsyncIterator[Client]:
    params = StdioServerParameters(command=str(NODE), args=[str(ENTRY), "stdio"])
    async with Client(stdio_client(params), mode=mode, cache=None, **_callbacks(logs)) as client:
        yield client


def _same(model: BaseModel) -> Any:
    return _timeless(model.model_dump(mode="json", exclude=ENVELOPE))


def _timeless(value: Any, key: str = "") -> Any:
    """`value` with the server's clock readings (its dynamic resources say when they were
    made, also inside base64 blobs) replaced by `<time>`."""
    if isinstance(value, dict):
        return {k: _timeless(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    if isinstance(value, str):
        if key == "blob":
            value = base64.b64decode(value).decode(errors="replace")
        return TIME.sub("<time>", value)
    return value


def _sorted(items: list[BaseModel]) -> list[Any]:
    return sorted(
        (i.model_dump(mode="json") for i in items), key=lambda d: json.dumps(d, sort_keys=True)
    )


async def _tool_answers(client: Client, prefix: str) -> dict[str, Any]:
    """Tool calls that answer the same every time."""
    calls: dict[str, dict[str, Any]] = {
        "echo": {"message": "through the mesh"},
        "get-sum": {"a": 2, "b": 40},
        "get-structured-content": {"location": "Chicago"},
        "get-annotated-message": {"messageType": "success", "includeImage": True},
        "get-tiny-image": {},
        "get-resource-links": {"count": 2},
        "get-resource-reference": {"resourceType": "Blob", "resourceId": 3},
        "trigger-sampling-request": {"prompt": "how far is A?", "maxTokens": 20},
        "trigger-elicitation-request": {},
        "get-roots-list": {},
    }
    return {
        name: _same(await client.call_tool(prefix + name, arguments))
        for name, arguments in calls.items()
    }


async def _offer_answers(client: Client) -> dict[str, Any]:
    """Resources, templates, prompts and completion."""
    template = ResourceTemplateReference(
        type="ref/resource", uri="demo://resource/dynamic/text/{resourceId}"
    )
    prompt = PromptReference(type="ref/prompt", name="completable-prompt")
    return {
        "resources": _sorted((await client.list_resources()).resources),
        "templates": _sorted((await client.list_resource_templates()).resource_templates),
        "prompts": _sorted((await client.list_prompts()).prompts),
        "static": _same(await client.read_resource(STATIC_DOC)),
        "text": _same(await client.read_resource("demo://resource/dynamic/text/2")),
        "blob": _same(await client.read_resource("demo://resource/dynamic/blob/5")),
        "simple": _same(await client.get_prompt("simple-prompt")),
        "args": _same(await client.get_prompt("args-prompt", {"city": "Oslo", "state": "N"})),
        "resource-prompt": _same(
            await client.get_prompt("resource-prompt", {"resourceType": "Text", "resourceId": "4"})
        ),
        "complete-prompt": _same(
            await client.complete(prompt, {"name": "department", "value": "S"})
        ),
        "complete-context": _same(
            await client.complete(
                prompt, {"name": "name", "value": ""}, context_arguments={"department": "Sales"}
            )
        ),
        "complete-template": _same(
            await client.complete(template, {"name": "resourceId", "value": "1"})
        ),
    }


def _own(resources: list[Any]) -> list[Any]:
    return [
        r for r in resources if str(r.get("uri") or r.get("uri_template", "")).startswith("demo://")
    ]


async def _progress(client: Client, prefix: str) -> list[tuple[float, float | None]]:
    steps: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        steps.append((progress, total))

    result = await client.call_tool(
        prefix + "trigger-long-running-operation",
        {"duration": 1, "steps": 2},
        progress_callback=on_progress,
    )
    assert not result.is_error, result
    await async_wait_until(lambda: len(steps) >= 2, timeout_s=20, what="both progress steps")
    return steps


async def _simulated_log(client: Client, prefix: str, logs: Logs) -> set[str]:
    """Start and stop the server's simulated logging until a line at or above the
    client's level has arrived (at each start it sends one line, of a random level,
    during the call); every line the client got is at or above its level, and says the
    level it came at. Returns the lines' shapes (their levels masked)."""

    async def a_line() -> bool | None:
        for _ in range(2):  # it toggles: the first call may stop it
            result = await client.call_tool(prefix + "toggle-simulated-logging", {})
            if getattr(result.content[0], "text", "").startswith("Started"):
                await client.call_tool(prefix + "toggle-simulated-logging", {})  # stop it
                break
        return True if logs.seen else None

    await async_wait_for(a_line, timeout_s=120, what=f"a simulated log line at {LEVEL} or above")
    shapes = set()
    for line in logs.seen:
        assert LEVELS.index(line.level) >= LEVELS.index(LEVEL), line
        data = re.sub(r" - SessionId .*", "", str(line.data))
        assert data.lower().startswith(line.level), (line.level, data)
        shapes.add(re.sub(r"^\w+[- ]level[- ]message$", "<level> message", data))
    return shapes


async def _tools_listed(mesh: Client) -> list[types.Tool]:
    async def listed() -> list[types.Tool] | None:
        tools = [t for t in (await mesh.list_tools()).tools if t.name.startswith(MOUNT + ".")]
        return tools if any(t.name.endswith("trigger-sampling-request") for t in tools) else None

    return await async_wait_for(listed, timeout_s=90, what="server-everything's tools at C")


def _tool_view(tool: types.Tool, prefix: str) -> dict[str, Any]:
    """A tool's name, description and input schema (its other fields: compared apart)."""
    return {
        "name": tool.name.removeprefix(prefix),
        "description": tool.description,
        "input_schema": tool.input_schema,
    }


def _definitions(tools: list[types.Tool], prefix: str) -> list[dict[str, Any]]:
    """Tools as the server defines them: title, annotations, output schema and all."""
    views = []
    for tool in tools:
        view: dict[str, Any] = tool.model_dump(mode="json", exclude={"meta"})
        view["name"] = tool.name.removeprefix(prefix)
        views.append(view)
    return sorted(views, key=lambda v: str(v["name"]))


@pytest.mark.parametrize("mode", MODES)
async def test_everything_through_c_answers_as_the_server_does(
    nodes: list[NodeProcess], mode: str
) -> None:
    c = nodes[2]
    mesh_logs, own_logs = Logs(), Logs()
    level = LEVEL
    async with sdk_client(
        c.url + "/mcp",
        mode,
        log_level=level if mode == "auto" else None,
        **_callbacks(mesh_logs),
    ) as mesh:
        if mode == "legacy":
            await mesh.set_logging_level(level)
        # The gateway speaks either revision; the server itself only 2025-11-25 (so in
        # "auto" the mesh's sampling and elicitation are input_required rounds at C).
        assert mesh.protocol_version == REVISIONS[mode]
        listed = await _tools_listed(mesh)
        prefix = MOUNT + "."
        async with direct(mode, own_logs) as server:
            assert server.protocol_version == REVISIONS["legacy"]
            await server.set_logging_level(level)  # the server speaks 2025-11-25 only
            own_tools = (await server.list_tools()).tools
            assert sorted(
                (_tool_view(t, prefix) for t in listed), key=lambda v: v["name"]
            ) == sorted((_tool_view(t, "") for t in own_tools), key=lambda v: v["name"])
            called = await _tool_answers(mesh, prefix)
            assert called == await _tool_answers(server, "")
            assert not [name for name, answer in called.items() if answer["is_error"]]
            # The server's requests were answered by this client's callbacks.
            assert "model-at-c" in json.dumps(called["trigger-sampling-request"])
            assert "Ada" in json.dumps(called["trigger-elicitation-request"])
            assert "file:///work/c" in json.dumps(called["get-roots-list"])
            through = await _offer_answers(mesh)
            own = await _offer_answers(server)
            for key in ("resources", "templates"):
                through[key] = _own(through[key])
            assert through == own
            assert await _progress(mesh, prefix) == await _progress(server, "")
            assert await _simulated_log(mesh, prefix, mesh_logs) == await _simulated_log(
                server, "", own_logs
            )


async def _first_update(client: Client, prefix: str, updates: asyncio.Queue[str]) -> str:
    """Subscribe to a static resource, have the server send updates of what its session
    subscribed to, and return the first URI updated; unsubscribe and stop the updates
    after. At 2026-07-28 the subscription is a `subscriptions/listen` stream with
    `resourceSubscriptions` (its updates come on that stream); before, a
    `resources/subscribe` (its updates come to the message handler)."""
    if client.protocol_version != REVISIONS["auto"]:
        await client.subscribe_resource(STATIC_DOC)
        try:
            return await _toggled_update(client, prefix, updates.get)
        finally:
            await client.unsubscribe_resource(STATIC_DOC)
    async with client.listen(resource_subscriptions=[STATIC_DOC]) as subscription:
        assert subscription.honored.resource_subscriptions == [STATIC_DOC]

        async def next_uri() -> str:
            event = await anext(subscription)
            assert isinstance(event, ResourceUpdated)
            return event.uri

        return await _toggled_update(client, prefix, next_uri)


async def _toggled_update(
    client: Client, prefix: str, next_uri: Callable[[], Awaitable[str]]
) -> str:
    """Start the server's subscriber updates (it toggles: stop them first if they were
    on), return the first URI updated, and stop them."""
    for _ in range(2):
        result = await client.call_tool(prefix + "toggle-subscriber-updates", {})
        if getattr(result.content[0], "text", "").startswith("Started"):
            try:
                return await asyncio.wait_for(next_uri(), UPDATE_WAIT_S)
            finally:
                await client.call_tool(prefix + "toggle-subscriber-updates", {})
    raise AssertionError("the server's subscriber updates did not start")


def _updates_into(updates: asyncio.Queue[str]) -> Any:
    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification) and not updates.full():
            updates.put_nowait(str(message.params.uri))

    return on_message


@pytest.mark.parametrize("mode", MODES)
async def test_resource_updates_reach_a_subscribed_client_through_c(
    nodes: list[NodeProcess], mode: str
) -> None:
    c = nodes[2]
    own_updates: asyncio.Queue[str] = asyncio.Queue(maxsize=16)
    params = StdioServerParameters(command=str(NODE), args=[str(ENTRY), "stdio"])
    async with Client(
        stdio_client(params), mode="legacy", cache=None, message_handler=_updates_into(own_updates)
    ) as server:
        try:
            assert await _first_update(server, "", own_updates) == STATIC_DOC
        except MCPError as exc:  # the reference itself, not the mesh
            pytest.fail(f"the server itself refused a subscription: {exc}")
    updates: asyncio.Queue[str] = asyncio.Queue(maxsize=16)
    async with sdk_client(c.url + "/mcp", mode, message_handler=_updates_into(updates)) as mesh:
        assert mesh.protocol_version == REVISIONS[mode]
        resources = mesh.server_capabilities.resources
        assert resources is not None and resources.subscribe is True
        await _tools_listed(mesh)
        try:
            updated = await _first_update(mesh, MOUNT + ".", updates)
        except MCPError as exc:
            refused = exc  # raised outside the client, which would wrap it in a group
        else:
            refused = None
    if refused is not None:
        raise refused
    assert updated == STATIC_DOC


async def test_tools_through_c_are_listed_as_the_server_defines_them(
    nodes: list[NodeProcess],
) -> None:
    c = nodes[2]
    async with sdk_client(c.url + "/mcp", "legacy", **_callbacks(Logs())) as mesh:
        listed = await _tools_listed(mesh)
        async with direct("legacy", Logs()) as server:
            own = (await server.list_tools()).tools
        through = _definitions(listed, MOUNT + ".")
    mine = _definitions(own, "")
    if [v["name"] for v in through] != [v["name"] for v in mine]:
        pytest.fail("not the same tools at all")  # not the gap this test marks: fail
    assert through == mine
