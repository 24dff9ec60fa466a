"""A real external MCP server (`mcp-server-time`, stdio) mounted as local tools."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.polling import async_wait_until
from tests.skips import require_module
from vsmcp.node.tools.config import MountConfig, ToolsConfig
from vsmcp.node.tools.model import CallContext
from vsmcp.node.tools.registry import LocalCatalog, build_local_catalog
from vsmcp.node.tools.supervisor import UnitState

CTX = CallContext(caller_id="t", caller_zone="public", origin="test")
REPO_ROOT = Path(__file__).resolve().parents[3]


def time_mount(**kw: object) -> MountConfig:
    require_module("mcp_server_time")  # only the tests that mount it need it
    return MountConfig(
        name="time",
        command=sys.executable,
        args=["-m", "mcp_server_time", "--local-timezone", "UTC"],
        health_interval_s=0.2,
        **kw,  # type: ignore[arg-type]
    )


def children_running(module: str) -> list[int]:
    """PIDs of our child processes whose command line mentions `module`."""
    me = str(os.getpid())
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if fields[1] == me and module.encode() in cmdline and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


@pytest.fixture
async def catalog() -> AsyncIterator[LocalCatalog]:
    cfg = ToolsConfig(mounts=[time_mount()], entry_points=False)
    cfg.supervision.backoff_initial_s = 0.05
    async with build_local_catalog(cfg) as cat:
        await cat.supervisor.wait_running(timeout_s=30)
        yield cat


async def test_mounted_tools_are_namespaced_and_callable(catalog: LocalCatalog) -> None:
    names = [t.name for t in catalog.list_tools(CTX)]
    assert "time.get_current_time" in names
    spec = catalog.spec("time.get_current_time")
    assert spec is not None and spec.provider == "mounted"
    result = await catalog.call_tool("time.get_current_time", {"timezone": "UTC"}, CTX)
    assert result["isError"] is False
    assert "UTC" in result["content"][0]["text"]


async def test_killed_server_is_restarted_and_its_tools_come_back(catalog: LocalCatalog) -> None:
    unit = catalog.supervisor.units["mount:time"]
    [pid] = children_running("mcp_server_time")
    os.kill(pid, signal.SIGKILL)
    await async_wait_until(lambda: unit.restarts >= 1, timeout_s=20, what="restart")
    await async_wait_until(
        lambda: unit.state is UnitState.RUNNING and children_running("mcp_server_time"),
        timeout_s=30,
        what="running again with a new process",
    )
    assert children_running("mcp_server_time") != [pid]
    assert unit.last_error is not None
    result = await catalog.call_tool("time.get_current_time", {"timezone": "UTC"}, CTX)
    assert result["isError"] is False


async def test_stop_terminates_the_child() -> None:
    cfg = ToolsConfig(mounts=[time_mount(namespace="")], entry_points=False)
    async with build_local_catalog(cfg) as cat:
        await cat.supervisor.wait_running(timeout_s=30)
        assert "get_current_time" in [t.name for t in cat.list_tools(CTX)]
        assert children_running("mcp_server_time")
    assert children_running("mcp_server_time") == []


async def test_the_call_context_reaches_the_mounted_server_in_meta() -> None:
    mount = MountConfig(
        name="meta",
        command=sys.executable,
        args=["-m", "tests.node.tools.meta_echo_server"],
        cwd=str(REPO_ROOT),
    )
    cfg = ToolsConfig(mounts=[mount], entry_points=False)
    async with build_local_catalog(cfg) as catalog:
        await catalog.supervisor.wait_running(timeout_s=30)
        ctx = CallContext(
            caller_id="t", caller_zone="public", origin="http:ci", causality=("a1", "b2")
        )
        result = await catalog.call_tool("meta.whoami", {}, ctx)
    meta = result["structuredContent"]["meta"]
    assert meta["vsmcp/traceId"] == ctx.trace_id
    assert meta["vsmcp/causality"] == ["a1", "b2"]
    assert meta["vsmcp/origin"] == "http:ci"
