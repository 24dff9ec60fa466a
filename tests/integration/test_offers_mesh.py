"""Resources, resource templates, prompts and completion across three real `vsmcpd`
processes: A mounts an official-SDK server (`offers_server.py`, stdio) twice — `docs` in
the public zone, `vault` (which also offers `secret://plans`) in the restricted zone; B
mounts it as `docs` too, with one more resource (another variant of the offers tool);
the official SDK client on C, in both revisions, lists, reads, gets and completes, and
every answer is compared with the same request sent to the server directly."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ResourcesListChanged
from mcp.shared.exceptions import MCPError
from mcp_types import PromptReference, ResourceTemplateReference
from pydantic import BaseModel

from tests.integration.harness import REPO_ROOT, NodeProcess, alive_mesh, call_tool
from tests.integration.sdk_client import MODES, sdk_client
from tests.polling import async_wait_for, wait_for
from vsmcp.node.mcp.protocol import ZONE_DENIED
from vsmcp.node.tools.node_offers import STATUS_URI

pytestmark = pytest.mark.integration

PUBLIC_TOKEN = "public-token-offers-0123456789"
SERVER = REPO_ROOT / "tests" / "integration" / "offers_server.py"
MESH = """
[mesh]
preset = "local"
[tools]
entry_points = false
"""
A_CONFIG = f"""{MESH}
[[tools.mounts]]
name = "docs"
command = "{sys.executable}"
args = ["{SERVER}"]
health_interval_s = 0.5
[[tools.mounts]]
name = "vault"
command = "{sys.executable}"
args = ["{SERVER}", "--secret"]
zone = "restricted"
"""
# B mounts the same server under the same name, with one more resource: its offers tool
# has the same name and another schema, a variant of A's.
B_CONFIG = f"""{MESH}
[[tools.mounts]]
name = "docs"
command = "{sys.executable}"
args = ["{SERVER}", "--extra"]
"""
C_CONFIG = f"""{MESH}
[mcp]
loopback_zone = "restricted"
[[mcp.tokens]]
name = "pub"
token = "{PUBLIC_TOKEN}"
zone = "public"
"""
RESOURCES_CHANGED = "notifications/resources/list_changed"
LISTEN_READ_S = 120.0
# What differs by transport and revision, not by content.
ENVELOPE = {"meta", "result_type", "ttl_ms", "cache_scope", "next_cursor"}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    base = tmp_path_factory.mktemp("offers-mesh")
    with alive_mesh(base, {"a": A_CONFIG, "b": B_CONFIG, "c": C_CONFIG}) as started:
        yield started


@asynccontextmanager
async def direct(mode: str) -> AsyncIterator[Client]:
    params = StdioServerParameters(command=sys.executable, args=[str(SERVER)])
    async with Client(stdio_client(params), mode=mode, cache=None) as client:
        yield client


def _same(model: BaseModel) -> Any:
    return model.model_dump(mode="json", exclude=ENVELOPE)


async def _answers(client: Client) -> dict[str, Any]:
    """The answers compared between the mesh and the server itself."""
    colour = ResourceTemplateReference(type="ref/resource", uri="colour://{name}")
    review = PromptReference(type="ref/prompt", name="review")
    return {
        "greeting": _same(await client.read_resource("data://greeting")),
        "colour": _same(await client.read_resource("colour://green")),
        "review": _same(await client.get_prompt("review", {"code": "x = 1", "style": "thorough"})),
        "hello": _same(await client.get_prompt("hello")),
        "complete-template": _same(await client.complete(colour, {"name": "name", "value": "gr"})),
        "complete-prompt": _same(await client.complete(review, {"name": "style", "value": "th"})),
    }


def _listed(result: BaseModel, field: str) -> list[Any]:
    return sorted(
        (item.model_dump(mode="json") for item in getattr(result, field)),
        key=lambda d: json.dumps(d, sort_keys=True),
    )


@pytest.mark.parametrize("mode", MODES)
async def test_resources_prompts_and_completion_through_c_answer_as_the_server_does(
    nodes: list[NodeProcess], mode: str
) -> None:
    c = nodes[2]
    async with sdk_client(
        c.url + "/mcp", mode, {"Authorization": f"Bearer {PUBLIC_TOKEN}"}
    ) as mesh:
        caps = mesh.server_capabilities
        assert caps.resources is not None and caps.prompts is not None
        assert caps.completions is not None

        async def replicated() -> bool:
            uris = {str(r.uri) for r in (await mesh.list_resources()).resources}
            return "data://greeting" in uris

        await async_wait_for(replicated, timeout_s=60, what="A's resources listed on C")
        async with direct(mode) as server:
            assert await _answers(mesh) == await _answers(server)
            for method, field in (
                ("list_resource_templates", "resource_templates"),
                ("list_prompts", "prompts"),
            ):
                through = getattr(await getattr(mesh, method)(), field)
                own = getattr(await getattr(server, method)(), field)
                assert _listed_of(through) == _listed_of(own), method
            own_resources = _listed(await server.list_resources(), "resources")
        listed = (await mesh.list_resources()).resources
        uris = {str(r.uri) for r in listed}
        # The server's resources, and C's own status; not the restricted mount's secret.
        assert {json.dumps(r, sort_keys=True) for r in own_resources} <= {
            json.dumps(r.model_dump(mode="json"), sort_keys=True) for r in listed
        }
        assert STATUS_URI in uris
        assert "secret://plans" not in uris
        # Resources and prompts are not tools.
        assert not [
            t.name for t in (await mesh.list_tools()).tools if t.name.startswith("vsm.mcp.")
        ]

        with pytest.raises(MCPError) as denied:
            await mesh.read_resource("secret://plans")
        assert denied.value.error.code == ZONE_DENIED
        with pytest.raises(MCPError) as unknown:
            await mesh.read_resource("nothing://here")
        assert "Unknown resource" in unknown.value.error.message

        status = await mesh.read_resource(STATUS_URI)
        text = getattr(status.contents[0], "text", "")
        assert json.loads(text)


def _listed_of(items: list[BaseModel]) -> list[Any]:
    return sorted(
        (i.model_dump(mode="json") for i in items), key=lambda d: json.dumps(d, sort_keys=True)
    )


async def test_a_pinned_read_of_the_status_resource_answers_that_nodes_status(
    nodes: list[NodeProcess],
) -> None:
    a, _, c = nodes
    async with sdk_client(c.url + "/mcp", "legacy") as mesh:

        async def read_a() -> dict[str, Any] | None:
            try:
                result = await mesh.read_resource(STATUS_URI, meta={"vsmcp/node": a.node_id})
            except MCPError:
                return None  # A's built-in offers not replicated to C yet
            data: dict[str, Any] = json.loads(getattr(result.contents[0], "text", ""))
            return data

        pinned = await async_wait_for(read_a, timeout_s=60, what="A's status read through C")
        own = json.loads(getattr((await mesh.read_resource(STATUS_URI)).contents[0], "text", ""))
    assert pinned["node_id"] == a.node_id
    assert own["node_id"] == c.node_id  # unpinned: the entry node's own


async def test_the_restricted_mounts_secret_is_read_by_a_restricted_caller(
    nodes: list[NodeProcess],
) -> None:
    c = nodes[2]
    async with sdk_client(c.url + "/mcp", "auto") as mesh:  # loopback, no token: restricted

        async def secret() -> str | None:
            try:
                result = await mesh.read_resource("secret://plans")
            except MCPError:
                return None
            return str(getattr(result.contents[0], "text", ""))

        assert await async_wait_for(secret, timeout_s=60, what="secret read") == "the secret plans"


@pytest.mark.parametrize("mode", MODES)
async def test_a_resource_added_on_a_reaches_c_as_list_changed(
    nodes: list[NodeProcess], mode: str
) -> None:
    c = nodes[2]
    note = f"note://{mode}"
    seen: asyncio.Queue[str] = asyncio.Queue(maxsize=100)

    async def on_message(message: Any) -> None:
        method = getattr(message, "method", None)
        if isinstance(method, str) and seen.qsize() < 90:
            seen.put_nowait(method)

    async with (
        # Reads wait longer than httpx's 5 s: the change takes a few seconds to arrive.
        httpx2.AsyncClient(timeout=httpx2.Timeout(LISTEN_READ_S)) as http,
        Client(
            streamable_http_client(c.url + "/mcp", http_client=http),
            mode=mode,
            cache=None,
            message_handler=on_message,
        ) as mesh,
    ):

        async def docs_tools() -> bool:
            return "docs.add_note" in [t.name for t in (await mesh.list_tools()).tools]

        await async_wait_for(docs_tools, timeout_s=60, what="docs.add_note listed on C")

        async def note_listed() -> bool:
            return note in {str(r.uri) for r in (await mesh.list_resources()).resources}

        # A list-changed may also come from the mesh still settling (another node's
        # tools): after each one, look for the note; it must come with one of them.
        deadline = asyncio.get_running_loop().time() + 60

        def left() -> float:
            return max(0.0, deadline - asyncio.get_running_loop().time())

        if mode == "legacy":
            await mesh.call_tool("docs.add_note", {"name": mode, "text": "hi"})
            while True:
                while await asyncio.wait_for(seen.get(), left()) != RESOURCES_CHANGED:
                    pass
                if await note_listed():
                    break
        else:
            async with mesh.listen(resources_list_changed=True, prompts_list_changed=True) as sub:
                assert sub.honored.resources_list_changed and sub.honored.prompts_list_changed
                await mesh.call_tool("docs.add_note", {"name": mode, "text": "hi"})
                while True:
                    while not isinstance(
                        await asyncio.wait_for(anext(sub), left()), ResourcesListChanged
                    ):
                        pass
                    if await note_listed():
                        break
        read = await mesh.read_resource(note)
        assert getattr(read.contents[0], "text", None) == "hi"


async def test_two_variants_of_one_mount_are_both_served(nodes: list[NodeProcess]) -> None:
    b, c = nodes[1], nodes[2]
    async with sdk_client(c.url + "/mcp", "legacy") as mesh:

        async def read_extra() -> str | None:
            try:
                result = await mesh.read_resource("extra://more")
            except MCPError:
                return None  # B's offers not replicated to C yet
            return str(getattr(result.contents[0], "text", ""))

        assert await async_wait_for(read_extra, timeout_s=60, what="B's extra://more") == "more"
        uris = [str(r.uri) for r in (await mesh.list_resources()).resources]
        assert "extra://more" in uris and "data://greeting" in uris
        assert len(uris) == len(set(uris))  # one entry per URI, whoever offers it
        pinned = await mesh.read_resource("data://greeting", meta={"vsmcp/node": b.node_id})
        assert getattr(pinned.contents[0], "text", "") == "hello from the offers server"


def test_offers_tools_are_listed_apart_from_tools_in_api_tools_and_vsm_tools(
    nodes: list[NodeProcess],
) -> None:
    """The `vsm.mcp.*` registry entries carry resources and prompts: `/api/tools` lists
    them under `offers` only, and the `vsm.tools` tool not at all."""
    a, b, c = nodes
    expected = {
        ("vsm.mcp.mount.docs", a.node_id),
        ("vsm.mcp.mount.vault", a.node_id),
        ("vsm.mcp.mount.docs", b.node_id),
        *(("vsm.mcp.node", node.node_id) for node in nodes),
    }

    def offers() -> set[tuple[str, str]] | None:
        rows = {(t["name"], t["provider"]) for t in c.get_json("/api/tools")["offers"]}
        return rows if rows >= expected else None

    assert wait_for(offers, timeout_s=60, what="every offers tool in C's /api/tools") == expected
    listed = c.get_json("/api/tools")
    names = {t["name"] for t in listed["tools"]}
    assert "echo" in names
    assert not {n for n in names if n.startswith("vsm.mcp.")}
    assert {t["provider_state"] for t in listed["offers"]} <= {"self", "alive"}
    reply = call_tool(c, PUBLIC_TOKEN, "vsm.tools")
    rows = reply["result"]["structuredContent"]["tools"]
    assert "echo" in {t["name"] for t in rows}
    assert not [t["name"] for t in rows if t["name"].startswith("vsm.mcp.")]
