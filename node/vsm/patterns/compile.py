"""The pattern engine: patterns compiled into one generated Python function per event
kind, dispatched by the event's class.

For each kind the engine writes the source of one function that loads each field the
kind's patterns use once, evaluates every condition shared by two or more patterns once
(goldrush's query union), then tests each pattern in order with short-circuit `and`/`or`
and calls its window or the sink. Nothing is interpreted per event.

The generated source is built only from validated data: field names are the event
struct's own attribute names (identifiers, checked again here), every value (strings,
numbers, `in` sets, compiled regexes, window methods, actions) is passed as a named
constant in the function's namespace, never written into the source.

`replace(patterns)` is all-or-nothing: the new set is validated and compiled before
anything changes, and a pattern whose window-relevant definition is unchanged keeps its
window state (its groups and counts).
"""

from __future__ import annotations

import keyword
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vsmcp.node.vsm.errors import PatternError
from vsmcp.node.vsm.events import NODE_CATALOG, Event, EventCatalog, EventKind
from vsmcp.node.vsm.patterns.actions import Match, MatchSink
from vsmcp.node.vsm.patterns.model import (
    All,
    AnyOf,
    Compare,
    Condition,
    Not,
    Pattern,
    validate_patterns,
)
from vsmcp.node.vsm.patterns.windows import CountWindowState, SequenceState, WindowState

KindMatcher = Callable[[Event], None]

_COMPARE_SOURCE = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


@dataclass
class SwapReport:
    """What a `replace` did with window state, by pattern name."""

    kept: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


class _Generator:
    """Writes the matcher of one kind: its source lines and its constants."""

    def __init__(self, kind: EventKind) -> None:
        self.kind = kind
        self.ns: dict[str, Any] = {"_kind": kind.name}
        self.fields: list[str] = []
        self.shared: dict[tuple[object, ...], str] = {}
        self._n = 0

    def const(self, value: object) -> str:
        name = f"_k{self._n}"
        self._n += 1
        self.ns[name] = value
        return name

    def var(self, field_name: str) -> str:
        if field_name == "kind":
            return "_kind"
        if not field_name.isidentifier() or keyword.iskeyword(field_name):
            raise PatternError("<compile>", "", f"field {field_name!r} is not an identifier")
        if field_name not in self.kind.cls.__struct_fields__:
            raise PatternError("<compile>", "", f"{self.kind.name} has no field {field_name!r}")
        if field_name not in self.fields:
            self.fields.append(field_name)
        return f"\x00{field_name}\x00"  # resolved by `finish`: a local or `ev.<field>`

    def finish(self, lines: list[str]) -> str:
        """The function's source: a field read twice or more is loaded once into a local;
        one read once stays an attribute read where it is used (maybe never, thanks to
        short-circuiting)."""
        text = "\n".join(lines)
        loads = []
        for name in self.fields:
            placeholder = f"\x00{name}\x00"
            if text.count(placeholder) > 1:
                loads.append(f"    v_{name} = ev.{name}")
                text = text.replace(placeholder, f"v_{name}")
            else:
                text = text.replace(placeholder, f"ev.{name}")
        return "\n".join(["def _match(ev):", *loads, text, "    return"]) + "\n"

    def leaf(self, compare: Compare) -> str:
        """A compare as an expression; absent (None) fields fail every comparison."""
        v = self.var(compare.field)
        op = compare.op
        if op == "exists":
            return f"({v} is not None)"
        if op == "absent":
            return f"({v} is None)"
        if op == "in":
            assert isinstance(compare.value, tuple)
            test = f"{v} in {self.const(frozenset(compare.value))}"
        elif op == "regex":
            assert isinstance(compare.value, str)
            test = f"{self.const(re.compile(compare.value).search)}({v}) is not None"
        else:
            test = f"{v} {_COMPARE_SOURCE[op]} {self.const(compare.value)}"
        if self.kind.fields[compare.field].optional:
            return f"({v} is not None and {test})"
        return f"({test})"

    def expr(self, condition: Condition | None) -> str:
        if condition is None:
            return "True"
        if isinstance(condition, Compare):
            shared = self.shared.get(_leaf_key(condition))
            return shared if shared is not None else self.leaf(condition)
        if isinstance(condition, All):
            if not condition.terms:
                return "True"
            return "(" + " and ".join(self.expr(t) for t in condition.terms) + ")"
        if isinstance(condition, AnyOf):
            if not condition.terms:
                return "False"
            return "(" + " or ".join(self.expr(t) for t in condition.terms) + ")"
        return f"(not {self.expr(condition.term)})"


def _leaf_key(compare: Compare) -> tuple[object, ...]:
    value = compare.value
    return (compare.field, compare.op, type(value).__name__, value)


def _leaves(condition: Condition | None) -> Iterable[Compare]:
    if condition is None:
        return
    if isinstance(condition, Compare):
        yield condition
    elif isinstance(condition, All | AnyOf):
        for term in condition.terms:
            yield from _leaves(term)
    elif isinstance(condition, Not):
        yield from _leaves(condition.term)


@dataclass
class _Role:
    index: int
    pattern: Pattern
    then: bool  # the B of a sequence; else the pattern's own kinds


def _compile_kind(
    kind: EventKind,
    roles: list[_Role],
    states: Sequence[WindowState | None],
    counts: list[int],
    sink: MatchSink,
) -> tuple[KindMatcher, str]:
    gen = _Generator(kind)
    gen.ns.update({"_c": counts, "_sink": sink, "_M": Match, "_deque": deque})
    conditions = [_role_condition(r) for r in roles]
    # The query union: a comparison used by two or more patterns is evaluated once.
    uses = Counter(_leaf_key(leaf) for c in conditions for leaf in set(_leaves(c)))
    prelude: list[str] = []
    for c in conditions:
        for leaf in _leaves(c):
            key = _leaf_key(leaf)
            if uses[key] > 1 and key not in gen.shared:
                name = f"s{len(gen.shared)}"
                prelude.append(f"    {name} = {gen.leaf(leaf)}")
                gen.shared[key] = name
    body: list[str] = []
    for role, condition in zip(roles, conditions, strict=True):
        body.extend(_pattern_lines(gen, role, condition, states[role.index]))
    source = gen.finish([*prelude, *body])
    code = compile(source, f"<patterns:{kind.name}>", "exec")
    exec(code, gen.ns)  # source built from validated names only; values are constants
    matcher: KindMatcher = gen.ns["_match"]
    return matcher, source


def _role_condition(role: _Role) -> Condition | None:
    then = role.pattern.then
    return then.where if role.then and then is not None else role.pattern.where


def _pattern_lines(
    gen: _Generator, role: _Role, condition: Condition | None, state: WindowState | None
) -> list[str]:
    pattern, i = role.pattern, role.index
    test = gen.expr(condition)
    name, actions = gen.const(pattern.name), gen.const(pattern.actions)
    key = gen.var(pattern.group_by) if pattern.group_by else "None"
    fire = [f"_c[{i}] += 1", f"_sink(_M({name}, ev, {key}, _n, {actions}))"]
    if state is None:
        lines = [f"_c[{i}] += 1", f"_sink(_M({name}, ev, None, 1, {actions}))"]
    elif isinstance(state, CountWindowState):
        lines = _count_window_lines(gen, state, key, i, name, actions)
    elif role.then:
        ts = gen.var("ts")
        lines = [f"_n = {gen.const(state.then)}({ts}, {key})", "if _n:", *_indent(fire)]
    else:
        lines = [f"{gen.const(state.first)}({gen.var('ts')}, {key})"]
    if test != "True":
        lines = [f"if {test}:", *_indent(lines)]
    return _indent(lines)


def _count_window_lines(
    gen: _Generator, state: CountWindowState, key: str, i: int, name: str, actions: str
) -> list[str]:
    """A count window's update, inline (a call and five attribute reads less per event
    than a method); the state object owns the groups, so a swap that keeps it keeps them."""
    groups, st = gen.const(state.groups), gen.const(state)
    within, count, max_groups = (
        gen.const(state.within_s),
        gen.const(state.count),
        gen.const(state.max_groups),
    )
    return [
        f"_t = {gen.var('ts')}",
        f"_key = {key}",
        f"_q = {groups}.pop(_key, None)",
        "if _q is None:",
        f"    if len({groups}) >= {max_groups}:",
        f"        del {groups}[next(iter({groups}))]",
        f"        {st}.evictions += 1",
        "    _q = _deque()",
        "elif _q and _t < _q[-1]:",
        "    _t = _q[-1]",
        f"_cut = _t - {within}",
        "while _q and _q[0] <= _cut:",
        "    _q.popleft()",
        "_q.append(_t)",
        f"{groups}[_key] = _q",
        f"if len(_q) >= {count}:",
        "    _q.clear()",
        f"    _c[{i}] += 1",
        f"    _sink(_M({name}, ev, _key, {count}, {actions}))",
    ]


def _indent(lines: list[str]) -> list[str]:
    return ["    " + line for line in lines]


def _new_state(pattern: Pattern) -> WindowState | None:
    if pattern.window is not None:
        return CountWindowState(pattern.window.count, pattern.window.within_s, pattern.max_groups)
    if pattern.then is not None:
        return SequenceState(pattern.then.within_s, pattern.max_groups)
    return None


class _CompiledSet:
    """One compiled pattern set: the dispatch table and what it closes over."""

    def __init__(
        self,
        patterns: tuple[Pattern, ...],
        states: list[WindowState | None],
        catalog: EventCatalog,
        sink: MatchSink,
    ) -> None:
        self.patterns = patterns
        self.states = states
        self.counts = [0] * len(patterns)
        self.dispatch: dict[type[Event], KindMatcher] = {}
        self.sources: dict[str, str] = {}
        roles: dict[str, list[_Role]] = {}
        for index, pattern in enumerate(patterns):
            if pattern.then is not None:
                for kind in pattern.then.kinds:
                    roles.setdefault(kind, []).append(_Role(index, pattern, then=True))
            for kind in pattern.kinds:
                roles.setdefault(kind, []).append(_Role(index, pattern, then=False))
        for kind_name, kind_roles in roles.items():
            event_kind = catalog.kinds[kind_name]
            matcher, source = _compile_kind(event_kind, kind_roles, states, self.counts, sink)
            self.dispatch[event_kind.cls] = matcher
            self.sources[kind_name] = source


class PatternEngine:
    """Matches events against a pattern set; every match goes to `sink`.

    Not thread-safe: run it on the event loop (the stream's subscriber task) only.
    """

    def __init__(
        self,
        sink: MatchSink,
        catalog: EventCatalog = NODE_CATALOG,
        patterns: Sequence[Pattern] = (),
    ) -> None:
        self._sink = sink
        self._catalog = catalog
        self._set = _CompiledSet((), [], catalog, sink)
        self._dispatch_get = self._set.dispatch.get
        self._totals: Counter[str] = Counter()
        self.bad_events = 0  # events whose field values had the wrong type
        self.events = 0
        if patterns:
            self.replace(patterns, source="<init>")

    @property
    def patterns(self) -> tuple[Pattern, ...]:
        return self._set.patterns

    @property
    def catalog(self) -> EventCatalog:
        return self._catalog

    def replace(self, patterns: Sequence[Pattern], source: str = "<replace>") -> SwapReport:
        """Swap in a new pattern set, all or nothing (raises `PatternError`, changing
        nothing, when any pattern is refused). Unchanged patterns keep their windows."""
        checked = validate_patterns(patterns, source, self._catalog)
        old = {
            p.name: (p.state_identity(), state)
            for p, state in zip(self._set.patterns, self._set.states, strict=True)
        }
        report = SwapReport()
        states: list[WindowState | None] = []
        for pattern in checked:
            previous = old.get(pattern.name)
            state: WindowState | None
            if previous is not None and previous[1] is not None:
                identity, kept = previous
                if identity == pattern.state_identity():
                    state = kept
                    report.kept.append(pattern.name)
                else:
                    state = _new_state(pattern)
                    report.fresh.append(pattern.name)
            else:
                state = _new_state(pattern)
                if state is not None:
                    report.fresh.append(pattern.name)
            states.append(state)
        compiled = _CompiledSet(checked, states, self._catalog, self._sink)
        new_names = {p.name for p in checked}
        report.removed = [name for name in old if name not in new_names]
        self._fold_counts()
        self._set = compiled
        self._dispatch_get = compiled.dispatch.get
        return report

    def _fold_counts(self) -> None:
        for pattern, count in zip(self._set.patterns, self._set.counts, strict=True):
            if count:
                self._totals[pattern.name] += count

    def process(self, event: Event) -> None:
        """Match one event (see `process_batch` for many)."""
        self.process_batch((event,))

    def process_batch(self, events: Sequence[Event]) -> None:
        """Match events in order. An event with a field of the wrong type (a producer
        that built a struct by hand) is counted in `bad_events` and the rest go on."""
        get = self._dispatch_get
        it = iter(events)
        while True:
            try:
                for event in it:
                    matcher = get(event.__class__)
                    if matcher is not None:
                        matcher(event)
                break
            except TypeError:
                self.bad_events += 1
        self.events += len(events)

    def match_counts(self) -> dict[str, int]:
        """Matches per pattern name since the engine was made (across swaps)."""
        totals = Counter(self._totals)
        for pattern, count in zip(self._set.patterns, self._set.counts, strict=True):
            totals[pattern.name] += count
        return {p.name: totals[p.name] for p in self._set.patterns}

    def window_stats(self) -> dict[str, dict[str, int]]:
        """Per windowed pattern: groups held, timestamps held, evictions."""
        out: dict[str, dict[str, int]] = {}
        for pattern, state in zip(self._set.patterns, self._set.states, strict=True):
            if state is not None:
                out[pattern.name] = {
                    "groups": len(state.groups),
                    "held": state.held(),
                    "evictions": state.evictions,
                }
        return out

    def source(self, kind: str) -> str:
        """The generated source of a kind's matcher (for debugging and docs)."""
        return self._set.sources.get(kind, "")
