"""Time to refuse a shed call at `/mcp` (issue #11: ≤ 2 ms p99).

    python benchmarks/bench_refusal.py [--quick]

Starts one real `vsmcpd` with `[vsm.concurrency]` bounded to a limit of 2 (a `normal`
call may use 80 % of it: one slot) and keeps that slot taken by long `critical` calls
(never refused, counted in flight) of the plugin tool `work`. Every further `normal` call is then
refused for load (`overloaded`, HTTP 503 + Retry-After). Two phases:

1. sequential: one keep-alive connection, one refused call at a time — the cost of the
   refusal path itself;
2. surge: `--callers` connections refused back to back at once — refusals competing
   with each other for the node's event loop, as under a 4× surge.

Each refusal is timed twice: by the client (the HTTP round trip on loopback, the
client's own parsing included) and by the node (`vsmcp_mcp_refusal_seconds`, from the
`/mcp` handler's start to its answer; buckets 0.1–100 ms, p99 read as the first bucket
holding 99 % of the phase's refusals). The client is the lean HTTP/1.1 caller of
`_http_load.py` (one request in flight per connection), so it costs the node's two
cores as little as possible.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _http_load import _Connection, _request
from _machine import machine
from bench_overload import APP_TOKEN, BASE_CONFIG, CRIT_TOKEN, node_buckets, node_summary, pct

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.harness import NodeProcess, tool_call_message

CONFIG = (
    BASE_CONFIG
    + """
[vsm.concurrency]
min_limit = 1
initial_limit = 2
max_limit = 2
"""
)
HOLD_MS = 9_000  # each holding call (the tool's maximum is 10 s, its timeout 30 s)
HOLDERS = 3


class Refuser:
    """Keep-alive connections that send the same refused `tools/call`."""

    def __init__(self, node: NodeProcess) -> None:
        self.host, port = node.url.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)
        body, headers = tool_call_message(APP_TOKEN, "work", {"service_ms": 1, "capacity": 1})
        self.request = _request(self.host, self.port, "/mcp", headers, json.dumps(body).encode())

    async def run(self, callers: int, seconds: float) -> list[float]:
        loop = asyncio.get_running_loop()
        latencies: list[float] = []
        stop_at = time.perf_counter() + seconds

        async def caller() -> None:
            _, conn = await loop.create_connection(_Connection, self.host, self.port)
            assert conn.transport is not None
            try:
                while time.perf_counter() < stop_at:
                    conn.waiter = loop.create_future()
                    t0 = time.perf_counter()
                    conn.transport.write(self.request)
                    response = await conn.waiter
                    latencies.append(time.perf_counter() - t0)
                    if not response.startswith(b"HTTP/1.1 503") or b"-32012" not in response:
                        raise RuntimeError(f"not refused for load: {response[:300]!r}")
            finally:
                conn.transport.close()

        await asyncio.gather(*(caller() for _ in range(callers)))
        return latencies


async def hold_the_slot(node: NodeProcess) -> list[asyncio.Task[None]]:
    """Keep the limit's `normal` slot taken: `HOLDERS` loops of `critical` calls (never
    refused for load, counted in flight) of `HOLD_MS` each, started `HOLD_MS / HOLDERS`
    apart so that one is always running."""
    loop = asyncio.get_running_loop()
    host, port = node.url.removeprefix("http://").rsplit(":", 1)
    body, headers = tool_call_message(
        CRIT_TOKEN,
        "work",
        {"service_ms": HOLD_MS, "capacity": 1000},
        {"vsmcp/priority": "critical"},
    )
    request = _request(host, int(port), "/mcp", headers, json.dumps(body).encode())

    async def holder() -> None:
        _, conn = await loop.create_connection(_Connection, host, int(port))
        assert conn.transport is not None
        try:
            while True:
                conn.waiter = loop.create_future()
                conn.transport.write(request)
                await conn.waiter
        finally:
            conn.transport.close()

    tasks = []
    for k in range(HOLDERS):
        tasks.append(asyncio.create_task(holder(), name=f"holder-{k}"))
        await asyncio.sleep(HOLD_MS / HOLDERS / 1000)
    return tasks


async def phase(node: NodeProcess, name: str, callers: int, seconds: float) -> dict[str, Any]:
    before = node_buckets(node)
    latencies = await Refuser(node).run(callers, seconds)
    row = {
        "phase": name,
        "callers": callers,
        "refusals_per_s": round(len(latencies) / seconds, 1),
        "client_p50_ms": round(pct(latencies, 50) * 1000, 3),
        "client_p99_ms": round(pct(latencies, 99) * 1000, 3),
        "client_max_ms": round(max(latencies) * 1000, 3),
        "node": node_summary(before, node_buckets(node)),
    }
    print(json.dumps(row), flush=True)
    return row


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-refusal-") as tmp:
        config = Path(tmp) / "node.toml"
        config.write_text(CONFIG)
        node = NodeProcess(Path(tmp) / "node", "--config", str(config)).start()
        try:
            holders = await hold_the_slot(node)
            await Refuser(node).run(1, 1.0)  # warm up
            rows = [
                await phase(node, "sequential", 1, args.seconds),
                await phase(node, "surge", args.callers, args.seconds),
            ]
            lag = node.get_json("/api/vsm")["s3"]["overload"]["loop_lag_ms"]
            for task in holders:
                task.cancel()
            await asyncio.gather(*holders, return_exceptions=True)
        finally:
            node.stop()
    return {"machine": machine(), "phases": rows, "node_loop_lag_ms": lag}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--callers", type=int, default=32)
    args = parser.parse_args()
    if args.quick:
        args.seconds = 3.0
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
