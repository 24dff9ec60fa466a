"""A mounted server whose answers do not validate (`malformed_server.py`, written by
hand): one bad answer costs that call only — never a fault, a restart or a quarantine —
and a server that accepts 2026-07-28 but answers in the 2025-11-25 shape works under
the default `mode = "auto"`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.node.tools.test_mounted_faults import accepts, free_port
from tests.polling import async_wait_until, wait_for
from vsmcp.node.tools.config import MountConfig, ToolsConfig
from vsmcp.node.tools.errors import ProviderError
from vsmcp.node.tools.model import CallContext
from vsmcp.node.tools.mounted import MountedServer
from vsmcp.node.tools.registry import LocalCatalog, build_local_catalog
from vsmcp.node.tools.supervisor import UnitState

CTX = CallContext(caller_id="t", caller_zone="public", origin="test")
SERVER = Path(__file__).with_name("malformed_server.py")
BAD_CALLS = 10
OMIT_RESULT_TYPE = {"MALFORMED_OMIT_RESULT_TYPE": "1"}


@asynccontextmanager
async def _catalog(**mount: Any) -> AsyncIterator[LocalCatalog]:
    """A catalog mounting the server (stdio, unless `url` is given)."""
    if "url" not in mount:
        mount.update(command=sys.executable, args=[str(SERVER)])
    cfg = ToolsConfig(
        mounts=[MountConfig(name="m", health_interval_s=0.2, **mount)],
        entry_points=False,
    )
    cfg.supervision.crash_loop_failures = 3  # fewer than BAD_CALLS: a fault would show
    async with build_local_catalog(cfg) as catalog:
        await catalog.supervisor.wait_running(timeout_s=30)
        yield catalog


def _mount(catalog: LocalCatalog) -> MountedServer:
    provider = catalog.supervisor.units["mount:m"].provider
    assert isinstance(provider, MountedServer)
    return provider


async def _echo(catalog: LocalCatalog, text: str) -> str:
    result = await catalog.call_tool("m.echo", {"text": text}, CTX)
    assert result["isError"] is False, result
    return str(result["content"][0]["text"])


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_malformed_answers_fail_those_calls_only(mode: str) -> None:
    async with _catalog(mode=mode) as catalog:
        unit = catalog.supervisor.units["mount:m"]
        for _ in range(BAD_CALLS):
            with pytest.raises(ProviderError) as junk:
                await catalog.call_tool("m.malformed", {}, CTX)
            assert "malformed answer from mount 'm': content: Input should be a valid list" in (
                junk.value.message
            )
            with pytest.raises(ProviderError) as refused:
                await catalog.call_tool("m.bad_structured", {}, CTX)
            assert "'not a number' is not of type 'integer'" in refused.value.message
            assert await _echo(catalog, "still here") == "still here"
        assert _mount(catalog).stats.malformed_answers == 2 * BAD_CALLS
        # Not a fault of the tools or of the mount: nothing restarted or quarantined.
        assert unit.state is UnitState.RUNNING
        assert unit.restarts == 0
        names = {spec.name for spec in catalog.list_tools(CTX)}
        assert {"m.echo", "m.malformed", "m.bad_structured"} <= names
        with pytest.raises(ProviderError):  # the 11th bad call is refused the same way
            await catalog.call_tool("m.malformed", {}, CTX)


async def test_a_2026_server_answering_in_the_2025_shape_works_under_auto() -> None:
    """Its `tools/call` answers carry no `resultType` (required by 2026-07-28): the
    first is read as the 2025-11-25 result it is, and the mount reconnects speaking
    2025-11-25; calls made meanwhile wait for the new connection instead of failing."""
    async with _catalog(env=OMIT_RESULT_TYPE) as catalog:
        mount = _mount(catalog)
        assert await _echo(catalog, "first") == "first"
        answers = await asyncio.gather(*(_echo(catalog, f"during {i}") for i in range(5)))
        assert answers == [f"during {i}" for i in range(5)]
        await async_wait_until(
            lambda: mount._client is not None and mount._client.protocol_version == "2025-11-25",
            timeout_s=30,
            what="the mount reconnected in 2025-11-25",
        )
        assert await _echo(catalog, "after") == "after"
        assert mount.stats.fallbacks == 1
        assert mount.stats.malformed_answers == 0
        # Still checked: a bad answer in the older shape is malformed all the same.
        with pytest.raises(ProviderError, match="not of type 'integer'"):
            await catalog.call_tool("m.bad_structured", {}, CTX)
        assert catalog.supervisor.units["mount:m"].restarts == 0


async def test_a_listing_in_the_2025_shape_falls_back_at_start() -> None:
    async with _catalog(env={"MALFORMED_OMIT_RESULT_TYPE": "all"}) as catalog:
        mount = _mount(catalog)
        assert mount._client is not None and mount._client.protocol_version == "2025-11-25"
        assert await _echo(catalog, "x") == "x"
        assert mount.stats.fallbacks == 1
        unit = catalog.supervisor.units["mount:m"]
        assert unit.restarts == 0 and unit.state is UnitState.RUNNING


async def test_a_legacy_mount_never_falls_back() -> None:
    async with _catalog(mode="legacy", env=OMIT_RESULT_TYPE) as catalog:
        mount = _mount(catalog)
        assert mount._client is not None and mount._client.protocol_version == "2025-11-25"
        assert await _echo(catalog, "x") == "x"
        assert mount.stats.fallbacks == 0


@pytest.fixture
def http_url() -> Iterator[str]:
    """The server over Streamable HTTP, answering in the 2025-11-25 shape."""
    port = free_port()
    env = {**os.environ, "MALFORMED_HTTP_PORT": str(port), **OMIT_RESULT_TYPE}
    proc = subprocess.Popen([sys.executable, str(SERVER)], env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: accepts(port) or proc.poll() is not None, timeout_s=30, what="listening")
        assert proc.poll() is None, "the HTTP test server exited"
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.kill()
        proc.wait()


async def test_over_http_too(http_url: str) -> None:
    """As the MCP conformance project's reference server answers over HTTP: 2026-07-28
    accepted, `tools/call` without `resultType`; malformed answers cost their calls."""
    async with _catalog(url=http_url) as catalog:
        mount = _mount(catalog)
        assert await _echo(catalog, "first") == "first"
        for _ in range(BAD_CALLS):
            with pytest.raises(ProviderError, match="content: Input should be a valid list"):
                await catalog.call_tool("m.malformed", {}, CTX)
            assert await _echo(catalog, "beside") == "beside"
        assert mount.stats.fallbacks == 1
        assert mount.stats.malformed_answers == BAD_CALLS
        assert catalog.supervisor.units["mount:m"].restarts == 0
