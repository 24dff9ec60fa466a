"""Variety-driven spawning: a CPU-bound plugin tool on one node, then the same node with
`scale` children, in the same run (issue 12: target ≥ 1.7× the calls/s on 2 cores).

    python benchmarks/bench_scale.py [--seconds 20] [--callers 4] [--rounds 600000] [--pairs 3]

Two `vsmcpd --dev --no-mdns` nodes, one after the other, with the same tool `burn`
(`tests/integration/plugin_tools.py`: a pure-Python loop, ≈`--rounds`/10⁷ s of CPU a
call; limits max_concurrency 1, max_queue 64): the first without `scale`, the second
with `scale = { children = "auto", max = --max-children }`. Callers (one keep-alive
connection each, one call in flight, `benchmarks/_http_load.py`) call it at the node's
/mcp. For the scaled node the load runs until System 3 has spawned its children and
each has served calls (the warm-up, not measured), then the same measurement as for the
first node. Which process served each call is counted from a sample of calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _http_load import drive
from _machine import machine

from tests.integration.harness import NodeProcess, tool_call_message

TOKEN = "bench-scale-token-0123456789"
WARMUP_TIMEOUT_S = 120.0


def config(rounds: int, max_children: int | None) -> str:
    scale = ""
    if max_children is not None:
        scale = (
            f'scale = {{ children = "auto", max = {max_children}, quiet_s = 60.0, '
            "samples = 2, settle_s = 3.0 }\n"
        )
    return (
        '[mesh]\npreset = "local"\n[node]\nlog_level = "warning"\n'
        "[tools]\nentry_points = false\n"
        '[[tools.plugins]]\nname = "burn"\ntarget = "tests.integration.plugin_tools:burn"\n'
        "limits = { max_concurrency = 1, max_queue = 64 }\n"
        f"{scale}"
        f'[[mcp.tokens]]\nname = "bench"\ntoken = "{TOKEN}"\nzone = "restricted"\n'
    )


def served_by(node: NodeProcess, rounds: int) -> int:
    body, headers = tool_call_message(TOKEN, "burn", {"rounds": rounds})
    request = urllib.request.Request(node.url + "/mcp", json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=60) as r:
        pid: int = json.loads(r.read())["result"]["structuredContent"]["pid"]
    return pid


def measure(node: NodeProcess, args: argparse.Namespace) -> float:
    _, headers = tool_call_message(TOKEN, "burn")
    params = {
        "name": "burn",
        "arguments": {"rounds": args.rounds},
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        },
    }
    host, port = node.url.split("//", 1)[1].rsplit(":", 1)
    calls, elapsed, _ = asyncio.run(
        drive(host, int(port), "/mcp", headers, params, args.callers, args.seconds)
    )
    return calls / elapsed


def children(node: NodeProcess) -> list[dict[str, Any]]:
    return list(node.get_json("/api/children")["children"])


def warm_up(node: NodeProcess, args: argparse.Namespace) -> None:
    """Load until every child is spawned and serving."""
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            measure(node, argparse.Namespace(**{**vars(args), "seconds": 1.0}))

    thread = threading.Thread(target=load, name="warm-up", daemon=True)
    thread.start()
    deadline = time.monotonic() + WARMUP_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            running = [c for c in children(node) if c["state"] == "running" and c["tools"]]
            if len(running) >= args.max_children:
                break
            time.sleep(0.5)
        else:
            raise SystemExit(f"children not all serving in time: {children(node)}")
        time.sleep(3.0)  # the last child's first calls
    finally:
        stop.set()
        thread.join()


def sample_pids(node: NodeProcess, args: argparse.Namespace) -> dict[int, int]:
    """Which process served each of a sample of calls made under load."""
    seen: dict[int, int] = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + min(args.seconds, 10.0)

    def caller() -> None:
        while time.monotonic() < stop_at:
            pid = served_by(node, args.rounds)
            with lock:
                seen[pid] = seen.get(pid, 0) + 1

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(args.callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return seen


def run_node(base: Path, name: str, args: argparse.Namespace, scaled: bool) -> dict[str, Any]:
    path = base / f"{name}.toml"
    path.write_text(config(args.rounds, args.max_children if scaled else None))
    node = NodeProcess(base / name, "--config", str(path), "--no-mdns")
    node.start()
    try:
        served_by(node, args.rounds)  # the tool is loaded
        if scaled:
            warm_up(node, args)
        rate = measure(node, args)
        pids = sample_pids(node, args)
        return {
            "rate": rate,
            "children": len(children(node)),
            "share_parent": pids.get(node.pid, 0) / max(1, sum(pids.values())),
            "processes": len(pids),
        }
    finally:
        node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--callers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=600_000)
    parser.add_argument("--max-children", type=int, default=1)
    parser.add_argument(
        "--pairs", type=int, default=1, help="pairs of runs; every other pair scaled first"
    )
    args = parser.parse_args()
    print(f"machine: {machine()}; {args.callers} callers, {args.seconds:.0f} s each\n")
    print("| pair | one node calls/s | with scale calls/s | children | processes serving "
          "| parent's share | speed-up | load average |\n"
          "|---|---|---|---|---|---|---|---|")  # fmt: skip
    ratios = []
    for pair in range(args.pairs):
        with tempfile.TemporaryDirectory() as tmp:
            if pair % 2:
                scaled = run_node(Path(tmp), "scaled", args, scaled=True)
                one = run_node(Path(tmp), "single", args, scaled=False)
            else:
                one = run_node(Path(tmp), "single", args, scaled=False)
                scaled = run_node(Path(tmp), "scaled", args, scaled=True)
        ratios.append(scaled["rate"] / one["rate"])
        print(
            f"| {pair + 1}{' (scaled first)' if pair % 2 else ''} | {one['rate']:.2f} "
            f"| {scaled['rate']:.2f} | {scaled['children']} | {scaled['processes']} "
            f"| {scaled['share_parent']:.0%} | {ratios[-1]:.2f}× | {os.getloadavg()[0]:.1f} |",
            flush=True,
        )
    print(f"\nspeed-up median {statistics.median(ratios):.2f}× (target ≥ 1.7×)")


if __name__ == "__main__":
    main()
