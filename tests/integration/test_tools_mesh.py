"""Tool calls across three real `vsmcpd` processes, driven by the official MCP SDK and
raw HTTP at node C's /mcp.

A mounts `mcp-server-time` (stdio, from PyPI), `malformed_server.py` (`bad.*`) and a
plugin tool; B offers debug tools; A and B both offer `shared.echo`. C offers nothing of
its own besides built-ins and serves everything through the mesh.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError

from tests.integration.harness import REPO_ROOT, NodeProcess, wait_mesh_states
from tests.integration.sdk_client import MODES, sdk_client
from tests.polling import async_wait_for, wait_for
from tests.skips import skip_or_fail
from vsmcp.node.mcp.protocol import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    PROVIDER_ERROR,
    RATE_LIMITED,
    ZONE_DENIED,
)

pytestmark = pytest.mark.integration

PUBLIC_TOKEN = "public-token-0123456789"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}
STREAM_CALLS = 200
KILL_AT_CALL = 50
# Each call waits at most ACCEPT_TIMEOUT_S (1 s) on a killed provider before it moves
# on, so the stream fails no call; allow none.
MAX_FAILED_CALLS = 0

A_NAME = "alpha"
A_CONFIG = f"""
[mesh]
preset = "local"
[node]
name = "{A_NAME}"
debug_api = true
[tools]
entry_points = false
[[tools.mounts]]
name = "time"
command = "{sys.executable}"
args = ["-m", "mcp_server_time", "--local-timezone", "UTC"]
[[tools.plugins]]
name = "add"
target = "tests.integration.plugin_tools:add"
[[tools.mounts]]
name = "bad"
command = "{sys.executable}"
args = ["{REPO_ROOT / "tests" / "node" / "tools" / "malformed_server.py"}"]
env = {{ MALFORMED_OMIT_RESULT_TYPE = "1" }}
"""

B_CONFIG = """
[mesh]
preset = "local"
[node]
debug_api = true
[tools]
entry_points = false
"""

C_CONFIG = f"""
[mesh]
preset = "local"
[node]
debug_api = true
[tools]
entry_points = false
[[mcp.tokens]]
name = "pub"
token = "{PUBLIC_TOKEN}"
zone = "public"
[limits.tools."limited.echo"]
rate_per_s = 1
burst = 2
"""


ToolPlan = list[tuple[str, str, str]]  # (node a/b/c, debug tool name, zone)


class Mesh:
    def __init__(self, a: NodeProcess, b: NodeProcess, c: NodeProcess) -> None:
        self.a, self.b, self.c = a, b, c

    @property
    def url(self) -> str:
        return self.c.url + "/mcp"

    def by_id(self, node_id: str) -> NodeProcess:
        return next(n for n in (self.a, self.b, self.c) if n.node_id == node_id)


def _start_three(base: Path, configs: tuple[str, str, str], tools: ToolPlan) -> Mesh:
    """Nodes a, b, c with `configs`, alive everywhere, with `tools` added by debug API;
    stops what it started if anything fails."""
    started: list[NodeProcess] = []
    try:
        for name, text in zip("abc", configs, strict=True):
            config = base / f"{name}.toml"
            config.write_text(text)
            node = NodeProcess(base / name, "--config", str(config))
            started.append(node.start(wait=False))
        for node in started:
            node.wait_ready()
        mesh = Mesh(*started)
        wait_mesh_states(started, {n.node_id: "alive" for n in started})
        for which, tool, zone in tools:
            node = getattr(mesh, which)
            assert node.post(f"/api/debug/tools?name={tool}&zone={zone}") == 200
        return mesh
    except BaseException:
        for node in started:
            print(f"--- log of {node.data_dir} ---\n{node.log_text()[-6000:]}")
            node.stop()
        raise


def _stop(mesh: Mesh) -> None:
    for node in (mesh.a, mesh.b, mesh.c):
        node.stop()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    three = _start_three(
        tmp_path_factory.mktemp("tools-mesh"),
        (A_CONFIG, B_CONFIG, C_CONFIG),
        [
            ("b", "b.echo", "public"),
            ("b", "ops.echo", "ops"),
            ("b", "limited.echo", "public"),
            ("a", "shared.echo", "public"),
            ("b", "shared.echo", "public"),
        ],
    )
    try:
        yield three
    finally:
        _stop(three)


async def _post(
    url: str, body: Any, *, headers: dict[str, str] | None = None, raw: bytes | None = None
) -> tuple[int, dict[str, Any], Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url,
            data=raw if raw is not None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **(headers or {})},
        ) as r,
    ):
        return r.status, dict(r.headers), await r.json(content_type=None)


def _modern(method: str, params: dict[str, Any], name: str | None = None) -> tuple[Any, Any]:
    headers = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method}
    if name is not None:
        headers["Mcp-Name"] = name
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "_meta": MODERN_META}}
    return body, headers


async def _call(url: str, tool: str, arguments: dict[str, Any], **kw: Any) -> Any:
    body, headers = _modern("tools/call", {"name": tool, "arguments": arguments}, tool)
    return await _post(url, body, headers={**headers, **kw.get("headers", {})})


async def _names(url: str) -> set[str]:
    body, headers = _modern("tools/list", {})
    _, _, reply = await _post(url, body, headers=headers)
    return {t["name"] for t in reply["result"]["tools"]}


EXPECTED = {"time.get_current_time", "time.convert_time", "add", "b.echo", "shared.echo"}


@pytest.fixture(scope="module")
def ready(mesh: Mesh) -> Mesh:
    async def listed() -> bool:
        registry = {t["name"] for t in mesh.c.get_json("/api/tools")["tools"]}
        return "ops.echo" in registry and EXPECTED | {"limited.echo"} <= await _names(mesh.url)

    asyncio.run(async_wait_for(listed, timeout_s=30, what="the tools of A and B listed at C"))
    return mesh


def _client(url: str, mode: str, token: str | None = None) -> AbstractAsyncContextManager[Client]:
    return sdk_client(url, mode, {"Authorization": f"Bearer {token}"} if token else None)


@pytest.mark.parametrize("mode", MODES)
async def test_sdk_client_at_c_lists_and_calls_tools_of_a_and_b(ready: Mesh, mode: str) -> None:
    async with _client(ready.url, mode) as client:
        tools = (await client.list_tools()).tools
        names = [t.name for t in tools]
        assert set(names) >= EXPECTED
        assert len(names) == len(set(names))  # shared.echo (A and B) is listed once
        assert "ops.echo" not in names  # loopback callers are "public"
        added = await client.call_tool("add", {"a": 20, "b": 22})
        assert added.structured_content == {"sum": 42}
        now = await client.call_tool("time.get_current_time", {"timezone": "UTC"})
        assert not now.is_error
        assert json.loads(now.content[0].text)["timezone"] == "UTC"  # type: ignore[union-attr]
        echoed = await client.call_tool("b.echo", {"hello": "mesh"})
        assert json.loads(echoed.content[0].text) == {"hello": "mesh"}  # type: ignore[union-attr]
        assert echoed.meta is not None and echoed.meta["vsmcp/provider"] == ready.b.node_id
    # The remote calls went as coalesced CALLS envelopes, and were counted at C.
    metrics = ready.c.get("/metrics")[1].decode()
    requested = re.search(r'vsmcp_mesh_calls_total\{event="requested"\} (\d+)', metrics)
    assert requested is not None and int(requested.group(1)) >= 3
    assert 'vsmcp_mesh_calls_total{event="calls_envelopes"}' in metrics


@pytest.mark.parametrize("mode", MODES)
async def test_a_call_pinned_to_a_node_runs_there(ready: Mesh, mode: str) -> None:
    """A and B both serve `shared.echo`: a pin (`_meta` `vsmcp/node`: node id, or the
    node's name, by default its id's last 8 characters) decides which one runs it, every
    time; C's own `echo` is reached by C's name."""
    async with _client(ready.url, mode) as client:
        for node, pin in (
            (ready.a, ready.a.node_id),
            (ready.b, ready.b.node_id[-8:]),
            (ready.a, ready.a.node_id[-12:]),
        ):
            for _ in range(3):
                echoed = await client.call_tool(
                    "shared.echo", {"pinned": pin}, meta={"vsmcp/node": pin}
                )
                assert not echoed.is_error
                assert echoed.meta is not None
                assert echoed.meta["vsmcp/provider"] == node.node_id, pin
        own = await client.call_tool(
            "echo", {"text": "at c"}, meta={"vsmcp/node": ready.c.node_id[-8:]}
        )
        assert own.content[0].text == "at c"  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", MODES)
async def test_a_call_from_c_pinned_by_a_s_name_runs_on_a(ready: Mesh, mode: str) -> None:
    """A announces its configured name: C pins `vsm.status` (every node has one) to it by
    that name, and A answers with its own id; C's /api/peers shows the name."""
    peers = {p["id"]: p for p in ready.c.get_json("/api/peers")["peers"]}
    assert peers[ready.a.node_id]["name"] == A_NAME
    assert peers[ready.b.node_id]["name"] == ready.b.node_id[-8:]  # none configured
    async with _client(ready.url, mode) as client:
        for node, pin in ((ready.a, A_NAME), (ready.b, ready.b.node_id[-8:]), (ready.c, None)):
            meta = None if pin is None else {"vsmcp/node": pin}
            status = await client.call_tool("vsm.status", {}, meta=meta)
            assert not status.is_error, pin
            text = status.content[0].text  # type: ignore[union-attr]
            assert json.loads(text)["node_id"] == node.node_id, pin
            provider = (status.meta or {}).get("vsmcp/provider", ready.c.node_id)
            assert provider == node.node_id, pin


@pytest.mark.parametrize("mode", MODES)
async def test_a_pin_to_no_such_node_is_a_clear_error(ready: Mesh, mode: str) -> None:
    async with _client(ready.url, mode) as client:
        with pytest.raises(MCPError) as unknown:
            await client.call_tool("shared.echo", {}, meta={"vsmcp/node": "no-such-node"})
        assert unknown.value.error.code == INVALID_PARAMS
        assert "pinned to node 'no-such-node': no such node in this mesh" in (
            unknown.value.error.message
        )
        # A known node that does not offer the tool: named, not failed over.
        with pytest.raises(MCPError) as absent:
            await client.call_tool("b.echo", {}, meta={"vsmcp/node": ready.a.node_id})
        assert absent.value.error.code == INVALID_PARAMS
        assert f"Tool 'b.echo' is not offered by node '{ready.a.node_id}'" in (
            absent.value.error.message
        )
        with pytest.raises(MCPError) as malformed:
            await client.call_tool("shared.echo", {}, meta={"vsmcp/node": 7})  # type: ignore[dict-item]
        assert malformed.value.error.code == INVALID_PARAMS
        assert "'vsmcp/node'" in malformed.value.error.message


@pytest.mark.parametrize("mode", MODES)
async def test_a_malformed_answer_of_a_mount_on_a_reaches_c_as_a_clear_error(
    ready: Mesh, mode: str
) -> None:
    """A mounts a server that accepts 2026-07-28 but answers in the 2025-11-25 shape,
    one of its tools with junk: through C, the junk is that call's error, named, every
    time; the mount's other tool answers; nothing is quarantined."""
    async with _client(ready.url, mode) as client:
        for _ in range(10):
            with pytest.raises(MCPError) as junk:
                await client.call_tool("bad.malformed", {})
            assert junk.value.error.code == PROVIDER_ERROR
            assert "malformed answer from mount 'bad': content: Input should be a valid list" in (
                junk.value.error.message
            )
            echoed = await client.call_tool("bad.echo", {"text": "fine"})
            assert echoed.content[0].text == "fine"  # type: ignore[union-attr]
        assert "bad.malformed" in {t.name for t in (await client.list_tools()).tools}


@pytest.mark.parametrize("mode", MODES)
async def test_zone_denial_names_the_policy(ready: Mesh, mode: str) -> None:
    async with _client(ready.url, mode, token=PUBLIC_TOKEN) as client:
        with pytest.raises(MCPError) as err:
            await client.call_tool("ops.echo", {})
    assert err.value.code == ZONE_DENIED
    assert "zone-order" in err.value.message
    assert err.value.data["policy"] == "zone-order"
    assert (err.value.data["zone"], err.value.data["tool_zone"]) == ("public", "ops")


async def test_rate_limit_at_the_entry_node_gives_retry_after(ready: Mesh) -> None:
    replies = [await _call(ready.url, "limited.echo", {"n": i}) for i in range(3)]
    assert [status for status, _, _ in replies[:2]] == [200, 200]
    status, headers, body = replies[2]
    assert status == 429
    assert headers["Retry-After"] == "1"
    assert body["error"]["code"] == RATE_LIMITED
    assert body["error"]["data"]["limit"] == "per-tool"
    assert 0 < body["error"]["data"]["retry_after_s"] <= 1.0


async def test_malformed_requests_unknown_tool_and_bad_arguments(ready: Mesh) -> None:
    status, _, body = await _post(ready.url, None, raw=b"{not json")
    assert (status, body["error"]["code"]) == (400, PARSE_ERROR)
    status, _, body = await _post(ready.url, None, raw=b"[]")
    assert (status, body["error"]["code"]) == (400, INVALID_REQUEST)
    status, _, body = await _post(ready.url, {"jsonrpc": "2.0", "id": 1})
    assert (status, body["error"]["code"]) == (400, INVALID_REQUEST)
    request, headers = _modern("tools/nope", {})
    status, _, body = await _post(ready.url, request, headers=headers)
    assert (status, body["error"]["code"]) == (404, METHOD_NOT_FOUND)
    status, _, body = await _call(ready.url, "no.such.tool", {})
    assert (status, body["error"]["code"]) == (400, INVALID_PARAMS)
    assert "no.such.tool" in body["error"]["message"]
    # Validated at C against the schema A announced, before anything crosses the mesh.
    status, _, body = await _call(ready.url, "add", {"a": "two", "b": 2})
    assert (status, body["error"]["code"]) == (400, INVALID_PARAMS)
    assert body["error"]["data"]["path"] == "arguments.a"


# The MCP Inspector CLI (npm), a second real client: installed by
# `npm ci --prefix tests/integration/inspector` (.ci/run does), with the Node 22 it needs.
INSPECTOR = REPO_ROOT / "tests" / "integration" / "inspector" / "node_modules" / ".bin"


def _inspector(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    if not (INSPECTOR / "mcp-inspector").exists():
        skip_or_fail("MCP Inspector CLI not installed: npm ci --prefix tests/integration/inspector")
    return subprocess.run(
        [str(INSPECTOR / "mcp-inspector"), "--cli", url, "--transport", "http", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{INSPECTOR}{os.pathsep}{os.environ.get('PATH', '')}"},
        timeout=120,
    )


def test_mcp_inspector_cli_at_c_lists_and_calls_tools_of_a_and_b(ready: Mesh) -> None:
    listed = _inspector(ready.url, "--method", "tools/list")
    assert listed.returncode == 0, listed.stderr
    assert {t["name"] for t in json.loads(listed.stdout)["tools"]} >= EXPECTED
    # A's plugin tool and B's debug tool, both through C.
    added = _inspector(
        ready.url, "--method", "tools/call", "--tool-name", "add", "--tool-arg", "a=2", "b=3"
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["structuredContent"] == {"sum": 5}
    echoed = _inspector(
        ready.url, "--method", "tools/call", "--tool-name", "b.echo", "--tool-arg", "text=hi"
    )
    assert echoed.returncode == 0, echoed.stderr
    assert json.loads(json.loads(echoed.stdout)["content"][0]["text"]) == {"text": "hi"}
    # Wrong arguments: C's schema check answers, and the Inspector shows it.
    wrong = _inspector(
        ready.url, "--method", "tools/call", "--tool-name", "add", "--tool-arg", "a=two", "b=3"
    )
    assert "arguments.a" in wrong.stdout + wrong.stderr, (wrong.stdout, wrong.stderr)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vsmcp.node.app.cli_tools", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )


def test_cli_lists_the_registry_and_calls_through_the_node(ready: Mesh) -> None:
    listed = _cli("tools", "--url", ready.c.url, "--json")
    assert listed.returncode == 0, listed.stderr
    providers = {(t["name"], t["provider"]) for t in json.loads(listed.stdout)}
    assert ("shared.echo", ready.a.node_id) in providers
    assert ("shared.echo", ready.b.node_id) in providers
    called = _cli("call", "add", "--arg", "a=2", "--json-args", '{"b": 3}', "--url", ready.c.url)
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout) == {"sum": 5}
    failed = _cli("call", "add", "--arg", "a=x", "--arg", "b=1", "--url", ready.c.url)
    assert failed.returncode == 1
    assert "-32602" in failed.stderr and "arguments.a" in failed.stderr


def _rows(lines: list[str]) -> set[tuple[str, str]]:
    """(name, provider) of `vsmcp tools` table rows (NAME ZONE STATE PROVIDER)."""
    return {(row.split()[0], row.split()[3]) for row in lines}


def test_cli_shows_the_offers_apart_from_the_tools(ready: Mesh) -> None:
    """`vsmcp tools`: the tools' table as before, then under OFFERS the offers tools
    (`vsm.mcp.*`, here every node's status resource `vsm.mcp.node`); `--offers` shows
    those alone; `--json` stays the list of tools."""
    nodes = {ready.a.node_id, ready.b.node_id, ready.c.node_id}

    def offered_by() -> set[str]:
        offers = ready.c.get_json("/api/tools")["offers"]
        return {o["provider"] for o in offers if o["name"].startswith("vsm.mcp.node")}

    wait_for(lambda: offered_by() == nodes, timeout_s=30, what="every node's offers at C")
    shown = _cli("tools", "--url", ready.c.url)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["TOOL", "ZONE", "STATE", "PROVIDER"]
    heading = next(i for i, line in enumerate(lines) if line.startswith("OFFERS "))
    assert lines[heading].split() == ["OFFERS", "ZONE", "STATE", "PROVIDER"]
    assert lines[heading - 1] == ""
    tools, offers = _rows(lines[1 : heading - 1]), _rows(lines[heading + 1 :])
    assert {("add", ready.a.node_id), ("shared.echo", ready.b.node_id)} <= tools
    assert not any(name.startswith("vsm.mcp.") for name, _ in tools)
    assert all(name.startswith("vsm.mcp.") for name, _ in offers)
    assert {p for name, p in offers if name.startswith("vsm.mcp.node")} == nodes

    alone = _cli("tools", "--offers", "--url", ready.c.url)
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.splitlines()[0].split()[0] == "OFFERS"
    assert _rows(alone.stdout.splitlines()[1:]) == offers
    as_json = _cli("tools", "--offers", "--json", "--url", ready.c.url)
    assert {(o["name"], o["provider"]) for o in json.loads(as_json.stdout)} == offers
    listed = json.loads(_cli("tools", "--json", "--url", ready.c.url).stdout)
    assert not any(t["name"].startswith("vsm.mcp.") for t in listed)
    assert {(t["name"], t["provider"]) for t in listed} == tools


@pytest.fixture
def own_mesh(tmp_path: Path) -> Iterator[Mesh]:
    """A mesh of its own: the test kills one of its nodes."""
    three = _start_three(
        tmp_path,
        (B_CONFIG, B_CONFIG, C_CONFIG),
        [("a", "shared.echo", "public"), ("b", "shared.echo", "public")],
    )
    try:
        yield three
    finally:
        _stop(three)


async def test_kill_the_provider_in_use_during_a_stream_of_calls(own_mesh: Mesh) -> None:
    """Asserted: all STREAM_CALLS sequential calls succeed, and after the kill they are
    served by the survivor. Why none may fail: a call to the killed provider gets no
    answer and no start ack within ACCEPT_TIMEOUT_S, so it fails over to the other
    provider; the killed one is then avoided (failure penalty, then breaker, then the
    membership verdict), so at most a few calls are slow, none fail."""
    ready = own_mesh

    async def both_listed() -> bool:
        providers = {
            t["provider"]
            for t in ready.c.get_json("/api/tools")["tools"]
            if t["name"] == "shared.echo"
        }
        return providers == {ready.a.node_id, ready.b.node_id}

    await async_wait_for(both_listed, timeout_s=30, what="shared.echo of A and B at C")
    failures = []
    served_by: list[str] = []
    victim: NodeProcess | None = None
    for i in range(STREAM_CALLS):
        if i == KILL_AT_CALL:
            victim = ready.by_id(served_by[-1])
            victim.kill()
            victim.wait_exit()
        status, _, body = await _call(ready.url, "shared.echo", {"i": i})
        if status != 200 or "result" not in body:
            failures.append((i, status, body))
            continue
        assert json.loads(body["result"]["content"][0]["text"]) == {"i": i}
        served_by.append(body["result"]["_meta"]["vsmcp/provider"])
    assert len(failures) <= MAX_FAILED_CALLS, failures
    assert victim is not None
    survivor = ready.a if victim is ready.b else ready.b
    assert set(served_by[KILL_AT_CALL:]) == {survivor.node_id}
    wait_mesh_states([ready.c], {victim.node_id: "dead"}, timeout_s=30)
    status, _, body = await _call(ready.url, "shared.echo", {"after": "verdict"})
    assert status == 200 and body["result"]["_meta"]["vsmcp/provider"] == survivor.node_id
