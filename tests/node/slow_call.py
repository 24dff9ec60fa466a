"""Cancel a running call of the sample plugins' `slow` tool through an MCP SDK client."""

from __future__ import annotations

import anyio
from mcp.client.client import Client

from tests.node.tools import sample_plugins
from tests.polling import async_wait_until


async def cancel_once_started(client: Client, *, timeout_s: float = 10.0) -> None:
    """Call `slow` through `client`, cancel the call once the tool runs, and return when
    the tool itself has seen the cancellation (wherever in the mesh it runs)."""
    started = len(sample_plugins.STARTED)
    cancelled = len(sample_plugins.CANCELLED)
    with anyio.move_on_after(2 * timeout_s) as scope:
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                await client.call_tool("slow", {"steps": 0, "hold_s": 60})

            tg.start_soon(call)
            await async_wait_until(
                lambda: len(sample_plugins.STARTED) > started, what="call started"
            )
            tg.cancel_scope.cancel()
    assert not scope.cancelled_caught
    await async_wait_until(
        lambda: len(sample_plugins.CANCELLED) > cancelled,
        timeout_s=timeout_s,
        what="cancellation where the tool runs",
    )
