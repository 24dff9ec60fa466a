"""Sampling round trip through the mesh vs direct: what the mesh adds to a provider's
server-to-client request.

    python benchmarks/bench_client_requests.py [--quick] [--calls N]

Starts two real `vsmcpd` processes on loopback: A loads the plugin tools `plugin.ask`
(one `sampling/createMessage` to the calling client, answered by the client's callback)
and `add` (no request); C offers nothing and routes to A. The official SDK client
(2025-11-25 session, sampling callback) in this process calls, sequentially and
alternating, each tool directly on A and through C:

- `ask` direct vs mesh: a call with one sampling round trip;
- `add` direct vs mesh: the same call without one (what the call's own mesh hop costs);
- the sampling round trip's own share of the mesh's cost:
  (mesh ask - mesh add) - (direct ask - direct add), per alternation, median.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import mcp_types as types
from _machine import machine
from _mesh import start_pair

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.sdk_client import sdk_client

A_CONFIG = """
[mesh]
preset = "local"
[node]
log_level = "warning"
[tools]
entry_points = false
[[tools.plugins]]
name = "plugin.ask"
target = "tests.integration.asking_plugin:ask"
[[tools.plugins]]
name = "add"
target = "tests.integration.plugin_tools:add"
"""
C_CONFIG = '[mesh]\npreset = "local"\n[node]\nlog_level = "warning"\n'
PATHS = ("direct", "mesh")
CALLS = {"ask": ("plugin.ask", {"question": "q"}), "add": ("add", {"a": 1, "b": 2})}


async def _sampling(context: Any, params: types.CreateMessageRequestParams) -> Any:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text="a"), model="bench"
    )


async def measure(direct: str, mesh: str, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {f"{c} {p}": [] for c in CALLS for p in PATHS}
    async with AsyncExitStack() as stack:
        clients = {
            path: await stack.enter_async_context(
                sdk_client(url, "legacy", sampling_callback=_sampling)
            )
            for path, url in (("direct", direct), ("mesh", mesh))
        }
        for i in range(n + n // 10):
            for kind, (tool, arguments) in CALLS.items():
                for path, client in clients.items():
                    t0 = time.perf_counter()
                    result = await client.call_tool(tool, arguments)
                    elapsed = time.perf_counter() - t0
                    if result.is_error:
                        raise RuntimeError(f"{tool} via {path} failed: {result}")
                    if i >= n // 10:  # the first tenth warms up
                        out[f"{kind} {path}"].append(elapsed)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def wait_listed(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            async with sdk_client(url, "legacy", sampling_callback=_sampling) as client:
                result = await client.call_tool("plugin.ask", {"question": "ready?"})
                if not result.is_error:
                    return
        except Exception:  # not listed yet: try again until the deadline
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-client-requests-") as tmp:
        base = Path(tmp)
        (base / "a.toml").write_text(A_CONFIG)
        (base / "c.toml").write_text(C_CONFIG)
        a, c = start_pair(base, base / "a.toml", base / "c.toml")
        try:
            direct, mesh = a.url + "/mcp", c.url + "/mcp"
            await wait_listed(mesh)
            lat = await measure(direct, mesh, args.calls)
        finally:
            c.stop()
            a.stop()
    print(f"machine: {machine()}")
    for name, values in lat.items():
        print(
            f"{name:10}: p50 {pct(values, 0.5):.3f} ms  p99 {pct(values, 0.99):.3f} ms  "
            f"(n={len(values)})"
        )
    for kind in CALLS:
        added = [m - d for m, d in zip(lat[f"{kind} mesh"], lat[f"{kind} direct"], strict=True)]
        print(f"mesh adds to {kind}: p50 {statistics.median(added) * 1000:.3f} ms")
    share = [
        (ma - mb) - (da - db)
        for ma, mb, da, db in zip(
            lat["ask mesh"], lat["add mesh"], lat["ask direct"], lat["add direct"], strict=True
        )
    ]
    print(
        f"mesh adds to the sampling round trip itself: p50 {statistics.median(share) * 1000:.3f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls")
    parser.add_argument("--calls", type=int, help="calls per tool and path (default 500)")
    args = parser.parse_args()
    args.calls = args.calls or (100 if args.quick else 500)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
