"""The status page's cost: mesh-call throughput with and without 10 open page clients.

    python benchmarks/bench_page.py [--quick]

The mesh-call benchmark's setup (benchmarks/bench_mesh_call.py: A offers a debug echo
tool, C routes to it, C pinned to CPU 0 by default; here the lan membership preset) and
its throughput run through C, alternately with no page client and with `--clients` (10)
page clients on C, each as a browser's page is: `GET /api/stream` held open and read as
it arrives, plus the page's periodic re-reads (/api/status and /api/peers every 15 s;
the node pushes its VSM view on the stream every 5 s). Runs alternate (off, on, off,
on, ...) so the machine's drift hits both sides; medians are compared.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
from _machine import machine
from bench_mesh_call import CONFIG, TOOL, cpu_s, pin, throughput, wait_listed

from tests.integration.harness import NodeProcess, wait_mesh_states
from tests.polling import async_wait_for

# The lan preset's membership timers: on a machine loaded by other work, the local
# preset's 150 ms probes can suspect A in the middle of a run (its calls then fail).
NODE_CONFIG = CONFIG.replace('preset = "local"', 'preset = "lan"')
# page.js's SLOW_REFRESH_MS and what it re-reads (the VSM view comes on the stream).
REFRESHES = ((15.0, ("/api/status", "/api/peers")),)


async def page_client(session: aiohttp.ClientSession, url: str, seen: list[int]) -> None:
    async def refresh(every_s: float, paths: tuple[str, ...]) -> None:
        while True:
            await asyncio.sleep(every_s)
            for path in paths:
                async with session.get(url + path) as r:
                    await r.read()

    refreshers = [asyncio.create_task(refresh(*r)) for r in REFRESHES]
    try:
        async with session.get(url + "/api/stream", timeout=aiohttp.ClientTimeout()) as r:
            if r.status != 200:
                raise RuntimeError(f"/api/stream answered {r.status}")
            async for chunk in r.content.iter_any():
                seen[0] += len(chunk)
    finally:
        for task in refreshers:
            task.cancel()
        await asyncio.gather(*refreshers, return_exceptions=True)


async def page_clients(node: NodeProcess, count: int) -> None:
    async def reached() -> bool:
        return bool(node.get_json("/api/events")["page"]["clients"] == count)

    await async_wait_for(reached, timeout_s=30, what=f"{count} page clients open")


async def idle_cpu_ms_per_s(
    session: aiohttp.ClientSession, node: NodeProcess, clients: int, seconds: float
) -> float:
    """C's CPU time per second with `clients` open pages and no calls: what the pages
    cost by themselves, in a unit the machine's load moves far less than calls/s."""
    seen = [0]
    tasks = [asyncio.create_task(page_client(session, node.url, seen)) for _ in range(clients)]
    await page_clients(node, clients)
    before = cpu_s(node.pid)
    await asyncio.sleep(seconds)
    used = cpu_s(node.pid) - before
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await page_clients(node, 0)
    return used / seconds * 1000


async def measured(url: str, args: argparse.Namespace, pids: list[int]) -> dict[str, Any]:
    """One throughput run; redone (at most twice) when calls fail: on a machine loaded by
    other work a timed-out call can open C's breaker to A for a moment."""
    for attempt in range(3):
        try:
            return await throughput(url, args, pids)
        except RuntimeError as e:
            print(f"run failed ({str(e)[:120]}...); again", flush=True)
            if attempt == 2:
                raise
            await wait_listed(url)
    raise AssertionError("unreachable")


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-page-") as tmp:
        base = Path(tmp)
        (base / "node.toml").write_text(NODE_CONFIG)
        a = NodeProcess(base / "a", "--config", str(base / "node.toml"), "--no-mdns").start()
        c = NodeProcess(
            base / "c",
            "--config",
            str(base / "node.toml"),
            "--no-mdns",
            "--seed",
            f"{a.node_id}@127.0.0.1:{a.mesh_port}",
        ).start()
        try:
            wait_mesh_states([a, c], {a.node_id: "alive", c.node_id: "alive"})
            assert a.post(f"/api/debug/tools?name={TOOL}&zone=public") == 200
            mesh = c.url + "/mcp"
            pinned = args.pin and (os.cpu_count() or 1) >= 2
            rest = set(range(1, os.cpu_count() or 2))
            if pinned:
                os.sched_setaffinity(0, rest)
                pin(c.pid, {0})
                pin(a.pid, rest)
            await wait_listed(mesh)
            print(f"machine: {machine()}")
            results: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
            seen = [0]
            async with aiohttp.ClientSession() as session:
                for _ in range(args.rounds):
                    for side in ("off", "on"):
                        clients = [
                            asyncio.create_task(page_client(session, c.url, seen))
                            for _ in range(args.clients if side == "on" else 0)
                        ]
                        await page_clients(c, len(clients))
                        once = argparse.Namespace(**{**vars(args), "runs": 1})
                        results[side].append(await measured(mesh, once, [a.pid, c.pid]))
                        for task in clients:
                            task.cancel()
                        await asyncio.gather(*clients, return_exceptions=True)
                        # The next "off" run starts once C has closed every stream.
                        await page_clients(c, 0)
                idle = [
                    (n, await idle_cpu_ms_per_s(session, c, n, args.idle_seconds))
                    for n in (0, args.clients, 0, args.clients)
                ]
            page = c.get_json("/api/events")["page"]
            for side in ("off", "on"):
                rates = [r["calls_per_s"] for r in results[side]]
                cpu_c = [r["cpu_us_per_call"][1] for r in results[side]]
                print(
                    f"page clients {args.clients if side == 'on' else 0:2}: "
                    f"{statistics.median(rates):.0f} calls/s median of "
                    f"{[round(x) for x in rates]}; C CPU per call {statistics.median(cpu_c)} us "
                    f"(runs {cpu_c})"
                )
            off = statistics.median(r["calls_per_s"] for r in results["off"])
            on = statistics.median(r["calls_per_s"] for r in results["on"])
            print(f"cost of {args.clients} page clients: {(off - on) / off * 100:+.1f} % calls/s")
            print(
                "C idle (no calls), CPU ms per s: "
                + ", ".join(f"{n} page clients {ms:.1f}" for n, ms in idle)
            )
            print(f"stream bytes read by the page clients: {seen[0]}; hub: {page}")
        finally:
            c.stop()
            a.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, fewer rounds")
    parser.add_argument("--clients", type=int, default=10, help="page clients when on")
    parser.add_argument("--callers", type=int, default=64, help="concurrent callers in all")
    parser.add_argument("--client-processes", type=int, default=4)
    parser.add_argument("--rounds", type=int, help="off/on pairs (default 4; 2 quick)")
    parser.add_argument(
        "--pin", action=argparse.BooleanOptionalAction, default=True, help="give C its own CPU"
    )
    args = parser.parse_args()
    args.seconds = 3.0 if args.quick else 8.0
    args.rounds = args.rounds or (2 if args.quick else 4)
    args.idle_seconds = 5.0 if args.quick else 15.0
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
