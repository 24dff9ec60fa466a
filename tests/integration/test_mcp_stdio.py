"""`vsmcp mcp-stdio`: the official SDK's stdio client reaches a running node's tools."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import StdioServerParameters
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError

from tests.integration.harness import REPO_ROOT, NodeProcess
from tests.integration.test_client_requests import _sampling
from tests.polling import async_wait_for

pytestmark = pytest.mark.integration


def _bridge(*args: str) -> StdioServerParameters:
    """How an MCP client spawns `vsmcp mcp-stdio ARGS`."""
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "vsmcp.node.app.cli", "mcp-stdio", *args],
        cwd=str(REPO_ROOT),
    )


async def test_stdio_bridge_lists_and_calls_the_nodes_tools(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    node = NodeProcess(tmp_path / "n", "--no-mdns")
    nodes.append(node)
    node.start()
    params = _bridge("--url", node.url)
    for mode in ("auto", "legacy"):
        async with Client(params, mode=mode) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"echo", "vsm.status", "vsm.peers", "vsm.tools"} <= names
            result = await client.call_tool("echo", {"text": f"through stdio ({mode})"})
            assert result.content[0].text == f"through stdio ({mode})"  # type: ignore[union-attr]
            with pytest.raises(MCPError) as err:
                await client.call_tool("no.such.tool", {})
            assert err.value.code == -32602
            assert "no.such.tool" in err.value.message


def test_stdio_bridge_without_a_node_fails_clearly(tmp_path: Path) -> None:
    from tests.integration.harness import run_cli

    result = run_cli("mcp-stdio", "--data-dir", str(tmp_path / "nothing"))
    assert result.returncode == 2
    assert "no running node found" in result.stderr


def _node_with_ops_tool(tmp_path: Path, name: str, stdio_zone: str) -> NodeProcess:
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'[mcp]\nstdio_zone = "{stdio_zone}"\nloopback_zone = "public"\n'
        '[[tools.plugins]]\nname = "add"\ntarget = "tests.integration.plugin_tools:add"\n'
        'zone = "ops"\n'
    )
    return NodeProcess(tmp_path / name, "--no-mdns", "--config", str(config))


async def _call_add(*bridge_args: str) -> int | tuple[int, object]:
    """The sum through a `vsmcp mcp-stdio` bridge, or (error code, the caller zone the node saw)."""
    params = _bridge(*bridge_args)
    async with Client(params, mode="auto") as client:
        try:
            result = await client.call_tool("add", {"a": 2, "b": 3})
        except MCPError as e:
            data = e.data if isinstance(e.data, dict) else {}
            return e.code, data.get("zone")
    assert result.structured_content is not None, result
    return int(result.structured_content["sum"])


async def test_stdio_clients_get_the_nodes_stdio_zone(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    public = _node_with_ops_tool(tmp_path, "public", stdio_zone="public")
    ops = _node_with_ops_tool(tmp_path, "ops", stdio_zone="ops")
    nodes += [public, ops]
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        node.wait_ready()

    # mcp.stdio_zone = public: a stdio client may not call an ops tool.
    assert await _call_add("--data-dir", str(public.data_dir)) == (-32010, "public")
    # mcp.stdio_zone = ops: it may (the zone the node decided, not the bridge).
    assert await _call_add("--data-dir", str(ops.data_dir)) == 5
    # A bridge that cannot show the node's stdio secret (--url alone: any local process
    # could do that) is a plain loopback client, whatever it calls itself.
    assert await _call_add("--url", ops.url) == (-32010, "public")


async def test_stdio_bridge_passes_logs_and_sampling_to_its_client(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """A tool's log line and sampling request reach the stdio client through the bridge
    (and the node's /mcp), and the client's answer reaches the tool."""
    import mcp_types as types

    config = tmp_path / "asking.toml"
    config.write_text(
        '[[tools.plugins]]\nname = "plugin.ask"\ntarget = "tests.integration.asking_plugin:ask"\n'
    )
    node = NodeProcess(tmp_path / "n", "--no-mdns", "--config", str(config))
    nodes.append(node)
    node.start()
    logs: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    params = _bridge("--url", node.url)
    async with Client(
        params, mode="legacy", sampling_callback=_sampling, logging_callback=on_log
    ) as client:
        await client.set_logging_level("info")
        result = await client.call_tool("plugin.ask", {"question": "via stdio?"})
        assert not result.is_error, result
        assert result.content[0].text == "plugin heard: echo of via stdio?"  # type: ignore[union-attr]

        async def logged() -> bool:
            return any(p.data == "plugin asks" for p in logs)

        await async_wait_for(logged, timeout_s=20, what="the plugin's log line at the client")


OFFERS_SERVER = REPO_ROOT / "tests" / "integration" / "offers_server.py"
GREETING = "data://greeting"
# The bridge refreshes the node's lists every 5 s; the mount its own every 0.5 s.
LISTED_S = 60.0


def _node_with_updating_resources(tmp_path: Path, mcp: str = "") -> NodeProcess:
    """A node mounting the offers server in 2025-11-25, where it takes subscriptions
    and its `docs.touch` tool sends an update of a URI to its subscribers (`mcp`: lines
    of its `[mcp]` table)."""
    config = tmp_path / "offers.toml"
    config.write_text(
        f"[mcp]\n{mcp}\n"
        "[tools]\nentry_points = false\n[[tools.mounts]]\n"
        f'name = "docs"\ncommand = "{sys.executable}"\nargs = ["{OFFERS_SERVER}", "--updates"]\n'
        'mode = "legacy"\nhealth_interval_s = 0.5\n'
    )
    return NodeProcess(tmp_path / "n", "--no-mdns", "--config", str(config))


async def _subscribers(client: Client, uri: str) -> int:
    """How many subscribers of `uri` the server told it changed (`docs.touch`)."""
    result = await client.call_tool("docs.touch", {"uri": uri})
    assert result.structured_content is not None, result
    return int(result.structured_content["result"])


async def _touched(client: Client, uri: str) -> None:
    """Touch `uri` until the server has a subscriber to tell: the subscription reaches it
    in the background (the stdio gateway, the bridge's listen at the node, the mount)."""

    async def told() -> bool:
        return await _subscribers(client, uri) > 0

    await async_wait_for(told, timeout_s=LISTED_S, what=f"the server subscribed to {uri}")


async def _untouched(client: Client, uri: str) -> None:
    """Wait until the subscription's end has reached the server through the same chain."""

    async def gone() -> bool:
        return await _subscribers(client, uri) == 0

    await async_wait_for(gone, timeout_s=LISTED_S, what=f"the server unsubscribed from {uri}")


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_stdio_clients_get_resource_updates_and_list_changes(
    tmp_path: Path, nodes: list[NodeProcess], mode: str
) -> None:
    """Through `vsmcp mcp-stdio`, in both revisions: the node's resources are listed and
    read, a subscribed resource's update reaches the client as
    `notifications/resources/updated` of that URI (2025-11-25: `resources/subscribe`;
    2026-07-28: a listen's `resourceSubscriptions`), its end (unsubscribe, the listen
    closed) reaches the server, and a resource appearing on the node reaches the client
    as `notifications/resources/list_changed`."""
    import mcp_types as types
    from mcp.client.subscriptions import ResourcesListChanged, ResourceUpdated

    node = _node_with_updating_resources(tmp_path)
    nodes.append(node)
    node.start()
    params = _bridge("--url", node.url)
    seen: asyncio.Queue[Any] = asyncio.Queue()

    async def on_message(message: Any) -> None:
        seen.put_nowait(message)

    async def next_seen(kind: type) -> Any:
        while not isinstance(message := await seen.get(), kind):
            pass
        return message

    note = f"note://{mode}"

    async def listed(uri: str) -> bool:
        return uri in {str(r.uri) for r in (await client.list_resources()).resources}

    async with Client(params, mode=mode, cache=None, message_handler=on_message) as client:
        resources = client.server_capabilities.resources
        assert resources is not None and resources.subscribe is True
        await async_wait_for(
            lambda: listed(GREETING), timeout_s=LISTED_S, what="the node's resources"
        )
        read = await client.read_resource(GREETING)
        assert getattr(read.contents[0], "text", None) == "hello from the offers server"
        add = {"name": mode, "text": "hi"}
        if mode == "legacy":
            await client.subscribe_resource(GREETING)
            await _touched(client, GREETING)
            update = await asyncio.wait_for(next_seen(types.ResourceUpdatedNotification), LISTED_S)
            assert str(update.params.uri) == GREETING
            await client.unsubscribe_resource(GREETING)
            await _untouched(client, GREETING)
            await client.call_tool("docs.add_note", add)
            changed = types.ResourceListChangedNotification
            # One may come from the start too (the bridge's first lists): the note comes
            # with one, as over HTTP (test_offers_mesh).
            while True:
                await asyncio.wait_for(next_seen(changed), LISTED_S)
                if await listed(note):
                    break
        else:
            async with client.listen(resource_subscriptions=[GREETING]) as stream:
                assert stream.honored.resource_subscriptions == [GREETING]
                await _touched(client, GREETING)
                event = await asyncio.wait_for(anext(stream), LISTED_S)
                assert event == ResourceUpdated(uri=GREETING)
            await _untouched(client, GREETING)  # the listen's end, at the server
            async with client.listen(resources_list_changed=True) as stream:
                assert stream.honored.resources_list_changed
                await client.call_tool("docs.add_note", add)
                while True:
                    event = await asyncio.wait_for(anext(stream), LISTED_S)
                    assert isinstance(event, ResourcesListChanged)
                    if await listed(note):
                        break


async def test_stdio_subscriptions_past_the_nodes_listener_cap_all_get_updates(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """More URIs subscribed through one bridge than the node lets a caller hold listens
    (16) and than one listen holds (16): the bridge holds them on as few listens at the
    node as it can, and every one of them brings its updates to the client."""
    from mcp.client.subscriptions import ResourceUpdated

    node = _node_with_updating_resources(tmp_path)
    nodes.append(node)
    node.start()
    uris = [f"colour://c{i}" for i in range(20)]
    async with (
        Client(_bridge("--url", node.url), mode="auto", cache=None) as client,
        client.listen(resource_subscriptions=uris[:12]) as first,
        client.listen(resource_subscriptions=uris[12:]) as second,
    ):
        assert first.honored.resource_subscriptions == uris[:12]
        assert second.honored.resource_subscriptions == uris[12:]
        for uri in uris:
            # Acknowledged once the node holds it; the node's own subscription reaches
            # the server in the background, after its acknowledgement.
            await _touched(client, uri)
        updated: set[str] = set()
        for stream, part in ((first, uris[:12]), (second, uris[12:])):
            while not set(part) <= updated:
                event = await asyncio.wait_for(anext(stream), LISTED_S)
                assert isinstance(event, ResourceUpdated)
                updated.add(event.uri)
        assert updated == set(uris)


async def test_stdio_subscriptions_the_node_refuses_reach_the_client(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """A node that lets a caller hold one listen, held by another bridge: a second
    bridge's subscription cannot be held, and its client is told (2025-11-25: the
    subscribe's error; 2026-07-28: the listen's), not acknowledged and dropped."""
    node = _node_with_updating_resources(tmp_path, "max_listeners_per_caller = 1")
    nodes.append(node)
    node.start()
    params = _bridge("--url", node.url)
    async with Client(params, mode="legacy", cache=None) as holder:
        await holder.subscribe_resource(GREETING)  # the caller's one listen at the node
        await _touched(holder, GREETING)
        async with Client(params, mode="legacy", cache=None) as refused:
            with pytest.raises(MCPError) as err:
                await refused.subscribe_resource("colour://red")
            assert err.value.code == -32015
            assert "notification streams" in err.value.message, err.value.message
        async with Client(params, mode="auto", cache=None) as refused:
            with pytest.raises(MCPError) as err:
                async with refused.listen(resource_subscriptions=["colour://red"]):
                    pass
            assert err.value.code == -32015
        assert await _subscribers(holder, "colour://red") == 0
        assert await _subscribers(holder, GREETING) == 1  # the holder's goes on


class _RawBridge:
    """`vsmcp mcp-stdio` spoken to in raw lines (what the SDK client would not send)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self.proc, self.stdin, self.stdout, self.stderr = proc, proc.stdin, proc.stdout, proc.stderr

    @classmethod
    async def start(cls, url: str) -> _RawBridge:
        bridge = _bridge("--url", url)
        pipe = asyncio.subprocess.PIPE
        proc = await asyncio.create_subprocess_exec(
            bridge.command, *bridge.args, cwd=bridge.cwd, stdin=pipe, stdout=pipe, stderr=pipe
        )
        return cls(proc)

    async def ask(self, request_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
        import json

        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        self.stdin.write(json.dumps(message).encode() + b"\n")
        while True:
            answer: dict[str, Any] = json.loads(
                await asyncio.wait_for(self.stdout.readline(), LISTED_S)
            )
            if answer.get("id") == request_id:
                return answer

    async def end(self) -> tuple[int, str]:
        """stdin closed (if still open): its exit code and what it wrote on stderr."""
        if not self.stdin.is_closing():
            self.stdin.close()
        code = await asyncio.wait_for(self.proc.wait(), 30)
        return code, (await self.stderr.read()).decode()


async def test_stdio_bridge_answers_a_request_the_sdk_refuses_as_the_node_does(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """`completion/complete` with an empty `argument` (raw lines: the SDK client would
    not send it): the bridge's SDK refuses it by its types, and the stdio client gets
    the node's answer to the same, a provider error (-32015), not an internal error."""
    node = _node_with_updating_resources(tmp_path)
    nodes.append(node)
    node.start()
    bridge = await _RawBridge.start(node.url)
    try:
        await bridge.ask(1, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {}})

        async def prompts_listed() -> bool:
            return bool((await bridge.ask(2, "prompts/list", {}))["result"]["prompts"])

        await async_wait_for(prompts_listed, timeout_s=LISTED_S, what="the node's prompts")
        ref = {"type": "ref/prompt", "name": "review"}
        answer = await bridge.ask(3, "completion/complete", {"ref": ref, "argument": {}})
        assert answer["error"]["code"] == -32015, answer
        assert "name: Field required" in answer["error"]["message"]
        good = {"ref": ref, "argument": {"name": "style", "value": "t"}}
        assert (await bridge.ask(4, "completion/complete", good))["result"]["completion"]["values"]
    finally:
        _, stderr = await bridge.end()
    assert "Traceback" not in stderr


async def test_stdio_bridge_whose_node_dies_exits_with_one_line(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """The node killed under a bridge holding a subscription: the bridge exits non-zero
    by itself, saying so in one line on stderr, no traceback."""
    import signal

    node = _node_with_updating_resources(tmp_path)
    nodes.append(node)
    node.start()
    bridge = await _RawBridge.start(node.url)
    await bridge.ask(1, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {}})

    async def listed() -> bool:
        return bool((await bridge.ask(2, "resources/list", {}))["result"]["resources"])

    await async_wait_for(listed, timeout_s=LISTED_S, what="the node's resources")
    assert (await bridge.ask(3, "resources/subscribe", {"uri": GREETING}))["result"] == {}
    assert node.proc is not None
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait()
    # Not stdin's end: the bridge leaves because its node is gone (the tool list's
    # refresh, every 5 s, or the subscription's listen finds it so).
    code = await asyncio.wait_for(bridge.proc.wait(), LISTED_S)
    _, stderr = await bridge.end()
    assert code != 0
    assert "Traceback" not in stderr, stderr
    lost = [line for line in stderr.splitlines() if "lost the connection to the node" in line]
    assert len(lost) == 1, stderr
