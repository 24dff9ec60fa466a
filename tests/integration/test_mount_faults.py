"""A real `vsmcpd` with a misbehaving mounted server (tests/node/tools/faulty_server.py).

SIGTERM ends the node (exit 0) and every process of the mount, whether the mount never
answered `initialize` or a call to it hangs; a 50 MB answer fails that call only and
the node's memory comes back; the mount's stderr cannot forge the node's log lines.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import pytest
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.integration.harness import REPO_ROOT, NodeProcess, wait_mesh_states
from tests.polling import async_wait_for, async_wait_until, wait_for
from vsmcp.node.mcp.protocol import TOOL_TIMEOUT

pytestmark = pytest.mark.integration

SERVER = REPO_ROOT / "tests" / "node" / "tools" / "faulty_server.py"
# Generous: the bound is 5 s (README); before the fix the node was alive at 55 s.
EXIT_DEADLINE_S = 20.0
# The node's memory after a 50 MB answer: back within this of where it was.
RSS_MARGIN_BYTES = 25 << 20
FAKE_LINE = "2026-12-06T06:00:00.000Z ERROR   node.daemon: forged by the mount"


def config(
    pid_file: Path, *, env: dict[str, str] | None = None, extra: str = "", start_timeout_s: int = 60
) -> str:
    env_items = {"FAULTY_PID_FILE": str(pid_file), "FAULTY_CHILD": "1", **(env or {})}
    env_toml = ", ".join(f"{k} = {json.dumps(v)}" for k, v in env_items.items())
    return f"""
[mesh]
preset = "local"
[tools]
entry_points = false
timeout_s = 120
{extra}
[[tools.mounts]]
name = "f"
command = {json.dumps(sys.executable)}
args = [{json.dumps(str(SERVER))}]
env = {{ {env_toml} }}
start_timeout_s = {start_timeout_s}
"""


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    try:
        yield started
    finally:
        for node in started:
            node.stop()


def start_node(
    tmp_path: Path, started: list[NodeProcess], text: str, *args: str, name: str = "node"
) -> tuple[NodeProcess, Path]:
    config_path = tmp_path / f"{name}.toml"
    config_path.write_text(text)
    node = NodeProcess(tmp_path / name, "--config", str(config_path), "--no-mdns", *args)
    started.append(node)
    node.start()
    return node, tmp_path / "pids"


def read_pids(path: Path) -> list[int] | None:
    try:
        return [int(p) for p in path.read_text().split()]
    except FileNotFoundError:
        return None


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def assert_stops_cleanly(node: NodeProcess, pids: list[int]) -> None:
    node.terminate()
    try:
        code = node.wait_exit(timeout_s=EXIT_DEADLINE_S)
    except Exception:
        print(node.log_text()[-4000:])
        raise
    assert code == 0, node.log_text()[-4000:]
    # Stopped by itself, not by the shutdown watchdog.
    assert "did not finish within" not in node.log_text()
    # The mount's server and its child (which ignores SIGTERM) are gone too.
    wait_for(lambda: not any(alive(p) for p in pids), timeout_s=10, what="mount processes gone")


@asynccontextmanager
async def mcp_client(node: NodeProcess) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(300.0)) as http:
        transport = streamable_http_client(node.url + "/mcp", http_client=http)
        async with Client(transport, cache=None) as client:
            yield client


async def tool_names(client: Client) -> list[str]:
    return [t.name for t in (await client.list_tools()).tools]


async def wait_for_tool(client: Client, name: str) -> None:
    async def listed() -> bool:
        return name in await tool_names(client)

    await async_wait_for(listed, timeout_s=60, what=f"tool {name}")


def test_sigterm_with_a_mount_that_never_initializes(
    tmp_path: Path, node_factory: list[NodeProcess]
) -> None:
    node, pid_file = start_node(
        tmp_path,
        node_factory,
        config(tmp_path / "pids", env={"FAULTY_NO_INIT": "1"}, start_timeout_s=2),
    )
    pids = wait_for(lambda: read_pids(tmp_path / "pids"), timeout_s=30, what="mount pids")
    assert len(pids) == 2
    # The hang is logged, naming the mount and its command.
    wait_for(
        lambda: "did not initialize within 2 s" in node.log_text(),
        timeout_s=30,
        what="start timeout logged",
    )
    assert str(SERVER) in node.log_text()
    # A restarted server writes new pids: take the latest before stopping.
    assert_stops_cleanly(node, read_pids(pid_file) or pids)


async def test_sigterm_with_a_call_in_flight_to_a_hung_tool(
    tmp_path: Path, node_factory: list[NodeProcess]
) -> None:
    node, pid_file = start_node(tmp_path, node_factory, config(tmp_path / "pids"))
    async with mcp_client(node) as client:
        await wait_for_tool(client, "f.hang")
        call = asyncio.create_task(client.call_tool("f.hang", {}))
        hang_marker = Path(str(pid_file) + ".hang")
        await async_wait_until(hang_marker.exists, timeout_s=30, what="hang started")
        pids = read_pids(pid_file)
        assert pids is not None and len(pids) == 2
        node.terminate()
        # The caller is told why its call ended.
        with pytest.raises(MCPError, match="shutting down"):
            await asyncio.wait_for(call, timeout=EXIT_DEADLINE_S)
    await asyncio.to_thread(assert_stops_cleanly, node, pids)


async def test_sigterm_with_a_plugin_call_blocked_in_its_thread(
    tmp_path: Path, node_factory: list[NodeProcess]
) -> None:
    plugin = """
[[tools.plugins]]
name = "block"
target = "tests.integration.plugin_tools:block"
"""
    node, pid_file = start_node(tmp_path, node_factory, config(tmp_path / "pids", extra=plugin))
    marker = tmp_path / "blocked"
    async with mcp_client(node) as client:
        await wait_for_tool(client, "f.echo")
        pids = read_pids(pid_file)
        assert pids is not None
        call = asyncio.create_task(client.call_tool("block", {"marker": str(marker)}))
        await async_wait_until(marker.exists, timeout_s=30, what="plugin blocked")
        node.terminate()
        with pytest.raises(MCPError, match="shutting down"):
            await asyncio.wait_for(call, timeout=EXIT_DEADLINE_S)
    # The node stopped cleanly; the thread that never returns does not keep it alive.
    await asyncio.to_thread(assert_stops_cleanly, node, pids)
    assert "threads of tool calls still run" in node.log_text()


async def test_sigterm_at_the_entry_node_with_a_call_waiting_on_another_node(
    tmp_path: Path, node_factory: list[NodeProcess]
) -> None:
    provider, pid_file = start_node(tmp_path, node_factory, config(tmp_path / "pids"), name="a")
    entry_config = "[mesh]\npreset = 'local'\n[tools]\nentry_points = false\ntimeout_s = 120\n"
    seed = f"{provider.node_id}@127.0.0.1:{provider.mesh_port}"
    entry, _ = start_node(tmp_path, node_factory, entry_config, "--seed", seed, name="b")
    wait_mesh_states([provider, entry], {provider.node_id: "alive", entry.node_id: "alive"})
    async with mcp_client(entry) as client:
        await wait_for_tool(client, "f.hang")
        call = asyncio.create_task(client.call_tool("f.hang", {}))
        hang_marker = Path(str(pid_file) + ".hang")
        await async_wait_until(hang_marker.exists, timeout_s=30, what="hang started on a")
        entry.terminate()
        with pytest.raises(MCPError, match="shutting down"):
            await asyncio.wait_for(call, timeout=EXIT_DEADLINE_S)
    assert await asyncio.to_thread(entry.wait_exit, EXIT_DEADLINE_S) == 0


async def test_a_50mb_answer_fails_that_call_and_the_mount_stays(
    tmp_path: Path, node_factory: list[NodeProcess]
) -> None:
    node, _ = start_node(tmp_path, node_factory, config(tmp_path / "pids"))
    async with mcp_client(node) as client:
        await wait_for_tool(client, "f.big")
        warm = await client.call_tool("f.big", {"mb": 1})
        assert warm.is_error is False
        before = rss_bytes(node.pid)
        with pytest.raises(MCPError, match=r"answered \d+ bytes, over the cap of 4194304 bytes"):
            await client.call_tool("f.big", {"mb": 50})
        # The mount's other tools answer at once: the connection was not restarted.
        echo = await client.call_tool("f.echo", {"text": "still here"})
        assert echo.is_error is False
        assert "still here" in str(echo.content)

        async def memory_back() -> int | None:
            rss = rss_bytes(node.pid)
            return rss if rss < before + RSS_MARGIN_BYTES else None

        await async_wait_for(memory_back, timeout_s=30, what=f"RSS back near {before}")
    metrics = node.get("/metrics")[1].decode()
    assert 'vsmcp_mount_oversized_answers_total{mount="f"} 1.0' in metrics
    assert "restarting" not in node.log_text()


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_mount_stderr_cannot_forge_log_lines(
    tmp_path: Path, node_factory: list[NodeProcess], log_format: str
) -> None:
    node, _ = start_node(
        tmp_path, node_factory, config(tmp_path / "pids"), "--log-format", log_format
    )
    payload = f"{FAKE_LINE}\n\x1b[2J{FAKE_LINE}\r\n"
    async with mcp_client(node) as client:
        await wait_for_tool(client, "f.inject")
        result = await client.call_tool("f.inject", {"text": payload})
        assert result.is_error is False
    wait_for(lambda: "\\x1b[2J" in node.log_text(), timeout_s=30, what="escaped stderr logged")
    lines = node.log_text().splitlines()
    assert not any(line.startswith(FAKE_LINE) for line in lines), "a forged line got through"
    assert not any("\x1b" in line for line in lines)
    if log_format == "text":
        assert any(line.endswith(f"mount f stderr: {FAKE_LINE}") for line in lines)
        assert any(line.endswith(f"mount f stderr: \\x1b[2J{FAKE_LINE}") for line in lines)
    else:
        records = [json.loads(line) for line in lines if line.startswith("{")]
        stderr = [r["stderr"] for r in records if r.get("mount") == "f" and "stderr" in r]
        assert stderr[:2] == [FAKE_LINE, f"\\x1b[2J{FAKE_LINE}"]
        # Every log line is a JSON record (the one plain "ready" line for scripts aside).
        assert all(line.startswith(("{", "vsmcpd ready")) for line in lines if line), lines
    node.terminate()
    assert node.wait_exit(timeout_s=EXIT_DEADLINE_S) == 0


def test_a_missing_mount_command_is_logged_with_its_path(
    tmp_path: Path, node_factory: list[NodeProcess]
) -> None:
    missing = tmp_path / "no-such-server"
    text = config(tmp_path / "pids").replace(json.dumps(sys.executable), json.dumps(str(missing)))
    node, _ = start_node(tmp_path, node_factory, text)
    wait_for(
        lambda: f"cannot start {str(missing)!r}: No such file or directory" in node.log_text(),
        timeout_s=30,
        what="the missing command logged",
    )
    node.signal(signal.SIGTERM)
    assert node.wait_exit(timeout_s=EXIT_DEADLINE_S) == 0


MALFORMED_SERVER = REPO_ROOT / "tests" / "node" / "tools" / "malformed_server.py"


def malformed_config(omit_result_type: bool) -> str:
    env = '{ MALFORMED_OMIT_RESULT_TYPE = "1" }' if omit_result_type else "{}"
    return f"""
[mesh]
preset = "local"
[tools]
entry_points = false
[tools.supervision]
crash_loop_failures = 3
[[tools.mounts]]
name = "m"
command = {json.dumps(sys.executable)}
args = [{json.dumps(str(MALFORMED_SERVER))}]
env = {env}
"""


@pytest.mark.parametrize("omit_result_type", [False, True], ids=["2026-shape", "2025-shape"])
async def test_malformed_answers_cost_their_calls_not_the_mount(
    tmp_path: Path, node_factory: list[NodeProcess], omit_result_type: bool
) -> None:
    """A hand-written server under the default mode = "auto": 10 malformed answers on
    one tool each fail with a clear error (more than the 3 faults that would quarantine
    it), the mount's other tools keep answering, nothing restarts. A server that
    accepts 2026-07-28 but answers in the 2025-11-25 shape (no `resultType`) works."""
    node, _ = start_node(tmp_path, node_factory, malformed_config(omit_result_type))
    async with mcp_client(node) as client:
        await wait_for_tool(client, "m.malformed")
        for _ in range(10):
            with pytest.raises(MCPError, match="malformed answer from mount 'm': content: Input"):
                await client.call_tool("m.malformed", {})
            echo = await client.call_tool("m.echo", {"text": "still here"})
            assert echo.is_error is False
            assert echo.content[0].text == "still here"  # type: ignore[union-attr]
        assert "m.malformed" in await tool_names(client)  # not quarantined
    metrics = node.get("/metrics")[1].decode()
    assert 'vsmcp_mount_malformed_answers_total{mount="m"} 10.0' in metrics
    fallbacks = 1 if omit_result_type else 0
    assert f'vsmcp_mount_protocol_fallbacks_total{{mount="m"}} {fallbacks}.0' in metrics
    log = node.log_text()
    assert "restarting" not in log and "quarantined" not in log


async def test_junk_a_hang_and_a_death_cost_only_their_own_calls(
    tmp_path: Path, node_factory: list[NodeProcess]
) -> None:
    """One mount, under the default mode: while a call hangs (until its 3 s timeout),
    a call that makes the server write junk on stdout and plain calls answer; a call
    that kills the server fails, and the mount's tools answer again once it restarted."""
    text = config(tmp_path / "pids").replace("timeout_s = 120", "timeout_s = 3")
    node, _ = start_node(tmp_path, node_factory, text)
    async with mcp_client(node) as client:
        await wait_for_tool(client, "f.hang")
        hung = asyncio.create_task(client.call_tool("f.hang", {}))
        await async_wait_until(
            Path(str(tmp_path / "pids") + ".hang").exists, timeout_s=30, what="hang started"
        )
        after_junk = await client.call_tool("f.garbage", {})
        assert after_junk.content[0].text == "after garbage"  # type: ignore[union-attr]
        assert (await client.call_tool("f.echo", {"text": "beside"})).is_error is False
        with pytest.raises(MCPError) as timed_out:
            await hung
        assert timed_out.value.error.code == TOOL_TIMEOUT
        with pytest.raises(MCPError, match="connection closed"):
            await client.call_tool("f.crash", {})

        async def echo_back() -> bool:
            try:
                return (await client.call_tool("f.echo", {"text": "back"})).is_error is False
            except MCPError:
                return False  # restarting: refused with a retry-after, as it should

        await async_wait_for(echo_back, timeout_s=60, what="the mount answering again")
    metrics = node.get("/metrics")[1].decode()
    assert 'vsmcp_mount_garbage_lines_total{mount="f"} 1.0' in metrics
