"""Membership in the discrete-event simulator: detection, dissemination, false positives,
traffic, for N = 10 .. 10,000 virtual nodes at 0 / 10 / 25 % message loss.

    python benchmarks/bench_membership_sim.py [--quick] [--config local|lan] [--markdown]

One trial: the cluster warms up, then at t0 one node is killed (kill -9: dead), one
is stopped (SIGSTOP: zombie) and one new node joins through 3 seeds, all at once.
Measured in virtual time from t0:
  dead first / dead all  - first survivor, and every survivor, hold the killed node DEAD
  zombie first / all     - same for the stopped node (ZOMBIE)
  verdict spread 99.9 %  - from the first DEAD declaration to 99.9 % of survivors
  join spread 99.9 %     - from the join to 99.9 % of the survivors holding it ALIVE
  false positives        - DEAD/ZOMBIE verdicts about any other node (or the wrong kind)
  traffic                - messages and bytes sent per node per second in the steady
                           window before t0 (bytes: payload + an estimated 200-byte
                           signed envelope; payload alone in brackets)
Runs with N >= 1,000 run in a subprocess each, to report their own wall time and
peak RSS (ru_maxrss: includes the interpreter).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _machine import machine

from vsmcp.mesh.membership import MembershipConfig, MemberState, MemberStateChanged
from vsmcp.mesh.simulator import ENVELOPE_OVERHEAD_BYTES, NetworkConfig, Simulator

SPREAD_FRACTION = 0.999


@dataclass
class Trial:
    n: int
    loss: float
    seed: int
    dead_first_s: float
    dead_all_s: float
    zombie_first_s: float
    zombie_all_s: float
    verdict_spread_s: float
    join_spread_s: float
    false_positives: int
    msgs_per_node_s: float
    bytes_per_node_s: float
    payload_bytes_per_node_s: float
    virtual_s: float
    wall_s: float
    peak_rss_mb: float


def _config(name: str) -> MembershipConfig:
    return MembershipConfig.lan() if name == "lan" else MembershipConfig.local()


def run_trial(n: int, loss: float, seed: int, config_name: str, timeout_s: float = 40.0) -> Trial:
    started = time.monotonic()
    cfg = _config(config_name)
    sim = Simulator(n, cfg, seed=seed, network=NetworkConfig(loss=loss, wire_roundtrip=n <= 100))
    warmup = 6.0 if n <= 100 else 2.5 if n <= 1000 else 2.0
    window = 3.0 if n <= 100 else 1.0
    sim.run_until(warmup - window)
    msgs0, bytes0 = sim.messages_sent, sim.bytes_sent
    sim.run_until(warmup)
    msgs = sim.messages_sent - msgs0
    byts = sim.bytes_sent - bytes0
    t0 = sim.now
    killed, stopped = sim.ids[1], sim.ids[2]
    survivors = set(sim.ids) - {killed, stopped}
    need_all = len(survivors)
    need_spread = math.ceil(SPREAD_FRACTION * len(survivors))
    holders: dict[tuple[str, MemberState], set[str]] = {}
    firsts: dict[tuple[str, MemberState], float] = {}
    reached: dict[tuple[str, MemberState, int], float] = {}
    false_positives = 0

    def listener(now: float, observer: str, event: MemberStateChanged) -> None:
        nonlocal false_positives
        if event.new in (MemberState.DEAD, MemberState.ZOMBIE):
            expected = {killed: MemberState.DEAD, stopped: MemberState.ZOMBIE}.get(event.member)
            if expected is None or (event.new != expected and observer in survivors):
                false_positives += 1
        if observer not in survivors:
            return
        for (member, state), group in holders.items():
            if member == event.member:
                if event.new == state:
                    group.add(observer)
                else:
                    group.discard(observer)
                key = (member, state)
                if event.new == state and key not in firsts:
                    firsts[key] = now
                for count in (need_spread, need_all):
                    if len(group) >= count and (member, state, count) not in reached:
                        reached[(member, state, count)] = now

    sim.listeners.append(listener)
    holders[(killed, MemberState.DEAD)] = set()
    holders[(stopped, MemberState.ZOMBIE)] = set()
    sim.kill(killed)
    sim.stop(stopped)
    joiner = sim.add_node()
    holders[(joiner, MemberState.ALIVE)] = set()

    def done() -> bool:
        return (
            all(
                (m, s, need_all) in reached
                for m, s in ((killed, MemberState.DEAD), (stopped, MemberState.ZOMBIE))
            )
            and (joiner, MemberState.ALIVE, need_spread) in reached
        )

    sim.run_until_true(done, timeout_s, step=0.1 if n < 1000 else 0.25)
    sim.run_for(1.0)  # a little more time for late false positives

    def first(key: tuple[str, MemberState]) -> float:
        value = firsts.get(key)
        return math.nan if value is None else value - t0

    def when(key: tuple[str, MemberState, int]) -> float:
        value = reached.get(key)
        return math.nan if value is None else value - t0

    dead_first = first((killed, MemberState.DEAD))
    spread_end = reached.get((killed, MemberState.DEAD, need_spread))
    verdict_spread = math.nan if spread_end is None else spread_end - (t0 + dead_first)
    return Trial(
        n=n,
        loss=loss,
        seed=seed,
        dead_first_s=dead_first,
        dead_all_s=when((killed, MemberState.DEAD, need_all)),
        zombie_first_s=first((stopped, MemberState.ZOMBIE)),
        zombie_all_s=when((stopped, MemberState.ZOMBIE, need_all)),
        verdict_spread_s=verdict_spread,
        join_spread_s=when((joiner, MemberState.ALIVE, need_spread)),
        false_positives=false_positives,
        msgs_per_node_s=msgs / n / window,
        bytes_per_node_s=byts / n / window,
        payload_bytes_per_node_s=(byts - msgs * ENVELOPE_OVERHEAD_BYTES) / n / window,
        virtual_s=sim.now,
        wall_s=time.monotonic() - started,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )


def run_isolated(n: int, loss: float, seed: int, config_name: str) -> Trial:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--single",
        str(n),
        str(loss),
        str(seed),
        "--config",
        config_name,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return Trial(**json.loads(result.stdout.strip().splitlines()[-1]))


def false_positive_soak(n: int, loss: float, seconds: float, seed: int, config_name: str) -> int:
    sim = Simulator(n, _config(config_name), seed=seed, network=NetworkConfig(loss=loss))
    count = 0

    def listener(now: float, observer: str, event: MemberStateChanged) -> None:
        nonlocal count
        if event.new in (MemberState.DEAD, MemberState.ZOMBIE):
            count += 1

    sim.listeners.append(listener)
    sim.run_until(seconds)
    return count


def _median(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def _fmt(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.2f}"


def machine_line() -> str:
    return machine()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--config", choices=("local", "lan"), default="local")
    parser.add_argument("--single", nargs=3, metavar=("N", "LOSS", "SEED"))
    args = parser.parse_args()
    if args.single:
        n, loss, seed = int(args.single[0]), float(args.single[1]), int(args.single[2])
        print(json.dumps(asdict(run_trial(n, loss, seed, args.config))))
        return
    sizes = [10, 100, 1000] if args.quick else [10, 100, 1000, 10_000]
    trials_for = {
        10: 5 if args.quick else 15,
        100: 3 if args.quick else 7,
        1000: 1 if args.quick else 3,
        10_000: 1,
    }
    losses = [0.0, 0.10, 0.25]
    print(f"# membership simulator, config .{args.config}(), {machine_line()}")
    header = (
        "| N | loss | trials | dead first | dead all | zombie first | zombie all | "
        "verdict 99.9% | join 99.9% | false pos | msg/node/s | B/node/s (payload) | "
        "wall s | peak RSS MB |"
    )
    print(header)
    print("|" + "---|" * 14)
    for n in sizes:
        for loss in losses:
            trials = []
            for k in range(trials_for[n]):
                seed = 1000 * n + 10 * k + int(loss * 100)
                if n >= 1000:
                    trials.append(run_isolated(n, loss, seed, args.config))
                else:
                    trials.append(run_trial(n, loss, seed, args.config))
            med = {
                f: _median([getattr(t, f) for t in trials])
                for f in (
                    "dead_first_s",
                    "dead_all_s",
                    "zombie_first_s",
                    "zombie_all_s",
                    "verdict_spread_s",
                    "join_spread_s",
                    "msgs_per_node_s",
                    "bytes_per_node_s",
                    "payload_bytes_per_node_s",
                    "wall_s",
                    "peak_rss_mb",
                )
            }
            fps = sum(t.false_positives for t in trials)
            rss = _fmt(med["peak_rss_mb"]) if n >= 1000 else "-"
            print(
                f"| {n} | {int(loss * 100)}% | {len(trials)} | {_fmt(med['dead_first_s'])} | "
                f"{_fmt(med['dead_all_s'])} | {_fmt(med['zombie_first_s'])} | "
                f"{_fmt(med['zombie_all_s'])} | {_fmt(med['verdict_spread_s'])} | "
                f"{_fmt(med['join_spread_s'])} | {fps} | {med['msgs_per_node_s']:.1f} | "
                f"{med['bytes_per_node_s']:.0f} ({med['payload_bytes_per_node_s']:.0f}) | "
                f"{_fmt(med['wall_s'])} | {rss} |",
                flush=True,
            )
    soak_s = 120.0 if args.quick else 600.0
    print()
    print(f"False-positive soak, N = 10, {soak_s:.0f} virtual s, no faults:")
    for loss in losses:
        fp = false_positive_soak(10, loss, soak_s, seed=7, config_name=args.config)
        print(f"- loss {int(loss * 100)}%: {fp} false DEAD/ZOMBIE verdicts", flush=True)


if __name__ == "__main__":
    main()
