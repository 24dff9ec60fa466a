"""The status page's cost: mesh-call throughput with and without 10 open page clients.

    python benchmarks/bench_page.py [--quick]

The mesh-call benchmark's setup (benchmarks/bench_mesh_call.py: A offers a debug echo
tool, C routes to it, C pinned to CPU 0 by default; here the lan membership preset) and
its throughput run through C, alternately with no page client and with `--clients` (10)
page clients on C, each as a browser's page is: `GET /api/stream` held open and read as
it arrives, plus the page's periodic re-reads (/api/status and /api/peers every 15 s;
the node pushes its VSM view on the stream every 5 s).

The machine is shared, so calls/s swings by tens of percent from run to run; a cost of a
few percent is found only by pairing. Each round is one run without and one with the
page clients, back to back, in ABBA order (off/on, then on/off) so a drift in the
machine's load hits both sides alike; a round's cost is 1 - on/off. Reported: the median
of the rounds' costs with a 95 % bootstrap interval (resampling the rounds), for calls/s
and for C's CPU time per call (which other jobs move far less: C is pinned to its own
CPU, so its throughput is at most the inverse of its CPU per call). The verdict against
the target (--target, 3 %) is "met" when the interval's upper end is below it, "missed"
when its lower end is above it, else "inconclusive".

Both still move with the machine's load at full throughput (batching changes with it).
So the same rounds are run again at a fixed call rate (--rate, below what C reaches):
C does the same work in every run, and what 10 pages add is C's CPU time per second,
with and without them, paired the same way; as a share of C's CPU time per second at
full throughput it bounds the calls/s the pages take (it is exactly that share when C's
CPU is what limits the calls, less otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from _machine import machine
from _mesh import start_pair
from bench_mesh_call import CONFIG, TOOL, call, cpu_s, pin, throughput, wait_listed

from tests.integration.harness import NodeProcess
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
    async with open_pages(session, node, clients, [0]):
        before = cpu_s(node.pid)
        await asyncio.sleep(seconds)
        used = cpu_s(node.pid) - before
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


BOOTSTRAP_SAMPLES = 4000
TICK_S = 0.01  # the fixed-rate driver starts its calls in batches this far apart
MAX_IN_FLIGHT = 64
REACHED_FRACTION = 0.97  # a fixed-rate run below this share of its rate voids its pair


async def fixed_rate_cpu_ms_per_s(
    session: aiohttp.ClientSession, mesh: str, pid: int, rate: float, seconds: float
) -> tuple[float, float]:
    """Mesh calls through C at `rate` a second for `seconds` (after 1 s to settle): C's CPU
    ms per second and the rate reached. At a fixed rate C does the same work each run,
    so what 10 pages add shows as CPU time, which other jobs on the machine move far
    less than they move calls/s."""
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)
    done = [0]

    async def one(i: int) -> None:
        async with gate:
            # A failed call (C lost A for a moment on the loaded machine) is not counted:
            # the run falls short of its rate and its pair is void.
            with contextlib.suppress(RuntimeError):
                await call(session, mesh, i)
                done[0] += 1

    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    start = loop.time()
    measured_from = start + 1.0
    before = after = 0.0
    counted = 0
    i = 0
    while (now := loop.time()) < measured_from + seconds:
        if before == 0.0 and now >= measured_from:
            before, counted = cpu_s(pid), done[0]
        due = int((now - start) * rate)
        while i < due:
            task = asyncio.create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.sleep(TICK_S)
    after = cpu_s(pid)
    reached = (done[0] - counted) / seconds
    await asyncio.gather(*tasks)
    return (after - before) / seconds * 1000, reached


def paired_cost(off: list[float], on: list[float], *, higher_is_better: bool) -> list[float]:
    """Each round's cost of the page clients, as a fraction (0.03 = 3 % worse)."""
    if higher_is_better:
        return [1 - b / a for a, b in zip(off, on, strict=True)]
    return [b / a - 1 for a, b in zip(off, on, strict=True)]


def bootstrap_interval(costs: list[float], seed: int = 17) -> tuple[float, float]:
    """95 % interval of the median cost, resampling the rounds with replacement."""
    rng = random.Random(seed)
    medians = sorted(
        statistics.median(rng.choices(costs, k=len(costs))) for _ in range(BOOTSTRAP_SAMPLES)
    )
    return medians[int(0.025 * BOOTSTRAP_SAMPLES)], medians[int(0.975 * BOOTSTRAP_SAMPLES) - 1]


MIN_ROUNDS_FOR_VERDICT = 6


def verdict(low: float, high: float, target: float, rounds: int) -> str:
    if rounds < MIN_ROUNDS_FOR_VERDICT:
        return f"no verdict from {rounds} rounds (at least {MIN_ROUNDS_FOR_VERDICT})"
    if high <= target:
        return "met"
    if low > target:
        return "missed"
    return "inconclusive"


def report(name: str, costs: list[float], target: float) -> None:
    low, high = bootstrap_interval(costs)
    print(
        f"{name}: median cost {statistics.median(costs) * 100:+.1f} % "
        f"(95 % interval {low * 100:+.1f} .. {high * 100:+.1f} %; rounds "
        f"{[round(c * 100, 1) for c in costs]}); target <= {target * 100:.0f} %: "
        f"{verdict(low, high, target, len(costs))}"
    )


@contextlib.asynccontextmanager
async def open_pages(
    session: aiohttp.ClientSession, c: NodeProcess, count: int, seen: list[int]
) -> AsyncIterator[None]:
    """`count` page clients on C for the duration; C has closed every stream after."""
    tasks = [asyncio.create_task(page_client(session, c.url, seen)) for _ in range(count)]
    await page_clients(c, count)
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await page_clients(c, 0)


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-page-") as tmp:
        base = Path(tmp)
        (base / "node.toml").write_text(NODE_CONFIG)
        a, c = start_pair(base, base / "node.toml", base / "node.toml")
        try:
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
                for i in range(args.rounds):
                    for side in ("off", "on") if i % 2 == 0 else ("on", "off"):
                        clients = args.clients if side == "on" else 0
                        once = argparse.Namespace(**{**vars(args), "runs": 1})
                        async with open_pages(session, c, clients, seen):
                            results[side].append(await measured(mesh, once, [a.pid, c.pid]))
                added: list[float] = []
                fixed: dict[str, list[float]] = {"off": [], "on": []}
                short = 0
                for i in range(args.fixed_rounds):
                    pair: dict[str, tuple[float, float]] = {}
                    for side in ("off", "on") if i % 2 == 0 else ("on", "off"):
                        n = args.clients if side == "on" else 0
                        async with open_pages(session, c, n, seen):
                            pair[side] = await fixed_rate_cpu_ms_per_s(
                                session, mesh, c.pid, args.rate, args.seconds
                            )
                    # A run that fell short of the rate did less work: the pair is void.
                    if min(got for _, got in pair.values()) < args.rate * REACHED_FRACTION:
                        short += 1
                        continue
                    for side, (ms, _) in pair.items():
                        fixed[side].append(ms)
                    added.append(pair["on"][0] - pair["off"][0])
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
            rates_off = [r["calls_per_s"] for r in results["off"]]
            rates_on = [r["calls_per_s"] for r in results["on"]]
            cpu_off = [r["cpu_us_per_call"][1] for r in results["off"]]
            cpu_on = [r["cpu_us_per_call"][1] for r in results["on"]]
            print(f"cost of {args.clients} page clients, {args.rounds} paired rounds:")
            report(
                "  calls/s", paired_cost(rates_off, rates_on, higher_is_better=True), args.target
            )
            report(
                "  C CPU per call",
                paired_cost(cpu_off, cpu_on, higher_is_better=False),
                args.target,
            )
            busy = statistics.median(
                r["calls_per_s"] * r["cpu_us_per_call"][1] / 1000 for r in results["off"]
            )
            if not added:
                raise RuntimeError(f"no fixed-rate pair reached {args.rate:g} calls/s")
            low, high = bootstrap_interval(added)
            print(
                f"at a fixed {args.rate:g} calls/s ({len(added)} pairs; {short} void: a run "
                f"fell short of the rate): "
                f"C's CPU {statistics.median(fixed['off']):.0f} ms/s without, "
                f"{statistics.median(fixed['on']):.0f} ms/s with the page clients; added "
                f"{statistics.median(added):+.1f} ms/s (95 % interval {low:+.1f} .. {high:+.1f}; "
                f"rounds {[round(x, 1) for x in added]})"
            )
            # The pages' work competes with the calls for C's CPU: at full throughput the
            # calls lose at most this share (less when C's CPU is not what limits them).
            print(
                f"  as a share of C's CPU at full throughput ({busy:.0f} ms/s): "
                f"{statistics.median(added) / busy * 100:+.1f} % "
                f"(interval {low / busy * 100:+.1f} .. {high / busy * 100:+.1f} %); "
                f"target <= {args.target * 100:.0f} %: "
                f"{verdict(low / busy, high / busy, args.target, len(added))}"
            )
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
    parser.add_argument("--rounds", type=int, help="off/on pairs (default 12; 3 quick)")
    parser.add_argument("--seconds", type=float, help="per run (default 5; 3 quick)")
    parser.add_argument(
        "--fixed-rounds", type=int, help="off/on pairs at the fixed rate (default 16; 3 quick)"
    )
    parser.add_argument("--target", type=float, default=0.03, help="cost target (0.03 = 3 %%)")
    parser.add_argument(
        "--rate", type=float, default=400.0, help="calls/s of the fixed-rate runs (C's CPU)"
    )
    parser.add_argument(
        "--pin", action=argparse.BooleanOptionalAction, default=True, help="give C its own CPU"
    )
    args = parser.parse_args()
    args.seconds = args.seconds or (3.0 if args.quick else 5.0)
    args.rounds = args.rounds or (3 if args.quick else 12)
    args.fixed_rounds = args.fixed_rounds or (3 if args.quick else 16)
    args.idle_seconds = 5.0 if args.quick else 15.0
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
