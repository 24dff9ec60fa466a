"""Membership with real `vsmcpd` processes on loopback: detection, false positives, traffic.

    python benchmarks/bench_membership_real.py [--quick] [--presets local,lan] [--nodes 10]
        [--trials 10] [--fp-seconds 300] [--bandwidth-seconds 30] [--keep]

Per preset, one cluster of N nodes (`--dev`, HTTP and mesh on port 0, `--no-mdns`: they
join through seeds, so nodes of other jobs on the same host cannot wander in):

1. Bandwidth: every node's `vsmcp_mesh_envelope_bytes_total{direction=...}` read at
   the start and end of an idle window (nobody polled, nothing killed).
2. False positives: 2 busy-loop processes load both cores for `--fp-seconds` while
   nothing is killed and every node's /api/peers is polled every 200 ms. Afterwards
   the `mesh.member` audit entries of every node (its `vsmcp.db`) inside the window are
   counted: they catch transitions that the polls miss.
3. Zombie trials: SIGSTOP one node; each survivor's /api/peers is polled every 20 ms
   (one aiohttp keep-alive connection per node, all concurrently) until it reports the
   node "zombie"; then SIGCONT and the same until "alive" everywhere.
4. Dead trials: kill -9 one node, poll until every survivor reports it "dead", then
   start a fresh node (new identity) to keep N and wait until all agree it is alive.
Between trials the mesh settles: every node sees every other live node alive, plus
`SETTLE_S`. A trial's time is the slowest survivor's; per-survivor times are pooled too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from _machine import cpu_model

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.integration.harness import NodeProcess

DETECT_POLL_INTERVAL_S = 0.02
FP_POLL_INTERVAL_S = 0.2
DETECT_TIMEOUT_S = 30.0
ALIVE_TIMEOUT_S = 60.0
START_TIMEOUT_S = 120.0
SETTLE_S = 3.0
HTTP_TIMEOUT_S = 5.0
BAD_STATES = ("suspect", "zombie", "dead")
TARGET_DEAD_S = 2.0
TARGET_ZOMBIE_S = 4.0
TARGET_BANDWIDTH_BYTES_S = 5 * 1024
SEEDS_PER_NODE = 2
METRIC_BYTES = re.compile(r'vsmcp_mesh_envelope_bytes_total\{direction="(sent|received)"\} (\S+)')
HOG_CODE = "while True:\n    pass\n"


# --- cluster --------------------------------------------------------------------------


class Cluster:
    """N `vsmcpd` processes under one root dir; `live` are those not killed."""

    def __init__(self, root: Path, preset: str, size: int) -> None:
        self.root = root
        self.preset = preset
        self.size = size
        self.config = root / f"mesh-{preset}.toml"
        self.config.write_text(f'[mesh]\npreset = "{preset}"\n')
        self.all: list[NodeProcess] = []
        self.live: list[NodeProcess] = []

    def _spawn(self, seeds: list[NodeProcess]) -> NodeProcess:
        args = ["--config", str(self.config), "--no-mdns", "--log-level", "info"]
        for seed in seeds:
            args += ["--seed", f"{seed.node_id}@127.0.0.1:{seed.mesh_port}"]
        node = NodeProcess(self.root / f"{self.preset}-n{len(self.all)}", *args)
        self.all.append(node)
        node.start(wait=False)
        return node

    def start(self) -> None:
        first = self._spawn([])
        first.wait_ready(timeout_s=START_TIMEOUT_S)
        rest = [self._spawn([first]) for _ in range(self.size - 1)]
        for node in rest:
            node.wait_ready(timeout_s=START_TIMEOUT_S)
        self.live = [first, *rest]

    def replace(self, gone: NodeProcess) -> NodeProcess:
        self.live.remove(gone)
        seeds = random.sample(self.live, min(SEEDS_PER_NODE, len(self.live)))
        node = self._spawn(seeds)
        node.wait_ready(timeout_s=START_TIMEOUT_S)
        self.live.append(node)
        return node

    def settle_newcomer(self, newcomer: NodeProcess, attempts: int = 3) -> int:
        """Wait until the newest node has joined; a node that does not join within
        ALIVE_TIMEOUT_S is a join failure: its log is kept, it is stopped and another
        fresh node takes its place. Returns the number of failures."""
        failures = 0
        while True:
            try:
                self.wait_settled()
                return failures
            except RuntimeError as e:
                failures += 1
                saved = self.root / f"join-failure-{newcomer.node_id[-6:]}.log"
                saved.write_text(newcomer.log_text())
                print(f"JOIN FAILURE of {newcomer.node_id} (log: {saved}): {e}", flush=True)
                if failures >= attempts:
                    raise
                newcomer.stop()
                newcomer = self.replace(newcomer)

    def all_alive(self) -> bool:
        ids = {n.node_id for n in self.live}
        for node in self.live:
            states = node.peer_states()
            if any(states.get(other) != "alive" for other in ids - {node.node_id}):
                return False
        return True

    def wait_settled(self, timeout_s: float = ALIVE_TIMEOUT_S) -> float:
        """Wait until every live node sees every other alive, then `SETTLE_S` more."""
        started = time.monotonic()
        while not self.all_alive():
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"mesh not all alive after {timeout_s} s: {self.describe()}")
            time.sleep(0.1)
        took = time.monotonic() - started
        time.sleep(SETTLE_S)
        return took

    def describe(self) -> str:
        return "; ".join(
            f"{n.node_id[-6:]}: "
            + ",".join(f"{k[-6:]}={v}" for k, v in sorted(n.peer_states().items()) if v != "dead")
            for n in self.live
        )

    def stop(self) -> None:
        for node in self.all:
            with contextlib.suppress(Exception):
                node.stop()


# --- polling --------------------------------------------------------------------------


async def _peer_states(session: aiohttp.ClientSession, node: NodeProcess) -> dict[str, str]:
    try:
        async with session.get(node.url + "/api/peers") as response:
            data = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return {}
    return {p["id"]: p["state"] for p in data.get("peers", [])}


@dataclass
class Watch:
    """When one observer first reported `subject` in `state` (and first left alive)."""

    observer: str
    reached_s: float | None = None
    first_not_alive_s: float | None = None


async def _watch(
    session: aiohttp.ClientSession,
    node: NodeProcess,
    subject: str,
    state: str,
    t0: float,
    deadline: float,
) -> Watch:
    watch = Watch(node.node_id)
    while time.monotonic() < deadline:
        seen = (await _peer_states(session, node)).get(subject)
        now = time.monotonic()
        if seen is not None and seen != "alive" and watch.first_not_alive_s is None:
            watch.first_not_alive_s = now - t0
        if seen == state:
            watch.reached_s = now - t0
            return watch
        await asyncio.sleep(DETECT_POLL_INTERVAL_S)
    return watch


async def watch_transition(
    observers: list[NodeProcess], subject: str, state: str, act: Any
) -> tuple[list[Watch], float]:
    """Warm a keep-alive connection to every observer, call `act()` (the signal), then
    poll all observers concurrently until each reports `subject` in `state`. Also
    returns the wall-clock time of the signal (audit entries carry wall-clock ms)."""
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(_peer_states(session, o) for o in observers))
        t0, t0_wall = time.monotonic(), time.time()
        act()
        deadline = t0 + DETECT_TIMEOUT_S
        watches = await asyncio.gather(
            *(_watch(session, o, subject, state, t0, deadline) for o in observers)
        )
        return list(watches), t0_wall


# --- measurements ---------------------------------------------------------------------


@dataclass
class Trial:
    kind: str  # dead | zombie | recovered
    per_survivor_s: list[float]
    missed: int  # survivors that never reported the state within DETECT_TIMEOUT_S
    first_suspect_s: float | None
    subject: str = ""
    observers: list[Path] = field(default_factory=list)
    t0_wall: float = 0.0
    # From each survivor's own audit log (when its state changed, not when a poll saw it).
    audit_per_survivor_s: list[float] = field(default_factory=list)
    join_failures: int = 0  # fresh nodes that did not join after this (dead) trial

    @property
    def all_s(self) -> float | None:
        return max(self.per_survivor_s) if self.per_survivor_s and not self.missed else None

    @property
    def audit_all_s(self) -> float | None:
        complete = len(self.audit_per_survivor_s) == len(self.observers)
        return max(self.audit_per_survivor_s) if complete and self.observers else None

    def read_audit(self) -> None:
        state = {"recovered": "alive"}.get(self.kind, self.kind)
        since_ms = int(self.t0_wall * 1000)
        for data_dir in self.observers:
            with contextlib.closing(_audit_db(data_dir)) as conn:
                row = conn.execute(
                    "SELECT min(ts_ms) FROM audit_entries WHERE kind = 'mesh.member' "
                    "AND actor = ? AND json_extract(data, '$.new') = ? AND ts_ms >= ?",
                    (self.subject, state, since_ms),
                ).fetchone()
            if row and row[0] is not None:
                self.audit_per_survivor_s.append(row[0] / 1000 - self.t0_wall)


def _audit_db(data_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{data_dir / 'vsmcp.db'}?mode=ro", uri=True)


def _trial(
    kind: str, result: tuple[list[Watch], float], subject: str, observers: list[NodeProcess]
) -> Trial:
    watches, t0_wall = result
    reached = [w.reached_s for w in watches if w.reached_s is not None]
    # A resumed zombie starts not-alive: its first not-alive time means nothing.
    suspects = [w.first_not_alive_s for w in watches if w.first_not_alive_s is not None]
    first = min(suspects) if suspects and kind != "recovered" else None
    missed = len(watches) - len(reached)
    dirs = [o.data_dir for o in observers]
    return Trial(kind, reached, missed, first, subject, dirs, t0_wall)


def zombie_trial(cluster: Cluster) -> tuple[Trial, Trial]:
    sleeper = random.choice(cluster.live)
    survivors = [n for n in cluster.live if n is not sleeper]
    stopped = False

    def stop() -> None:
        nonlocal stopped
        sleeper.signal(signal.SIGSTOP)
        stopped = True

    try:
        zombie = asyncio.run(watch_transition(survivors, sleeper.node_id, "zombie", stop))
    finally:
        if stopped:
            resumed = asyncio.run(
                watch_transition(
                    survivors, sleeper.node_id, "alive", lambda: sleeper.signal(signal.SIGCONT)
                )
            )
    subject = sleeper.node_id
    return (
        _trial("zombie", zombie, subject, survivors),
        _trial("recovered", resumed, subject, survivors),
    )


def dead_trial(cluster: Cluster) -> Trial:
    victim = random.choice(cluster.live)
    survivors = [n for n in cluster.live if n is not victim]
    watches = asyncio.run(watch_transition(survivors, victim.node_id, "dead", victim.kill))
    victim.wait_exit()
    newcomer = cluster.replace(victim)
    trial = _trial("dead", watches, victim.node_id, survivors)
    trial.join_failures = cluster.settle_newcomer(newcomer)
    return trial


def _mesh_bytes(node: NodeProcess) -> dict[str, float]:
    text = node.get("/metrics")[1].decode()
    return {m.group(1): float(m.group(2)) for m in METRIC_BYTES.finditer(text)}


@dataclass
class Bandwidth:
    seconds: float
    sent_per_node_b_s: list[float]
    received_per_node_b_s: list[float]


def measure_bandwidth(nodes: list[NodeProcess], seconds: float) -> Bandwidth:
    before = [(_mesh_bytes(n), time.monotonic()) for n in nodes]
    time.sleep(seconds)
    sent, received = [], []
    for node, (b0, t0) in zip(nodes, before, strict=True):
        b1, t1 = _mesh_bytes(node), time.monotonic()
        sent.append((b1.get("sent", 0.0) - b0.get("sent", 0.0)) / (t1 - t0))
        received.append((b1.get("received", 0.0) - b0.get("received", 0.0)) / (t1 - t0))
    return Bandwidth(seconds, sent, received)


@dataclass
class FalsePositives:
    seconds: float
    window_ms: tuple[int, int]
    polled: dict[str, int] = field(default_factory=dict)  # state -> (observer, subject) pairs
    polls: int = 0
    audit: dict[str, int] = field(default_factory=dict)  # new state -> transitions
    audit_detail: list[str] = field(default_factory=list)
    bandwidth: Bandwidth | None = None
    loadavg: tuple[float, float, float] = (0.0, 0.0, 0.0)


def start_hogs(count: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", HOG_CODE]) for _ in range(count)]


def stop_hogs(hogs: list[subprocess.Popen[bytes]]) -> None:
    for hog in hogs:
        if hog.poll() is None:
            hog.kill()
        hog.wait(timeout=10)


async def _poll_states(nodes: list[NodeProcess], seconds: float, fp: FalsePositives) -> None:
    seen: dict[str, set[tuple[str, str]]] = {s: set() for s in BAD_STATES}
    ids = {n.node_id for n in nodes}
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            views = await asyncio.gather(*(_peer_states(session, n) for n in nodes))
            fp.polls += 1
            for node, states in zip(nodes, views, strict=True):
                for subject, state in states.items():
                    if subject in ids and state in seen:
                        seen[state].add((node.node_id, subject))
            await asyncio.sleep(FP_POLL_INTERVAL_S)
    fp.polled = {s: len(pairs) for s, pairs in seen.items()}


def false_positive_run(cluster: Cluster, seconds: float, hog_count: int) -> FalsePositives:
    nodes = list(cluster.live)
    start_ms = int(time.time() * 1000)
    fp = FalsePositives(seconds, (start_ms, start_ms))
    hogs = start_hogs(hog_count)
    try:
        # Bandwidth under load too: polls are HTTP, not mesh traffic.
        before = [(_mesh_bytes(n), time.monotonic()) for n in nodes]
        asyncio.run(_poll_states(nodes, seconds, fp))
        sent, received = [], []
        for node, (b0, t0) in zip(nodes, before, strict=True):
            b1, t1 = _mesh_bytes(node), time.monotonic()
            sent.append((b1.get("sent", 0.0) - b0.get("sent", 0.0)) / (t1 - t0))
            received.append((b1.get("received", 0.0) - b0.get("received", 0.0)) / (t1 - t0))
        fp.bandwidth = Bandwidth(seconds, sent, received)
        fp.loadavg = os.getloadavg()
    finally:
        stop_hogs(hogs)
    fp.window_ms = (start_ms, int(time.time() * 1000))
    return fp


def read_audit(fp: FalsePositives, nodes: list[NodeProcess], ids: dict[str, str]) -> None:
    """Count `mesh.member` transitions to suspect/zombie/dead inside the window, as
    recorded by each node (observer) about any other (subject)."""
    counts = {s: 0 for s in BAD_STATES}
    lo, hi = fp.window_ms
    for node in nodes:
        if not (node.data_dir / "vsmcp.db").exists():
            continue
        with contextlib.closing(_audit_db(node.data_dir)) as conn:
            rows = conn.execute(
                "SELECT ts_ms, actor, data FROM audit_entries WHERE kind = 'mesh.member' "
                "AND ts_ms BETWEEN ? AND ?",
                (lo, hi),
            ).fetchall()
        observer = ids.get(str(node.data_dir), "?")
        for ts_ms, actor, data in rows:
            change = json.loads(data)
            new, old = change.get("new"), change.get("old")
            if new in counts and old != new:
                counts[new] += 1
                fp.audit_detail.append(
                    f"+{(ts_ms - lo) / 1000:.1f}s {observer[-6:]} saw {actor[-6:]}: {old} -> {new}"
                )
    fp.audit = counts


# --- report ---------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


@dataclass
class PresetResult:
    preset: str
    nodes: int
    start_s: float
    bandwidth: Bandwidth
    fp: FalsePositives
    trials: list[Trial]
    wall_s: float


def _row(label: str, trials: list[Trial], target_s: float | None) -> str:
    alls = [t.all_s for t in trials if t.all_s is not None]
    pooled = [v for t in trials for v in t.per_survivor_s]
    missed = sum(t.missed for t in trials)
    suspects = [t.first_suspect_s for t in trials if t.first_suspect_s is not None]
    audit = [t.audit_all_s for t in trials if t.audit_all_s is not None]
    audit_cell = f"{_fmt(statistics.median(audit))} / {_fmt(max(audit))}" if audit else "-"
    if not alls:
        return f"| {label} | {len(trials)} | - | - | - | - | - | - | - | {missed} | - |"
    med = statistics.median(alls)
    target = "-" if target_s is None else f"≤ {target_s:g} s: {med / target_s:.0%} of it"
    return (
        f"| {label} | {len(trials)} | {_fmt(med)} | {_fmt(_pct(alls, 99))} | {_fmt(max(alls))} "
        f"| {_fmt(statistics.median(pooled))} | {_fmt(_pct(pooled, 99))} "
        f"| {_fmt(statistics.median(suspects) if suspects else None)} | {audit_cell} "
        f"| {missed} | {target} |"
    )


def report(results: list[PresetResult], args: argparse.Namespace, took_s: float) -> str:
    cpu = cpu_model()
    lines = [
        f"`python benchmarks/bench_membership_real.py{' --quick' if args.quick else ''}`"
        f" ({datetime.date.today().isoformat()})",
        "",
        f"Machine: nproc {os.cpu_count()}, {cpu}, Python {platform.python_version()}; "
        f"shared with other jobs (load average at start {args.load_at_start}).",
        f"N = {args.nodes} real `vsmcpd --dev` processes on loopback, joined through seeds "
        "(`--no-mdns`), one preset per cluster.",
        "",
        "Detection (seconds from the signal; a trial's time is when the LAST survivor "
        f"reports the state, polled every {DETECT_POLL_INTERVAL_S * 1000:.0f} ms; "
        "per-survivor = all survivors' times pooled; first not-alive = first survivor "
        "to report suspect or worse; audit = when each survivor's state changed, from its "
        "own `mesh.member` audit entries):",
        "",
        "| preset: event | trials | median all | p99 all | max all | median per-survivor "
        "| p99 per-survivor | first not-alive (median) | all, from audit logs: median / max "
        "| missed | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    targets = {"dead": TARGET_DEAD_S, "zombie": TARGET_ZOMBIE_S, "recovered": None}
    labels = {
        "dead": "kill -9 -> dead",
        "zombie": "SIGSTOP -> zombie",
        "recovered": "SIGCONT -> alive",
    }
    for r in results:
        for kind in ("dead", "zombie", "recovered"):
            trials = [t for t in r.trials if t.kind == kind]
            if trials:
                lines.append(_row(f"{r.preset}: {labels[kind]}", trials, targets[kind]))
    for r in results:
        dead = [t for t in r.trials if t.kind == "dead"]
        failures = sum(t.join_failures for t in dead)
        lines.append(
            f"\n{r.preset}: fresh nodes that did not join within {ALIVE_TIMEOUT_S:.0f} s "
            f"(replaced by another): {failures} of {len(dead) + failures}."
        )
    lines += [
        "",
        "False positives (nothing killed; 2 busy-loop processes on the 2 cores) and mesh "
        f"traffic (envelope bytes, target ≤ {TARGET_BANDWIDTH_BYTES_S // 1024} KB/s per node):",
        "",
        "| preset | run | transitions in audit logs: suspect / zombie / dead "
        "| (observer, subject) pairs seen by 200 ms polls: suspect / zombie / dead "
        "| sent B/s per node: mean / max | received B/s mean | load avg (1 min) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        bw = r.bandwidth
        lines.append(
            f"| {r.preset} | idle {bw.seconds:.0f} s, no load | - | - "
            f"| {statistics.mean(bw.sent_per_node_b_s):,.0f} / {max(bw.sent_per_node_b_s):,.0f} "
            f"| {statistics.mean(bw.received_per_node_b_s):,.0f} | - |"
        )
        fp = r.fp
        a, p = fp.audit, fp.polled
        fbw = fp.bandwidth
        assert fbw is not None
        lines.append(
            f"| {r.preset} | {fp.seconds:.0f} s under CPU hog, {fp.polls} polls "
            f"| {a.get('suspect', 0)} / {a.get('zombie', 0)} / {a.get('dead', 0)} "
            f"| {p.get('suspect', 0)} / {p.get('zombie', 0)} / {p.get('dead', 0)} "
            f"| {statistics.mean(fbw.sent_per_node_b_s):,.0f} / "
            f"{max(fbw.sent_per_node_b_s):,.0f} "
            f"| {statistics.mean(fbw.received_per_node_b_s):,.0f} | {fp.loadavg[0]:.1f} |"
        )
    lines += ["", f"(run took {took_s:.0f} s)"]
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------


def run_preset(root: Path, preset: str, args: argparse.Namespace) -> PresetResult:
    started = time.monotonic()
    cluster = Cluster(root, preset, args.nodes)
    trials: list[Trial] = []
    try:
        t = time.monotonic()
        cluster.start()
        cluster.wait_settled()
        start_s = time.monotonic() - t
        print(f"[{preset}] {args.nodes} nodes up and all alive in {start_s:.1f} s", flush=True)
        bandwidth = measure_bandwidth(cluster.live, args.bandwidth_seconds)
        print(
            f"[{preset}] idle mesh bytes/s per node sent: "
            + " ".join(f"{v:.0f}" for v in bandwidth.sent_per_node_b_s),
            flush=True,
        )
        fp = false_positive_run(cluster, args.fp_seconds, args.hogs)
        print(f"[{preset}] false-positive run: polls saw {fp.polled}", flush=True)
        fp_nodes = list(cluster.live)
        ids = {str(n.data_dir): n.node_id for n in fp_nodes}
        cluster.wait_settled()
        for i in range(args.trials):
            zombie, recovered = zombie_trial(cluster)
            trials += [zombie, recovered]
            print(
                f"[{preset}] zombie trial {i + 1}: all {_fmt(zombie.all_s)} s "
                f"(missed {zombie.missed}), alive again {_fmt(recovered.all_s)} s",
                flush=True,
            )
            cluster.wait_settled()
        for i in range(args.trials):
            dead = dead_trial(cluster)
            trials.append(dead)
            print(
                f"[{preset}] dead trial {i + 1}: all {_fmt(dead.all_s)} s "
                f"(per survivor {' '.join(f'{v:.2f}' for v in sorted(dead.per_survivor_s))})",
                flush=True,
            )
    finally:
        cluster.stop()
    read_audit(fp, fp_nodes, ids)
    for trial in trials:
        trial.read_audit()
    print(f"[{preset}] audit transitions in the false-positive window: {fp.audit}", flush=True)
    for line in fp.audit_detail[:40]:
        print("   ", line)
    return PresetResult(
        preset, args.nodes, start_s, bandwidth, fp, trials, time.monotonic() - started
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 trials, 60 s FP run")
    parser.add_argument("--presets", default="local,lan")
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--fp-seconds", type=float, default=None)
    parser.add_argument("--bandwidth-seconds", type=float, default=30.0)
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--keep", action="store_true", help="keep the data dirs")
    args = parser.parse_args()
    if args.trials is None:
        args.trials = 3 if args.quick else 10
    if args.fp_seconds is None:
        args.fp_seconds = 60.0 if args.quick else 300.0
    args.load_at_start = " ".join(f"{v:.1f}" for v in os.getloadavg())

    # SIGTERM/SIGINT unwind through the finally blocks, which stop every process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="bench-membership-real-"))
    results = []
    try:
        for preset in args.presets.split(","):
            results.append(run_preset(root, preset, args))
    finally:
        if not args.keep:
            subprocess.run(["rm", "-rf", str(root)], check=False)
        else:
            print(f"data dirs kept in {root}")
    text = report(results, args, time.monotonic() - started)
    print()
    print(text)


if __name__ == "__main__":
    main()
