"""The compiled engine and the plain reference interpreter agree on random patterns and
event streams, windows, group bounds and hot swaps included. Timestamps come from the
events, so every example is deterministic."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from vsmcp.node.vsm.events import Event, EventCatalog
from vsmcp.node.vsm.patterns import Match, PatternEngine, parse_patterns
from vsmcp.node.vsm.patterns.model import Pattern
from vsmcp.node.vsm.patterns.reference import ReferenceEngine


class PA(Event, frozen=True, gc=False, kw_only=True, tag="pa"):
    s: str
    n: float
    g: str
    o: str | None = None
    b: bool = False


class PB(Event, frozen=True, gc=False, kw_only=True, tag="pb"):
    s: str
    n: float
    g: str
    x: int = 0


CATALOG = EventCatalog([PA, PB])
FIELDS = {"pa": {"s": "str", "n": "num", "g": "str", "o": "str", "b": "bool", "kind": "str"}}
FIELDS["pb"] = {"s": "str", "n": "num", "g": "str", "x": "num", "kind": "str"}
STRINGS = ["a", "b", "ab", "", "pa", "pb"]
NUMBERS = [-2, 0, 1, 2, 0.5, 2.5]
REGEXES = ["^a", "b$", "a|p", ".", "^$"]
OPS = {
    "str": ["eq", "ne", "lt", "le", "gt", "ge", "in", "regex", "exists", "absent"],
    "num": ["eq", "ne", "lt", "le", "gt", "ge", "in", "exists", "absent"],
    "bool": ["eq", "ne", "in", "exists", "absent"],
}


def scalar(base: str) -> st.SearchStrategy[Any]:
    if base == "str":
        return st.sampled_from(STRINGS)
    if base == "num":
        return st.sampled_from(NUMBERS)
    return st.booleans()


def common_fields(kinds: list[str]) -> dict[str, str]:
    fields = dict(FIELDS[kinds[0]])
    for kind in kinds[1:]:
        fields = {f: t for f, t in fields.items() if FIELDS[kind].get(f) == t}
    return fields


@st.composite
def leaf(draw: st.DrawFn, fields: dict[str, str]) -> dict[str, Any]:
    field = draw(st.sampled_from(sorted(fields)))
    base = fields[field]
    op = draw(st.sampled_from(OPS[base]))
    if op in ("exists", "absent"):
        return {"field": field, "op": op}
    if op == "regex":
        return {"field": field, "op": op, "value": draw(st.sampled_from(REGEXES))}
    if op == "in":
        return {"field": field, "op": op, "value": draw(st.lists(scalar(base), max_size=3))}
    return {"field": field, "op": op, "value": draw(scalar(base))}


def condition(fields: dict[str, str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.recursive(
        leaf(fields),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3).map(lambda t: {"all": t}),
            st.lists(inner, max_size=3).map(lambda t: {"any": t}),
            inner.map(lambda t: {"not": t}),
        ),
        max_leaves=6,
    )


KIND_SETS = st.sampled_from([["pa"], ["pb"], ["pa", "pb"], ["pb", "pa"]])


@st.composite
def raw_pattern(draw: st.DrawFn, name: str) -> dict[str, Any]:
    kinds = draw(KIND_SETS)
    raw: dict[str, Any] = {"name": name, "kinds": kinds}
    fields = common_fields(kinds)
    if draw(st.booleans()):
        raw["where"] = draw(condition(fields))
    shape = draw(st.sampled_from(["filter", "window", "sequence"]))
    if shape == "filter":
        return raw
    raw["max_groups"] = draw(st.integers(1, 3))
    within = draw(st.sampled_from([0.5, 1.0, 2.5, 5.0]))
    if shape == "window":
        raw["window"] = {"count": draw(st.integers(1, 4)), "within_s": within}
        group_fields = [f for f in fields if f != "kind"]
    else:
        then_kinds = draw(KIND_SETS)
        raw["then"] = {"kinds": then_kinds, "within_s": within}
        if draw(st.booleans()):
            raw["then"]["where"] = draw(condition(common_fields(then_kinds)))
        both = common_fields(kinds + then_kinds)
        group_fields = [f for f in both if f != "kind"]
    group = draw(st.sampled_from([None, *sorted(group_fields)]))
    if group is not None:
        raw["group_by"] = group
    return raw


@st.composite
def pattern_set(draw: st.DrawFn, prefix: str = "p") -> list[dict[str, Any]]:
    count = draw(st.integers(1, 6))
    return [draw(raw_pattern(f"{prefix}{i}")) for i in range(count)]


# Half-second steps over a few seconds, so events often fall exactly on a window's edge.
TIMES = st.integers(0, 24).map(lambda i: i / 2)


@st.composite
def event(draw: st.DrawFn) -> Event:
    ts = draw(TIMES)
    common = {
        "ts": ts,
        "s": draw(st.sampled_from(STRINGS)),
        "n": draw(st.sampled_from(NUMBERS)),
        "g": draw(st.sampled_from(["g1", "g2", "g3"])),
    }
    if draw(st.booleans()):
        return PA(**common, o=draw(st.sampled_from([None, "a", "b"])), b=draw(st.booleans()))
    return PB(**common, x=draw(st.integers(-2, 2)))


def sorted_times(events: list[Event], shuffle: bool) -> list[Event]:
    """Mostly-ordered streams (as a node sees them) and some shuffled ones."""
    if shuffle:
        return events
    return sorted(events, key=lambda e: e.ts)


def run_both(
    sets: list[tuple[Pattern, ...]], streams: list[list[Event]], chunk: int
) -> tuple[list[tuple[str, int, Any, int]], list[tuple[str, int, Any, int]], Any, Any]:
    got: list[Match] = []
    engine = PatternEngine(got.append, CATALOG, sets[0])
    reference = ReferenceEngine(sets[0], CATALOG)
    engine_out: list[tuple[str, int, Any, int]] = []
    reference_out: list[tuple[str, int, Any, int]] = []
    index = 0
    for step, events in enumerate(streams):
        if step:
            engine.replace(sets[step])
            reference.replace(sets[step])
        position = {id(e): index + i for i, e in enumerate(events)}
        for start in range(0, len(events), chunk):
            engine.process_batch(events[start : start + chunk])
        engine_out.extend((m.pattern, position[id(m.event)], m.group, m.count) for m in got)
        got.clear()
        for i, e in enumerate(events):
            reference_out.extend((name, index + i, g, c) for name, g, c in reference.process(e))
        index += len(events)
    evictions = {name: s["evictions"] for name, s in engine.window_stats().items()}
    return engine_out, reference_out, evictions, reference.evictions()


@given(
    raw=pattern_set(),
    events=st.lists(event(), max_size=60),
    shuffle=st.booleans(),
    chunk=st.integers(1, 16),
)
def test_compiled_engine_agrees_with_the_reference(
    raw: list[dict[str, Any]], events: list[Event], shuffle: bool, chunk: int
) -> None:
    patterns = parse_patterns(raw, "<hypothesis>", CATALOG)
    engine_out, reference_out, engine_ev, reference_ev = run_both(
        [patterns], [sorted_times(events, shuffle)], chunk
    )
    assert engine_out == reference_out
    assert engine_ev == reference_ev


@st.composite
def swapped(draw: st.DrawFn, first: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A second set: each old pattern kept, dropped, or changed (same name), plus new."""
    second: list[dict[str, Any]] = []
    for raw in first:
        fate = draw(st.sampled_from(["keep", "drop", "change", "new_actions"]))
        if fate == "keep":
            second.append(raw)
        elif fate == "change":
            second.append(draw(raw_pattern(raw["name"])))
        elif fate == "new_actions":
            second.append({**raw, "actions": [{"type": "emit", "label": "swapped"}]})
    second.extend(draw(pattern_set("q")))
    return second


@given(
    data=st.data(),
    first=pattern_set(),
    before=st.lists(event(), max_size=40),
    after=st.lists(event(), max_size=40),
)
def test_hot_swap_agrees_with_the_reference(
    data: st.DataObject, first: list[dict[str, Any]], before: list[Event], after: list[Event]
) -> None:
    second = data.draw(swapped(first))
    sets = [parse_patterns(raw, "<hypothesis>", CATALOG) for raw in (first, second)]
    streams = [sorted(before, key=lambda e: e.ts), sorted(after, key=lambda e: e.ts)]
    engine_out, reference_out, engine_ev, reference_ev = run_both(sets, streams, chunk=7)
    assert engine_out == reference_out
    assert engine_ev == reference_ev


def test_the_property_catalog_is_what_the_strategies_assume() -> None:
    for kind, fields in FIELDS.items():
        known = CATALOG.kinds[kind].fields
        assert {f: known[f].base for f in fields} == fields
    assert msgspec.structs.fields(PA)  # a real struct, decoded like the node's events
