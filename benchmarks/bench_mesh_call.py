"""Mesh tool-call benchmark: client -> C -> A -> C -> client beside the same tool on A.

    python benchmarks/bench_mesh_call.py [--quick]

Starts two real `vsmcpd` processes on loopback (A offers a debug echo tool, C offers
nothing and routes to A), then from this process sends stateless 2026-07-28 JSON-RPC
`tools/call` POSTs with aiohttp (one keep-alive connection per caller):

- latency: sequential calls, alternating direct-on-A and through-C, p50/p99 of each
  and the difference (what the mesh hop adds);
- throughput: `--callers` concurrent callers for a fixed time, direct on A and through
  C; plus the CPU time each node process used per call (from /proc), which depends
  far less on the machine's load than wall-clock figures.

Client, C and A share the machine's cores: on a 2-core box the client alone takes a
large share, so throughput here is a floor for what one node does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from _machine import machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.harness import NodeProcess, wait_mesh_states

TOOL = "bench.echo"
CONFIG = '[mesh]\npreset = "local"\n[node]\ndebug_api = true\nlog_level = "warning"\n'
HEADERS = {
    "Content-Type": "application/json",
    "MCP-Protocol-Version": "2026-07-28",
    "Mcp-Method": "tools/call",
    "Mcp-Name": TOOL,
}
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


def body(i: int) -> bytes:
    params = {"name": TOOL, "arguments": {"i": i, "pad": "x" * 64}, "_meta": META}
    return json.dumps(
        {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": params}
    ).encode()


async def call(session: aiohttp.ClientSession, url: str, i: int) -> None:
    async with session.post(url, data=body(i), headers=HEADERS) as r:
        reply = await r.json()
    if r.status != 200 or "result" not in reply:
        raise RuntimeError(f"call failed: {r.status} {reply}")


async def latency(direct: str, mesh: str, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"direct": [], "mesh": []}
    async with aiohttp.ClientSession() as session:
        for i in range(n // 10):  # warm up both paths
            await call(session, direct, i)
            await call(session, mesh, i)
        for i in range(n):
            for name, url in (("direct", direct), ("mesh", mesh)):
                t0 = time.perf_counter()
                await call(session, url, i)
                out[name].append(time.perf_counter() - t0)
    return out


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(url: str, callers: int, seconds: float, pids: list[int]) -> dict[str, Any]:
    done = 0
    stop_at = 0.0

    async def caller(k: int) -> None:
        nonlocal done
        async with aiohttp.ClientSession() as session:
            i = 0
            while time.perf_counter() < stop_at:
                await call(session, url, k * 1_000_000 + i)
                i += 1
                done += 1

    stop_at = time.perf_counter() + 0.5
    await asyncio.gather(*(caller(k) for k in range(callers)))  # warm up
    done = 0
    cpu0 = [cpu_s(p) for p in pids]
    t0 = time.perf_counter()
    stop_at = t0 + seconds
    await asyncio.gather(*(caller(k) for k in range(callers)))
    elapsed = time.perf_counter() - t0
    cpu = [cpu_s(p) - c for p, c in zip(pids, cpu0, strict=True)]
    return {
        "calls_per_s": done / elapsed,
        "cpu_us_per_call": [round(c / done * 1e6) for c in cpu],
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def wait_listed(url: str) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                await call(session, url, 0)
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-mesh-call-") as tmp:
        base = Path(tmp)
        (base / "node.toml").write_text(CONFIG)
        a = NodeProcess(base / "a", "--config", str(base / "node.toml"), "--no-mdns")
        a.start()
        c = NodeProcess(
            base / "c",
            "--config",
            str(base / "node.toml"),
            "--no-mdns",
            "--seed",
            f"{a.node_id}@127.0.0.1:{a.mesh_port}",
        )
        c.start()
        try:
            wait_mesh_states([a, c], {a.node_id: "alive", c.node_id: "alive"})
            assert a.post(f"/api/debug/tools?name={TOOL}&zone=public") == 200
            direct, mesh = a.url + "/mcp", c.url + "/mcp"
            await wait_listed(mesh)
            lat = await latency(direct, mesh, args.calls)
            print(f"machine: {machine()}")
            for name in ("direct", "mesh"):
                print(
                    f"latency {name:6}: p50 {pct(lat[name], 0.5):.3f} ms  "
                    f"p99 {pct(lat[name], 0.99):.3f} ms  (n={len(lat[name])})"
                )
            added = [m - d for m, d in zip(lat["mesh"], lat["direct"], strict=True)]
            print(f"added by the mesh hop: p50 {statistics.median(added) * 1000:.3f} ms")
            for name, url in (("direct", direct), ("mesh", mesh)):
                t = await throughput(url, args.callers, args.seconds, [a.pid, c.pid])
                cpu_a, cpu_c = t["cpu_us_per_call"]
                print(
                    f"throughput {name:6}: {t['calls_per_s']:.0f} calls/s with {args.callers} "
                    f"callers; CPU per call: A {cpu_a} us, C {cpu_c} us"
                )
        finally:
            c.stop()
            a.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls, shorter runs")
    parser.add_argument("--callers", type=int, default=32)
    args = parser.parse_args()
    args.calls = 300 if args.quick else 3000
    args.seconds = 2.0 if args.quick else 8.0
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
