"""Mesh tool-call benchmark: client -> C -> A -> C -> client beside the same tool on A.

    python benchmarks/bench_mesh_call.py [--quick]

Starts two real `vsmcpd` processes on loopback (A offers a debug echo tool, C offers
nothing and routes to A), then from this process sends stateless 2026-07-28 JSON-RPC
`tools/call` POSTs with aiohttp (one keep-alive connection per caller):

- latency: sequential calls, alternating direct-on-A and through-C, p50/p99 of each
  and the difference (what the mesh hop adds);
- throughput: `--callers` concurrent callers (keep-alive, one call in flight each),
  spread over `--client-processes` processes of a lean load generator
  (`_http_load.py`), for a fixed time, direct on A and through C, `--runs` times each
  (median reported); plus the CPU time each node process and the generator used per
  call (from /proc), which depends far less on the machine's load than wall-clock
  figures.

Client, C and A share the machine's cores. By default (`--pin`, with at least 2 CPUs) the
node under test gets CPU 0 to itself (A for the direct path, C for the mesh path) and
the other node, this process and the generator share the rest, as when the node under
test runs on its own host; `--no-pin` leaves placement to the kernel.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from _http_load import drive_processes
from _machine import machine
from _mesh import start_pair

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


async def throughput(url: str, args: argparse.Namespace, pids: list[int]) -> dict[str, Any]:
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    params = {"name": TOOL, "arguments": {"pad": "x" * 64}, "_meta": META}
    headers = {**HEADERS, "Accept": "application/json, text/event-stream"}
    per_process = max(1, args.callers // args.client_processes)

    def run(seconds: float) -> tuple[float, float]:
        return drive_processes(
            host,
            int(port),
            "/mcp",
            headers,
            params,
            processes=args.client_processes,
            callers_per_process=per_process,
            seconds=seconds,
        )

    await asyncio.to_thread(run, 0.5)  # warm up
    runs = []
    for _ in range(args.runs):
        cpu0 = [cpu_s(p) for p in pids]
        rate, client_us = await asyncio.to_thread(run, args.seconds)
        calls = rate * args.seconds
        cpu = [round((cpu_s(p) - c) / calls * 1e6) for p, c in zip(pids, cpu0, strict=True)]
        runs.append({"calls_per_s": rate, "cpu_us_per_call": cpu, "client_us": round(client_us)})
    in_order = [round(r["calls_per_s"]) for r in runs]
    runs.sort(key=lambda r: r["calls_per_s"])
    median = runs[len(runs) // 2]
    return {**median, "all": in_order}


def pin(pid: int, cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of `pid` (threads made later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


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
        a, c = start_pair(base, base / "node.toml", base / "node.toml")
        try:
            assert a.post(f"/api/debug/tools?name={TOOL}&zone=public") == 200
            direct, mesh = a.url + "/mcp", c.url + "/mcp"
            pinned = args.pin and (os.cpu_count() or 1) >= 2
            rest = set(range(1, os.cpu_count() or 2))
            if pinned:
                os.sched_setaffinity(0, rest)  # this process and the generators it forks
            await wait_listed(mesh)
            lat = await latency(direct, mesh, args.calls)
            print(f"machine: {machine()}")
            print(
                "placement: "
                + (
                    f"node under test on CPU 0; the other node and the client on {sorted(rest)}"
                    if pinned
                    else "the kernel's choice"
                )
            )
            for name in ("direct", "mesh"):
                print(
                    f"latency {name:6}: p50 {pct(lat[name], 0.5):.3f} ms  "
                    f"p99 {pct(lat[name], 0.99):.3f} ms  (n={len(lat[name])})"
                )
            added = [m - d for m, d in zip(lat["mesh"], lat["direct"], strict=True)]
            print(f"added by the mesh hop: p50 {statistics.median(added) * 1000:.3f} ms")
            for name, url, tested, other in (("direct", direct, a, c), ("mesh", mesh, c, a)):
                if pinned:
                    pin(tested.pid, {0})
                    pin(other.pid, rest)
                t = await throughput(url, args, [a.pid, c.pid])
                cpu_a, cpu_c = t["cpu_us_per_call"]
                print(
                    f"throughput {name:6}: {t['calls_per_s']:.0f} calls/s (median of "
                    f"{t['all']}) with {args.callers} callers in {args.client_processes} "
                    f"processes; CPU per call: A {cpu_a} us, C {cpu_c} us, "
                    f"load generator {t['client_us']} us"
                )
        finally:
            c.stop()
            a.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls, shorter runs")
    parser.add_argument("--callers", type=int, default=64, help="concurrent callers in all")
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument("--runs", type=int, help="throughput runs per path (default 3; 1 quick)")
    parser.add_argument(
        "--pin", action=argparse.BooleanOptionalAction, default=True, help="give C its own CPU"
    )
    args = parser.parse_args()
    args.calls = 300 if args.quick else 3000
    args.seconds = 3.0 if args.quick else 8.0
    args.runs = args.runs or (1 if args.quick else 3)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
