"""Overload benchmark: a surge at 1×, 2× and 4× a node's capacity, regulation on vs off.

    python benchmarks/bench_overload.py [--quick]

Starts two real `vsmcpd` processes on loopback, each offering the same plugin tool
`work` (tests/integration/plugin_tools.py): a service of fixed capacity (`--workers`
calls at once, `--service-ms` each; the rest wait inside the tool, as behind a
saturated backend). One node runs with `[vsm.concurrency]` (adaptive limits), the
other without (the fixed unit limits: max_concurrency 16, max_queue 64). Then, from
this process, with aiohttp:

1. unloaded latency: sequential calls on each node, p50/p99;
2. capacity: closed loop, 4 × workers callers for a few seconds on the regulated node's
   twin without regulation (calls/s served);
3. for load 1×, 2×, 4× capacity, on each node in turn: open-loop Poisson arrivals at
   that rate (a real surge does not slow down because the server does), 5 % of them
   `critical` (a token whose cap allows it), the rest `normal`. After a warm-up, for
   the measured window: goodput (successful calls/s, and as a share of capacity), p99
   of admitted calls (and as a multiple of the unloaded p99), critical success, share
   refused, and how long a refusal took: seen by the client (HTTP round trip included)
   and at the node (the `vsmcp_tool_call_duration_seconds` histogram of `overloaded`
   outcomes: the share answered within 1 ms and 2.5 ms; and `vsmcp_mcp_refusal_seconds`,
   the /mcp handler's time for each 503, whose fine buckets give a p99 bound); and how
   late the client's own event loop ran (a 10 ms timer's lateness, p99), which every
   latency the client measures includes.

Client and both nodes share the machine's cores: numbers are for this machine only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from _machine import machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.harness import NodeProcess, tool_call_message

APP_TOKEN = "app-token-0123456789abcdef"
CRIT_TOKEN = "crit-token-0123456789abcdef"
CRITICAL_SHARE = 0.05
CLIENT_TIMEOUT_S = 30.0
LAG_TICK_S = 0.01

BASE_CONFIG = f"""
[node]
log_level = "warning"
[http]
max_connections_per_client = 4096
max_connections = 8192
[mesh]
preset = "local"
[tools]
entry_points = false
[[tools.plugins]]
name = "work"
target = "tests.integration.plugin_tools:work"
[[mcp.tokens]]
name = "app"
token = "{APP_TOKEN}"
zone = "public"
[[mcp.tokens]]
name = "crit"
token = "{CRIT_TOKEN}"
zone = "public"
max_priority = "critical"
"""


def regulated_config(tolerance: float) -> str:
    return (
        BASE_CONFIG
        + f"""
[vsm.concurrency]
min_limit = 2
initial_limit = 8
max_limit = 64
tolerance = {tolerance}
"""
    )


@dataclass
class Call:
    started: float
    latency_s: float
    critical: bool
    ok: bool
    refused: bool


@dataclass
class Phase:
    mode: str
    factor: int
    rate: float
    calls: list[Call] = field(default_factory=list)
    server_refusals: dict[str, float] = field(default_factory=dict)
    refusal_times: dict[str, Any] = field(default_factory=dict)
    # How late the client's own loop woke for a LAG_TICK_S timer during the measured
    # window: what the client itself adds to every latency it measures.
    client_lag: list[float] = field(default_factory=list)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))]


class Client:
    def __init__(self, http: aiohttp.ClientSession, node: NodeProcess, args: Any) -> None:
        self.http = http
        self.url = node.url + "/mcp"
        self.arguments = {"service_ms": args.service_ms, "capacity": args.workers}

    async def call(self, critical: bool) -> tuple[bool, bool]:
        """(served, refused as overloaded)."""
        body, headers = tool_call_message(
            CRIT_TOKEN if critical else APP_TOKEN,
            "work",
            self.arguments,
            {"vsmcp/priority": "critical" if critical else "normal"},
        )
        try:
            async with self.http.post(self.url, data=json.dumps(body), headers=headers) as r:
                reply = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError):
            return False, False
        if "result" in reply and not reply["result"].get("isError"):
            return True, False
        error = reply.get("error") or {}
        return False, error.get("code") == -32012


async def sequential(client: Client, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        ok, _ = await client.call(False)
        if ok:
            out.append(time.perf_counter() - t0)
    return out


async def closed_loop(client: Client, callers: int, seconds: float) -> float:
    served = 0
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal served
        while time.perf_counter() < stop:
            ok, _ = await client.call(False)
            served += ok

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return served / (time.perf_counter() - t0)


async def open_loop(client: Client, phase: Phase, warmup_s: float, measure_s: float) -> None:
    rng = random.Random(phase.factor * 7919 + len(phase.mode))
    tasks: set[asyncio.Task[None]] = set()
    t0 = time.perf_counter()
    end = t0 + warmup_s + measure_s

    async def one(critical: bool, started: float) -> None:
        ok, refused = await client.call(critical)
        if started - t0 >= warmup_s:
            latency = time.perf_counter() - started
            phase.calls.append(Call(started - t0, latency, critical, ok, refused))

    async def ticker() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(LAG_TICK_S)
            late = time.perf_counter() - before - LAG_TICK_S
            if t0 + warmup_s <= before < end:
                phase.client_lag.append(late)

    lag = asyncio.create_task(ticker())
    next_at = t0
    while True:
        next_at += rng.expovariate(phase.rate)
        if next_at >= end:
            break
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(rng.random() < CRITICAL_SHARE, time.perf_counter()))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    lag.cancel()


BUCKET = re.compile(
    r"^vsmcp_tool_call_duration_seconds_bucket\{(?P<labels>[^}]*)\} (?P<n>[0-9.e+]+)$", re.M
)


def refusal_buckets(node: NodeProcess) -> dict[str, float]:
    text = node.get("/metrics")[1].decode()
    out: dict[str, float] = {}
    for m in BUCKET.finditer(text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group("labels")))
        if labels.get("outcome") == "overloaded" and labels.get("tool") == "work":
            out[labels["le"]] = out.get(labels["le"], 0.0) + float(m.group("n"))
    return out


REFUSAL_BUCKET = re.compile(r'^vsmcp_mcp_refusal_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)$', re.M)


def node_buckets(node: NodeProcess) -> dict[float, float]:
    text = node.get("/metrics")[1].decode()
    return {float(le): float(n) for le, n in REFUSAL_BUCKET.findall(text)}


def node_summary(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """Refusals of the phase by bucket: count, p50/p99 (bucket bounds), share ≤ 1 / 2 ms."""
    cumulative = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = cumulative[-1][1]

    def bound(p: float) -> float:
        return next(le for le, n in cumulative if n >= p / 100 * total)

    def within(le_s: float) -> float:
        return dict(cumulative)[le_s] / total

    return {
        "refusals": int(total),
        "p50_ms_at_most": bound(50) * 1000,
        "p99_ms_at_most": bound(99) * 1000,
        "within_1ms": round(within(0.001), 4),
        "within_2ms": round(within(0.002), 4),
    }


def summarize(
    phase: Phase, capacity: float, unloaded_p99: float, measure_s: float
) -> dict[str, Any]:
    calls = phase.calls
    ok = [c for c in calls if c.ok]
    crit = [c for c in calls if c.critical]
    refused = [c for c in calls if c.refused]
    served_lat = [c.latency_s for c in ok]
    refusals = phase.server_refusals
    total = refusals.get("+Inf", 0.0)
    return {
        "mode": phase.mode,
        "load": f"{phase.factor}x",
        "offered_per_s": round(len(calls) / measure_s, 1),
        "goodput_per_s": round(len(ok) / measure_s, 1),
        "goodput_of_capacity": round(len(ok) / measure_s / capacity, 3),
        "admitted_p50_ms": round(pct(served_lat, 50) * 1000, 1),
        "admitted_p99_ms": round(pct(served_lat, 99) * 1000, 1),
        "admitted_p99_vs_unloaded": round(pct(served_lat, 99) / unloaded_p99, 2),
        "critical_success": round(sum(c.ok for c in crit) / len(crit), 4) if crit else None,
        "critical_calls": len(crit),
        "refused_share": round(len(refused) / len(calls), 3) if calls else 0.0,
        "failed_other": len(calls) - len(ok) - len(refused),
        "refuse_client_p50_ms": round(pct([c.latency_s for c in refused], 50) * 1000, 2),
        "refuse_client_p99_ms": round(pct([c.latency_s for c in refused], 99) * 1000, 2),
        "refuse_node_within_1ms": round(refusals.get("0.001", 0) / total, 4) if total else None,
        "refuse_node_within_2_5ms": round(refusals.get("0.0025", 0) / total, 4) if total else None,
        "refuse_node_fine": phase.refusal_times,
        "client_loop_lag_p99_ms": round(pct(phase.client_lag, 99) * 1000, 1),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        base = Path(tmp)
        nodes = {}
        for mode, config in (("on", regulated_config(args.tolerance)), ("off", BASE_CONFIG)):
            path = base / f"{mode}.toml"
            path.write_text(config)
            # Separate parents: separate meshes (the nodes must not route to each other).
            node = NodeProcess(base / mode / "node", "--config", str(path))
            nodes[mode] = node.start(wait=False)
        try:
            for node in nodes.values():
                node.wait_ready()
            connector = aiohttp.TCPConnector(limit=0)
            timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
                clients = {mode: Client(http, node, args) for mode, node in nodes.items()}
                unloaded = {}
                for mode, client in clients.items():
                    await sequential(client, 20)  # warm up
                    lat = await sequential(client, args.unloaded_calls)
                    unloaded[mode] = {
                        "p50_ms": round(pct(lat, 50) * 1000, 1),
                        "p99_ms": round(pct(lat, 99) * 1000, 1),
                    }
                unloaded_p99 = max(u["p99_ms"] for u in unloaded.values()) / 1000
                capacity = await closed_loop(clients["off"], 4 * args.workers, args.capacity_s)
                results = []
                for factor in (1, 2, 4):
                    for mode in ("on", "off"):
                        phase = Phase(mode, factor, factor * capacity)
                        before = refusal_buckets(nodes[mode])
                        fine_before = node_buckets(nodes[mode])
                        await open_loop(clients[mode], phase, args.warmup_s, args.measure_s)
                        after = refusal_buckets(nodes[mode])
                        fine_after = node_buckets(nodes[mode])
                        if fine_after.get(float("inf"), 0) > fine_before.get(float("inf"), 0):
                            phase.refusal_times = node_summary(fine_before, fine_after)
                        phase.server_refusals = {
                            k: after.get(k, 0.0) - before.get(k, 0.0) for k in after
                        }
                        row = summarize(phase, capacity, unloaded_p99, args.measure_s)
                        results.append(row)
                        print(json.dumps(row), flush=True)
                        await asyncio.sleep(args.pause_s)  # let the backlog drain
                on_vsm = nodes["on"].get_json("/api/vsm")["s3"]
        finally:
            for node in nodes.values():
                node.stop()
    return {
        "machine": machine(),
        "workers": args.workers,
        "service_ms": args.service_ms,
        "tolerance": args.tolerance,
        "capacity_per_s": round(capacity, 1),
        "unloaded": unloaded,
        "phases": results,
        "regulated_node_s3": {
            "concurrency": on_vsm["concurrency"],
            "unit": on_vsm["units"].get("plugin:work"),
            "overload": on_vsm["overload"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--service-ms", type=float, default=50.0)
    parser.add_argument("--tolerance", type=float, default=1.1)
    parser.add_argument("--unloaded-calls", type=int, default=200)
    parser.add_argument("--capacity-s", type=float, default=5.0)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--measure-s", type=float, default=10.0)
    parser.add_argument("--pause-s", type=float, default=3.0)
    args = parser.parse_args()
    if args.quick:
        args.unloaded_calls, args.capacity_s = 60, 3.0
        args.warmup_s, args.measure_s, args.pause_s = 2.0, 4.0, 2.0
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
