"""A mounted MCP server over Streamable HTTP: a real official-SDK server on loopback
(`tests/node/tools/meta_echo_server.py --http`, its own process) mounted by URL."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.polling import async_wait_until
from vsmcp.node.tools.config import MountConfig, ToolsConfig
from vsmcp.node.tools.errors import ToolUnavailable
from vsmcp.node.tools.model import CallContext
from vsmcp.node.tools.registry import LocalCatalog, build_local_catalog
from vsmcp.node.tools.supervisor import UnitState

REPO_ROOT = Path(__file__).resolve().parents[3]
SERVER_START_TIMEOUT_S = 30.0
LISTENING = "listening on "
HEADER = "x-vsmcp-mount-test"


@dataclass
class HttpServer:
    proc: asyncio.subprocess.Process
    url: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/", 1)[0])

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()


async def start_server(port: int = 0) -> HttpServer:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.node.tools.meta_echo_server",
        "--http",
        "--port",
        str(port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=REPO_ROOT,
    )
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(SERVER_START_TIMEOUT_S):
            while True:
                line = (await proc.stdout.readline()).decode()
                if not line:
                    raise AssertionError(f"HTTP MCP server exited: {''.join(seen)}")
                seen.append(line)
                if line.startswith(LISTENING):
                    return HttpServer(proc, line[len(LISTENING) :].strip())
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    srv = await start_server()
    try:
        yield srv
    finally:
        await srv.kill()


@contextlib.asynccontextmanager
async def mounted(url: str, *, mode: str = "auto") -> AsyncIterator[LocalCatalog]:
    mount = MountConfig(
        name="web",
        url=url,
        headers={HEADER: "mounted"},
        mode=mode,  # type: ignore[arg-type]
        health_interval_s=0.2,
    )
    cfg = ToolsConfig(mounts=[mount], entry_points=False)
    cfg.supervision.backoff_initial_s = 0.05
    cfg.supervision.backoff_max_s = 0.5
    # While the server is away the unit fails again and again: that is not a crash loop
    # of a bad server here, so no quarantine.
    cfg.supervision.crash_loop_failures = 10_000
    async with build_local_catalog(cfg) as catalog:
        await catalog.supervisor.wait_running(timeout_s=30)
        yield catalog


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_server_mounted_by_url_serves_its_tools_with_our_headers_and_context(
    server: HttpServer, mode: str
) -> None:
    async with mounted(server.url, mode=mode) as catalog:
        spec = catalog.spec("web.whoami")
        assert spec is not None and spec.provider == "mounted"
        ctx = CallContext(caller_id="t", caller_zone="public", origin="http:ci", causality=("c1",))
        result = await catalog.call_tool("web.whoami", {}, ctx)
    assert result["isError"] is False
    seen = result["structuredContent"]
    # Our configured header reached the server on the call itself...
    assert seen["headers"][HEADER] == "mounted"
    # ...and so did the call's context, in `_meta`, over HTTP as over stdio.
    assert seen["meta"]["vsmcp/traceId"] == ctx.trace_id
    assert seen["meta"]["vsmcp/causality"] == ["c1"]


async def test_a_url_mount_whose_server_goes_away_is_unavailable_then_comes_back(
    server: HttpServer,
) -> None:
    ctx = CallContext(caller_id="t", caller_zone="public", origin="test")
    async with mounted(server.url) as catalog:
        unit = catalog.supervisor.units["mount:web"]
        await server.kill()
        # The health probe over HTTP notices: the unit leaves RUNNING and calls are
        # refused as unavailable (never hang on a dead server).
        await async_wait_until(
            lambda: unit.state is not UnitState.RUNNING, timeout_s=20, what="unit not running"
        )
        with pytest.raises(ToolUnavailable):
            await catalog.call_tool("web.whoami", {}, ctx)
        again = await start_server(server.port)
        try:
            await async_wait_until(
                lambda: unit.state is UnitState.RUNNING, timeout_s=30, what="running again"
            )
            result = await catalog.call_tool("web.whoami", {}, ctx)
            assert result["isError"] is False
            assert unit.restarts >= 1
        finally:
            await again.kill()
