"""Replication benchmark on real `vsmcpd` processes: announcement-to-everywhere latency
and bytes on the wire per announcement, for meshes of N = 5, 10, 20 nodes on loopback.

    python benchmarks/bench_replication.py [--quick] [--sizes 5,10,20] [--with-crdt]

Each mesh: N nodes, mDNS off, all seeded with the first one, `[mesh] preset = "local"`,
`[node] debug_api = true`. Then:

- Latency: one debug tool at a time is POSTed to a random node; one aiohttp session per
  node polls that node's /api/tools (every POLL_INTERVAL_S, while it does not hold the
  tool) and notes the wall clock of the first answer that holds it. Start = the entry's
  version, which is the provider's wall clock (ms) at announce time, so the HTTP POST is
  not counted; every node runs on this host, so the clocks are the same clock. A node's
  figure is an upper bound (the previous poll did not see the tool yet); the mean gap
  between a node's polls, printed as "poll gap", is the resolution. Per announcement
  we keep the slowest node ("everywhere").
- Bytes: `vsmcp_mesh_envelope_bytes_total{direction="sent"}` summed over all nodes,
  read before and after a batch of announcements (back to back, then polled until every
  node holds them all), minus the same counter over an idle period of the same duration
  (membership probes and anti-entropy rounds).
- `--with-crdt` also runs `bench_crdt.py --quick` for doc size and apply throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from _machine import cpu_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.harness import NodeProcess, wait_mesh_states

POLL_INTERVAL_S = 0.005
GAP_BETWEEN_ANNOUNCEMENTS_S = 0.1
BATCH_SPACING_S = 0.02
ANNOUNCE_TIMEOUT_S = 30.0
START_TIMEOUT_S = 180.0
SENT_BYTES = re.compile(rb'vsmcp_mesh_envelope_bytes_total\{direction="sent"\} ([0-9.e+]+)')
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_mesh(root: Path, count: int) -> list[NodeProcess]:
    config = root / "bench.toml"
    config.write_text('[node]\ndebug_api = true\n[mesh]\npreset = "local"\n')
    first = NodeProcess(root / "n0", "--config", str(config), "--no-mdns").start()
    seed = f"{first.node_id}@127.0.0.1:{first.mesh_port}"
    others = [
        NodeProcess(root / f"n{i}", "--config", str(config), "--no-mdns", "--seed", seed)
        for i in range(1, count)
    ]
    group = [first, *others]
    try:
        for node in others:
            node.start(wait=False)
        for node in others:
            node.wait_ready(timeout_s=START_TIMEOUT_S)
        wait_mesh_states(group, {n.node_id: "alive" for n in group}, timeout_s=START_TIMEOUT_S)
    except BaseException:
        stop_mesh(group)
        raise
    return group


def stop_mesh(group: list[NodeProcess]) -> None:
    for node in group:
        if node.proc is not None and node.proc.poll() is None:
            node.terminate()
    for node in group:
        node.stop()


class Mesh:
    """HTTP side of a running mesh: one keep-alive aiohttp session per node."""

    def __init__(self, group: list[NodeProcess]) -> None:
        self.group = group
        self.sessions = [
            aiohttp.ClientSession(
                base_url=n.url, connector=aiohttp.TCPConnector(limit=1, force_close=False)
            )
            for n in group
        ]

    async def close(self) -> None:
        for s in self.sessions:
            await s.close()

    async def tools_body(self, i: int) -> bytes:
        async with self.sessions[i].get("/api/tools") as r:
            return await r.read()

    async def announce(self, i: int, name: str) -> None:
        async with self.sessions[i].post(f"/api/debug/tools?name={name}&zone=public") as r:
            assert r.status == 200, await r.text()

    async def version_of(self, i: int, name: str) -> int:
        """The entry's version (provider wall clock, ms) as node i holds it."""
        deadline = time.monotonic() + ANNOUNCE_TIMEOUT_S
        while time.monotonic() < deadline:
            async with self.sessions[i].get("/api/tools") as r:
                for tool in (await r.json())["tools"]:
                    if tool["name"] == name:
                        return int(tool["version"])
            await asyncio.sleep(POLL_INTERVAL_S)
        raise TimeoutError(f"{name} never appeared on its provider")

    async def seen_at(self, i: int, needle: bytes) -> tuple[float, float, float]:
        """Wall clock bounds of the arrival of `needle` at node i: (after, before, poll gap).

        `after` is when the last poll that did not see it was sent (0 if the first poll
        saw it), `before` when the first answer that holds it was read."""
        deadline = time.monotonic() + ANNOUNCE_TIMEOUT_S
        polls = 0
        after = 0.0
        first = time.monotonic()
        while time.monotonic() < deadline:
            sent = time.time()
            body = await self.tools_body(i)
            polls += 1
            if needle in body:
                gap = (time.monotonic() - first) / (polls - 1) if polls > 1 else 0.0
                return after, time.time(), gap
            after = sent
            await asyncio.sleep(POLL_INTERVAL_S)
        raise TimeoutError(f"node {i} never saw {needle!r}")

    async def sent_bytes(self) -> int:
        total = 0
        for s in self.sessions:
            async with s.get("/metrics") as r:
                m = SENT_BYTES.search(await r.read())
            assert m, "no vsmcp_mesh_envelope_bytes_total in /metrics"
            total += int(float(m.group(1)))
        return total

    def cpu_s(self) -> float:
        return sum(_proc_cpu_s(n.pid) for n in self.group)


def _needle(name: str) -> bytes:
    return f'"name":"{name}"'.encode()


async def measure_latency(
    mesh: Mesh, n: int, count: int, rng: random.Random
) -> tuple[list[float], list[float], list[float]]:
    """Per announcement: upper and lower bound of the time until the slowest node held it
    (seconds from the provider's announce); and every poll gap."""
    upper: list[float] = []
    lower: list[float] = []
    gaps: list[float] = []
    for k in range(count):
        name = f"lat-{n}-{k}"
        provider = rng.randrange(n)
        await mesh.announce(provider, name)
        seen = await asyncio.gather(*(mesh.seen_at(i, _needle(name)) for i in range(n)))
        start = await mesh.version_of(provider, name) / 1000
        upper.append(max(before for _, before, _ in seen) - start)
        lower.append(max(max(after, start) for after, _, _ in seen) - start)
        gaps.extend(g for _, _, g in seen if g > 0)
        await asyncio.sleep(GAP_BETWEEN_ANNOUNCEMENTS_S)
    return upper, lower, gaps


async def measure_bytes(mesh: Mesh, n: int, count: int, rng: random.Random) -> dict[str, float]:
    names = [f"bytes-{n}-{k}" for k in range(count)]
    before = await mesh.sent_bytes()
    t0 = time.monotonic()
    for name in names:
        await mesh.announce(rng.randrange(n), name)
        await asyncio.sleep(BATCH_SPACING_S)
    for name in names:
        await asyncio.gather(*(mesh.seen_at(i, _needle(name)) for i in range(n)))
    duration = time.monotonic() - t0
    batch = await mesh.sent_bytes() - before

    # Idle over the same duration, twice (after the batch, then once more): their spread
    # is the noise of the subtraction (membership traffic varies with suspicions).
    idles: list[int] = []
    cpu_before = mesh.cpu_s()
    t1 = time.monotonic()
    for _ in range(2):
        idle_before = await mesh.sent_bytes()
        await asyncio.sleep(duration)
        idles.append(await mesh.sent_bytes() - idle_before)
    idle_cpu = (mesh.cpu_s() - cpu_before) / (time.monotonic() - t1)
    idle = statistics.mean(idles)
    per_announcement = (batch - idle) / count
    return {
        "duration_s": duration,
        "batch_bytes": batch,
        "idle_bytes": idle,
        "per_announcement": per_announcement,
        "per_peer": per_announcement / (n - 1),
        "noise": abs(idles[0] - idles[1]) / 2 / count,
        "idle_bytes_per_s": idle / duration,
        "idle_cores": idle_cpu,
    }


async def bench_size(n: int, count: int, batch: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix=f"bench-repl-{n}-") as tmp:
        t0 = time.monotonic()
        group = start_mesh(Path(tmp), n)
        started_s = time.monotonic() - t0
        mesh = Mesh(group)
        try:
            load = os.getloadavg()[0]
            everywhere, lower, gaps = await measure_latency(mesh, n, count, rng)
            wire = await measure_bytes(mesh, n, batch, rng)
        finally:
            await mesh.close()
            stop_mesh(group)
    return {
        "n": n,
        "start_s": started_s,
        "load": load,
        "p50_ms": 1000 * statistics.median(everywhere),
        "p99_ms": 1000 * _pct(everywhere, 0.99),
        "max_ms": 1000 * max(everywhere),
        "lo_p50_ms": 1000 * statistics.median(lower),
        "lo_p99_ms": 1000 * _pct(lower, 0.99),
        "gap_ms": 1000 * statistics.mean(gaps) if gaps else 0.0,
        **wire,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default="5,10,20")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--with-crdt", action="store_true")
    args = parser.parse_args()
    count = 30 if args.quick else 50
    batch = 40 if args.quick else 80
    sizes = [int(s) for s in args.sizes.split(",")]

    print(
        f"Machine: nproc {os.cpu_count()}, {cpu_model()}, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )
    print(f"{count} announcements per size for latency, batch of {batch} for bytes\n")
    rows = []
    t0 = time.perf_counter()
    for n in sizes:
        row = asyncio.run(bench_size(n, count, batch, args.seed + n))
        rows.append(row)
        print(
            f"N={n}: started in {row['start_s']:.1f} s, load {row['load']:.2f}; "
            f"latency p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
            f"max {row['max_ms']:.1f} ms (lower bounds p50 {row['lo_p50_ms']:.1f}, "
            f"p99 {row['lo_p99_ms']:.1f} ms; poll gap {row['gap_ms']:.1f} ms); "
            f"{row['per_announcement']:.0f} ± {row['noise']:.0f} B/announcement "
            f"({row['per_peer']:.0f} B per peer), "
            f"idle {row['idle_bytes_per_s']:.0f} B/s, idle CPU {row['idle_cores']:.2f} cores",
            flush=True,
        )
    print(
        "\n| N | p50 ms | p99 ms | max ms | lower bound p50 / p99 ms | poll gap ms "
        "| B/announcement | B per peer | idle mesh B/s | idle CPU (cores) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['n']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} "
            f"| {r['lo_p50_ms']:.1f} / {r['lo_p99_ms']:.1f} | {r['gap_ms']:.1f} "
            f"| {r['per_announcement']:,.0f} ± {r['noise']:,.0f} | {r['per_peer']:,.0f} "
            f"| {r['idle_bytes_per_s']:,.0f} | {r['idle_cores']:.2f} |"
        )
    print(f"\n(run took {time.perf_counter() - t0:.0f} s{', --quick' if args.quick else ''})")
    if args.with_crdt:
        print("\n--- bench_crdt.py --quick ---", flush=True)
        script = Path(__file__).resolve().parent / "bench_crdt.py"
        subprocess.run([sys.executable, str(script), "--quick"], check=True)


if __name__ == "__main__":
    main()
