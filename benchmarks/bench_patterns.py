"""Pattern engine throughput: events through publish → match → action on one core.

    python benchmarks/bench_patterns.py [--quick]

Two workloads over 20 synthetic event kinds (each a tagged msgspec struct with the
fields of a tool call):

- filters: 100 filter patterns, 5 per kind, 2-3 comparisons each (eq, ne, in, gt, ge,
  not, any), some comparisons shared between patterns of a kind; about 1 event in 6
  matches at least one pattern;
- windows: 20 count patterns (one per kind) grouped by origin (1,000 origins), 5 events
  within 1 s; timestamps advance 10 µs per event.

For each, the same events go through: the full path (EventStream.publish into a
subscriber buffer, the subscriber task's batch into PatternEngine.process_batch, each
match into an ActionDispatcher running a counting handler), the engine alone
(process_batch over a list), the stream alone (publish + drain into a no-op handler), and
the reference interpreter (on a tenth of the events). A third workload, patterns whose
condition is always false, measures the floor: the batch loop, the dispatch by class and
one call per event. Runs alternate so every variant
sees the same background load; the best of the rounds is reported, with the median.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec
from _machine import machine

from vsmcp.node.vsm.events import Event, EventCatalog
from vsmcp.node.vsm.patterns import ActionDispatcher, Match, PatternEngine, parse_patterns
from vsmcp.node.vsm.patterns.model import Action
from vsmcp.node.vsm.patterns.reference import ReferenceEngine
from vsmcp.node.vsm.stream import EventStream, Subscriber

KINDS = 20
ORIGINS = 1_000
TOOLS = [f"tool-{i}" for i in range(10)]
ZONES = ["public", "ops", "restricted"]
OUTCOMES = ["ok"] * 8 + ["error", "timeout"]
CHUNK = 4_096  # events published between two yields to the subscriber


def make_kinds() -> list[type[Event]]:
    kinds: list[type[Event]] = []
    for i in range(KINDS):
        cls = msgspec.defstruct(
            f"Kind{i}",
            [
                ("tool", str),
                ("origin", str),
                ("zone", str),
                ("priority", int),
                ("latency_ms", float),
                ("outcome", str),
            ],
            bases=(Event,),
            tag=f"k{i}",
            frozen=True,
            gc=False,
            kw_only=True,
        )
        kinds.append(cls)
    return kinds


def filter_patterns(i: int) -> list[dict[str, Any]]:
    kind = f"k{i}"
    act = [{"type": "algedonic", "valence": "pain", "intensity": 0.5}]

    def f(field: str, op: str, value: Any) -> dict[str, Any]:
        return {"field": field, "op": op, "value": value}

    wheres: list[dict[str, Any]] = [
        {"all": [f("outcome", "eq", "error"), f("latency_ms", "gt", 900.0)]},
        {"all": [f("outcome", "eq", "error"), f("tool", "in", ["tool-1", "tool-2"])]},
        {"all": [f("zone", "eq", "restricted"), f("priority", "ge", 9)]},
        {"all": [f("tool", "eq", "tool-3"), f("outcome", "ne", "ok"), f("zone", "ne", "ops")]},
        {"all": [{"not": f("zone", "eq", "public")}, f("latency_ms", "gt", 990.0)]},
    ]
    return [
        {"name": f"{kind}-p{j}", "kind": kind, "where": where, "actions": act}
        for j, where in enumerate(wheres)
    ]


def window_pattern(i: int) -> dict[str, Any]:
    return {
        "name": f"k{i}-burst",
        "kind": f"k{i}",
        "where": {"field": "outcome", "op": "ne", "value": "timeout"},
        "group_by": "origin",
        "window": {"count": 5, "within_s": 1.0},
        "actions": [{"type": "algedonic", "valence": "pain", "intensity": 0.5}],
    }


def make_events(kinds: list[type[Event]], n: int, seed: int) -> list[Event]:
    rng = random.Random(seed)
    events: list[Event] = []
    origins = [f"origin-{i}" for i in range(ORIGINS)]
    for j in range(n):
        cls: Any = kinds[rng.randrange(KINDS)]
        events.append(
            cls(
                ts=j * 1e-5,
                tool=rng.choice(TOOLS),
                origin=rng.choice(origins),
                zone=rng.choice(ZONES),
                priority=rng.randrange(10),
                latency_ms=rng.random() * 1000.0,
                outcome=rng.choice(OUTCOMES),
            )
        )
    return events


class Counting:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, match: Match, action: Action) -> None:
        self.n += 1


async def publish_all(stream: EventStream, sub: Subscriber, events: list[Event]) -> float:
    """Publish in chunks, yielding to the subscriber between chunks; the time until the
    stream has stopped (`stop` drains every buffered event)."""
    await stream.start()
    publish = stream.publish
    start = time.perf_counter()
    for i in range(0, len(events), CHUNK):
        for event in events[i : i + CHUNK]:
            publish(event)
        await asyncio.sleep(0)
    await stream.stop()
    elapsed = time.perf_counter() - start
    assert sub.delivered == len(events) and sub.dropped == 0
    return elapsed


def full_path(catalog: EventCatalog, patterns: Any, events: list[Event]) -> tuple[float, int]:
    """publish → subscriber batch → match → action; returns (seconds, actions run)."""
    counting = Counting()
    engine = PatternEngine(ActionDispatcher({"algedonic": counting}), catalog, patterns)

    async def run() -> float:
        stream = EventStream()
        sub = stream.subscribe("patterns", engine.process_batch, capacity=CHUNK * 2)
        return await publish_all(stream, sub, events)

    elapsed = asyncio.run(run())
    return elapsed, counting.n


def engine_only(catalog: EventCatalog, patterns: Any, events: list[Event]) -> tuple[float, int]:
    counting = Counting()
    engine = PatternEngine(ActionDispatcher({"algedonic": counting}), catalog, patterns)
    start = time.perf_counter()
    for i in range(0, len(events), CHUNK):
        engine.process_batch(events[i : i + CHUNK])
    return time.perf_counter() - start, counting.n


def stream_only(catalog: EventCatalog, patterns: Any, events: list[Event]) -> tuple[float, int]:
    async def run() -> float:
        stream = EventStream()
        sub = stream.subscribe("noop", lambda batch: None, capacity=CHUNK * 2)
        return await publish_all(stream, sub, events)

    return asyncio.run(run()), 0


def reference(catalog: EventCatalog, patterns: Any, events: list[Event]) -> tuple[float, int]:
    ref = ReferenceEngine(patterns, catalog)
    sample = events[: len(events) // 10]
    n = 0
    start = time.perf_counter()
    for event in sample:
        n += len(ref.process(event))
    return (time.perf_counter() - start) * 10, n * 10


Variant = Callable[[EventCatalog, Any, list[Event]], tuple[float, int]]


def measure(
    name: str, catalog: EventCatalog, patterns: Any, events: list[Event], rounds: int
) -> list[tuple[str, float, float, int]]:
    variants: list[tuple[str, Variant]] = [
        ("publish → match → action", full_path),
        ("engine alone (process_batch)", engine_only),
        ("stream alone (publish + drain)", stream_only),
        ("reference interpreter", reference),
    ]
    rates: dict[str, list[float]] = {v: [] for v, _ in variants}
    actions: dict[str, int] = {}
    for _ in range(rounds):
        for label, run in variants:
            seconds, n = run(catalog, patterns, events)
            rates[label].append(len(events) / seconds)
            actions[label] = n
    print(f"\n{name}: {len(events):,} events, {len(patterns)} patterns, {rounds} rounds")
    print("| variant | best events/s | median events/s | actions |")
    print("|---|---:|---:|---:|")
    rows = []
    for label, _ in variants:
        best, median = max(rates[label]), statistics.median(rates[label])
        rows.append((label, best, median, actions[label]))
        print(f"| {label} | {best:,.0f} | {median:,.0f} | {actions[label]:,} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short run (a few seconds)")
    args = parser.parse_args()
    n = 100_000 if args.quick else 400_000
    rounds = 3 if args.quick else 7
    kinds = make_kinds()
    catalog = EventCatalog(kinds)
    events = make_events(kinds, n, seed=7)
    filters = parse_patterns(
        [p for i in range(KINDS) for p in filter_patterns(i)], "<bench>", catalog
    )
    windows = parse_patterns([window_pattern(i) for i in range(KINDS)], "<bench>", catalog)
    print(machine(f"msgspec {msgspec.__version__}"))
    measure("filters (100 patterns over 20 kinds)", catalog, filters, events, rounds)
    measure("windows (20 group-by count patterns)", catalog, windows, events, rounds)
    # The floor: per event only the loop, the dispatch by class and a call to a matcher
    # whose body is empty (`any = []` never holds and compiles to nothing).
    never = parse_patterns(
        [{"name": f"k{i}-never", "kind": f"k{i}", "where": {"any": []}} for i in range(KINDS)],
        "<bench>",
        catalog,
    )
    measure("dispatch floor (20 patterns that never match)", catalog, never, events, rounds)


if __name__ == "__main__":
    main()
