"""Benchmark the policy agent: decisions per second of the WASM agent under wasmtime
(batched: one call evaluates a JSON batch) beside the pure-Python reference, on a policy
set of `--blocks` mitigations and requests of which about one in ten is blocked.

    python benchmarks/bench_policy_agent.py [--quick] [--blocks N]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import machine

from vsmcp.node.policyagent.agent import WasmPolicyAgent, module_bytes
from vsmcp.node.policyagent.reference import PolicySet

NOW_MS = 1_800_000_000_000
ZONES = ["public", "ops", "restricted"]


def policy_set(blocks: int) -> dict[str, Any]:
    kinds = ("origin", "node", "tool")
    items = []
    for i in range(blocks):
        kind = kinds[i % 3]
        target = {"origin": f"http:caller{i}", "node": f"node{i}", "tool": f"tool{i}"}[kind]
        items.append(
            {
                "key": f"issuer/{kind}:{target}",
                "policy": f"{kind}:{target}",
                "target_kind": kind,
                "target": target,
                "expires_at_ms": NOW_MS + 60_000,
            }
        )
    return {"zones": ZONES, "blocks": items}


def requests(count: int, blocks: int, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for _ in range(count):
        hit = rng.random() < 0.1
        n = rng.randrange(blocks) if hit else blocks + rng.randrange(10_000)
        out.append(
            {
                "origin": f"http:caller{n}",
                "entry_origin": None,
                "client_addr": f"10.0.{n % 256}.{n // 256 % 256}",
                "entry_node": f"node{n}",
                "tool": f"tool{n}",
                "caller_zone": rng.choice(ZONES),
                "tool_zone": rng.choice(ZONES),
            }
        )
    return out


def rate(run: Callable[[], object], decisions: int, rounds: int) -> tuple[float, float]:
    """Best and median decisions per second over `rounds`."""
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        rates.append(decisions / (time.perf_counter() - started))
    return max(rates), statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--blocks", type=int, default=300)
    args = parser.parse_args()
    rounds = 3 if args.quick else 7
    total = 20_000 if args.quick else 100_000
    rng = random.Random(7)
    doc = policy_set(args.blocks)
    pool = requests(total, args.blocks, rng)
    reference = PolicySet(doc)
    started = time.perf_counter()
    agent = WasmPolicyAgent()
    compile_ms = (time.perf_counter() - started) * 1000
    agent.load_policies(doc)
    # Same decisions on the whole pool (the benchmark measures equals).
    batch = {"now_ms": NOW_MS, "requests": pool}
    assert agent.evaluate(pool, NOW_MS) == reference.evaluate(batch)["decisions"]
    blocked = sum(
        not d["allowed"] and d["by"] == "mitigation" for d in agent.evaluate(pool, NOW_MS)
    )

    rows: list[tuple[str, float, float]] = []
    rows.append(
        (
            "Python reference, one `decide` per request",
            *rate(lambda: [reference.decide(r, NOW_MS) for r in pool], total, rounds),
        )
    )
    for size in (1, 10, 100, 1000, 10_000):
        chunks = [pool[i : i + size] for i in range(0, total if size > 1 else total // 10, size)]
        count = sum(len(c) for c in chunks)
        rows.append(
            (
                f"wasmtime agent, batches of {size:,} (JSON encode + call + decode)",
                *rate(
                    lambda chunks=chunks: [agent.evaluate(c, NOW_MS) for c in chunks], count, rounds
                ),
            )
        )
        if size in (1000, 10_000):
            encoded = [json.dumps({"now_ms": NOW_MS, "requests": c}).encode() for c in chunks]
            rows.append(
                (
                    f"wasmtime agent, batches of {size:,}, JSON bytes in and out (the call alone)",
                    *rate(lambda e=encoded: [agent.evaluate_json(b) for b in e], count, rounds),
                )
            )
    started = time.perf_counter()
    for _ in range(10):
        WasmPolicyAgent().load_policies(doc)
    setup_ms = (time.perf_counter() - started) * 100  # the module compiled once, cached

    print(
        f"policy agent: {args.blocks} blocks, {total:,} requests ({blocked:,} blocked), "
        f"{rounds} rounds; module {len(module_bytes()):,} bytes"
    )
    print(f"machine: {machine('wasmtime-py ' + version('wasmtime'))}")
    print("| decisions per second | best | median |\n|---|---|---|")
    for name, best, median in rows:
        print(f"| {name} | {best:,.0f} | {median:,.0f} |")
    print(f"first agent (compiles the module): {compile_ms:.0f} ms")
    print(f"next agents (instantiate + load the set): {setup_ms:.2f} ms (mean of 10)")


if __name__ == "__main__":
    main()
