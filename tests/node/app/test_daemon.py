"""vsmcpd's in-process pieces (the process itself is tested in tests/integration)."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import aiohttp

from vsmcp.node.app.daemon import GC_GEN0_THRESHOLD, event_loop_runner, tune_gc


def test_tune_gc_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 0
        # Cycles made after start-up are still collected.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_the_event_loop_follows_the_config() -> None:
    import uvloop

    assert event_loop_runner("asyncio") is asyncio.run
    assert event_loop_runner("auto") is uvloop.run
    assert event_loop_runner("uvloop") is uvloop.run


def test_under_uvloop_the_node_serves_a_call(tmp_path: Path) -> None:
    # The daemon's default loop, in process: one call through the gateway.
    from vsmcp.node.app.config import load_config
    from vsmcp.node.app.node import Node

    config = load_config(
        environ={},
        overrides={
            "node.data_dir": str(tmp_path),
            "node.dev": True,
            "http.port": 0,
            "mesh.port": 0,
            "mesh.mdns": False,
        },
    )

    async def one_call() -> tuple[str, dict[str, object]]:
        async with Node(config) as node, aiohttp.ClientSession() as session:
            loop_name = node.status()["event_loop"]
            async with session.post(
                f"http://127.0.0.1:{node.http_port}/mcp",
                json={
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "tools/call",
                    "params": {
                        "name": "echo",
                        "arguments": {"text": "hi"},
                        "_meta": {
                            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                            "io.modelcontextprotocol/clientCapabilities": {},
                        },
                    },
                },
                headers={
                    "MCP-Protocol-Version": "2026-07-28",
                    "Mcp-Method": "tools/call",
                    "Mcp-Name": "echo",
                },
            ) as response:
                return str(loop_name), await response.json()

    loop_name, reply = event_loop_runner("uvloop")(one_call())  # type: ignore[func-returns-value]
    assert loop_name == "uvloop"
    assert reply["result"]["content"][0]["text"] == "hi"  # type: ignore[index]
