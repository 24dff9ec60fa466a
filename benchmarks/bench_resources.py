"""`resources/read` of a 1 MB resource: through the mesh vs direct.

    python benchmarks/bench_resources.py [--reads N] [--bytes B]

Starts two real `vsmcpd` processes on loopback: A mounts the official-SDK server
`tests/integration/offers_server.py` (stdio) whose `data://big` is `--bytes` of text, C
offers nothing of its own. The official SDK client (2025-11-25 over Streamable HTTP, or
stdio for the server itself) reads `data://big` `--reads` times in turn on each path:

- direct: the server itself over stdio (no vsmcp);
- A: A's /mcp (the mount's hop: gateway -> mount -> server);
- C: C's /mcp (the mesh hop on top: C -> A over the signed mesh -> server).

Reported per path: p50 and p99 latency of one read (the client's parse of 1 MB
included on every path) and the throughput of sequential reads (MB/s at the mean).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from _machine import machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from tests.integration.harness import alive_mesh
from tests.integration.sdk_client import sdk_client
from tests.polling import async_wait_for

SERVER = Path(__file__).resolve().parent.parent / "tests" / "integration" / "offers_server.py"
URI = "data://big"
MESH = '[mesh]\npreset = "local"\n[tools]\nentry_points = false\n'


def _a_config(size: int) -> str:
    return (
        f'{MESH}[[tools.mounts]]\nname = "docs"\ncommand = "{sys.executable}"\n'
        f'args = ["{SERVER}", "--big", "{size}"]\n'
    )


async def _timed(read: Callable[[], Awaitable[int]], reads: int, size: int) -> list[float]:
    assert await read() == size  # warm-up, and the answer is whole
    times = []
    for _ in range(reads):
        start = time.perf_counter()
        got = await read()
        times.append(time.perf_counter() - start)
        assert got == size
    return times


def _reader(client: Client) -> Callable[[], Awaitable[int]]:
    async def read() -> int:
        result = await client.read_resource(URI)
        return len(getattr(result.contents[0], "text", ""))

    return read


def _row(path: str, times: list[float], size: int) -> str:
    ordered = sorted(times)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    mb_s = size / statistics.mean(ordered) / 1e6
    return f"| {path} | {p50:.1f} ms | {p99:.1f} ms | {mb_s:.1f} MB/s |"


async def _run(urls: dict[str, str], reads: int, size: int) -> list[str]:
    rows = []
    params = StdioServerParameters(command=sys.executable, args=[str(SERVER), "--big", str(size)])
    async with Client(stdio_client(params), mode="legacy", cache=None) as direct:
        rows.append(
            _row("direct (stdio, no vsmcp)", await _timed(_reader(direct), reads, size), size)
        )
    for path, url in urls.items():
        async with sdk_client(url, "legacy") as client:

            async def listed(c: Client = client) -> bool:
                return URI in {str(r.uri) for r in (await c.list_resources()).resources}

            await async_wait_for(listed, timeout_s=60, what=f"{URI} listed at {path}")
            rows.append(_row(path, await _timed(_reader(client), reads, size), size))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reads", type=int, default=50)
    parser.add_argument("--bytes", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        configs = {"a": _a_config(args.bytes), "c": MESH}
        with alive_mesh(Path(tmp), configs) as (a, c):
            urls = {"A's /mcp (mount hop)": a.url + "/mcp", "C's /mcp (mesh hop)": c.url + "/mcp"}
            rows = asyncio.run(_run(urls, args.reads, args.bytes))
    print(f"resources/read of {args.bytes} bytes, {args.reads} sequential reads per path")
    print("| path | p50 | p99 | throughput |\n|---|---|---|---|")
    print("\n".join(rows))
    print("\n" + machine())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
