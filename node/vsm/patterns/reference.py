"""A plain interpreter of patterns: the definition the compiled engine is tested against.

Slow on purpose: it walks each condition for each event and keeps windows as lists in
recency order, so each rule is written once, plainly. Same rules as `windows.py`:

- a comparison on an absent (None) field is false (`ne` too); `exists`/`absent` test None;
- a count window fires when `count` matching events of a group have times in
  (t - within_s, t], then empties the group; an event older than the newest time still
  held for its group counts at that newest time;
- a sequence keeps the latest A per group (same clamp); a B consumes the A and fires
  when `t_B - t_A <= within_s`; for one pattern, an event is tried as a B before as an A;
- a group beyond `max_groups` evicts the group least recently touched.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from vsmcp.node.vsm.events import Event, EventCatalog, Scalar
from vsmcp.node.vsm.patterns.model import All, AnyOf, Compare, Condition, Not, Pattern

MatchRecord = tuple[str, Scalar, int]  # pattern, group, count


def field_value(event: Event, field: str, catalog: EventCatalog) -> Any:
    if field == "kind":
        return catalog.by_class[type(event)].name
    return getattr(event, field)


def holds(condition: Condition | None, event: Event, catalog: EventCatalog) -> bool:
    if condition is None:
        return True
    if isinstance(condition, All):
        return all(holds(t, event, catalog) for t in condition.terms)
    if isinstance(condition, AnyOf):
        return any(holds(t, event, catalog) for t in condition.terms)
    if isinstance(condition, Not):
        return not holds(condition.term, event, catalog)
    return _compare(condition, field_value(event, condition.field, catalog))


def _compare(c: Compare, value: Any) -> bool:
    if c.op == "exists":
        return value is not None
    if c.op == "absent":
        return value is None
    if value is None:
        return False
    if c.op == "eq":
        return bool(value == c.value)
    if c.op == "ne":
        return bool(value != c.value)
    if c.op == "lt":
        return bool(value < c.value)
    if c.op == "le":
        return bool(value <= c.value)
    if c.op == "gt":
        return bool(value > c.value)
    if c.op == "ge":
        return bool(value >= c.value)
    if c.op == "in":
        assert isinstance(c.value, tuple)
        return any(value == v for v in c.value)
    if c.op == "regex":
        assert isinstance(c.value, str)
        return re.search(c.value, value) is not None
    raise ValueError(f"unknown operator {c.op!r}")


class _Groups:
    """Groups in recency order (least recent first), as a plain list of [key, value]."""

    def __init__(self, max_groups: int) -> None:
        self.max_groups = max_groups
        self.items: list[list[Any]] = []
        self.evictions = 0

    def take(self, key: Scalar) -> list[Any] | None:
        """Remove and return the group's [key, value], or None."""
        for i, item in enumerate(self.items):
            if item[0] == key:
                return self.items.pop(i)
        return None

    def put(self, item: list[Any]) -> None:
        self.items.append(item)

    def make_room(self) -> None:
        if len(self.items) >= self.max_groups:
            self.items.pop(0)
            self.evictions += 1


class ReferenceEngine:
    """Feed events with `process`; it returns the matches of each, in pattern order."""

    def __init__(self, patterns: Sequence[Pattern], catalog: EventCatalog) -> None:
        self.catalog = catalog
        self.patterns: tuple[Pattern, ...] = ()
        self.groups: dict[str, _Groups] = {}
        self.replace(patterns)

    def replace(self, patterns: Sequence[Pattern]) -> None:
        """Same rule as the engine: a pattern with an unchanged state identity keeps
        its groups; any other windowed pattern starts empty."""
        old = {p.name: p for p in self.patterns}
        groups: dict[str, _Groups] = {}
        for p in patterns:
            if p.window is None and p.then is None:
                continue
            before = old.get(p.name)
            if before is not None and before.state_identity() == p.state_identity():
                groups[p.name] = self.groups[p.name]
            else:
                groups[p.name] = _Groups(p.max_groups)
        self.patterns = tuple(patterns)
        self.groups = groups

    def process(self, event: Event) -> list[MatchRecord]:
        kind = self.catalog.by_class[type(event)].name
        matches: list[MatchRecord] = []
        for p in self.patterns:
            then = p.then
            if then is not None and kind in then.kinds and holds(then.where, event, self.catalog):
                key = self._group(p, event)
                if self._sequence_b(p, key, event.ts):
                    matches.append((p.name, key, 2))
            if kind not in p.kinds or not holds(p.where, event, self.catalog):
                continue
            key = self._group(p, event)
            if p.window is not None:
                count = self._count(p, key, event.ts)
                if count:
                    matches.append((p.name, key, count))
            elif p.then is not None:
                self._sequence_a(p, key, event.ts)
            else:
                matches.append((p.name, None, 1))
        return matches

    def _group(self, p: Pattern, event: Event) -> Scalar:
        if p.group_by is None:
            return None
        value: Scalar = field_value(event, p.group_by, self.catalog)
        return value

    def _count(self, p: Pattern, key: Scalar, ts: float) -> int:
        assert p.window is not None
        groups = self.groups[p.name]
        item = groups.take(key)
        if item is None:
            groups.make_room()
            item = [key, []]
        times: list[float] = item[1]
        if times and ts < max(times):
            ts = max(times)
        times[:] = [t for t in times if t > ts - p.window.within_s]
        times.append(ts)
        groups.put(item)
        if len(times) >= p.window.count:
            times.clear()
            return p.window.count
        return 0

    def _sequence_a(self, p: Pattern, key: Scalar, ts: float) -> None:
        groups = self.groups[p.name]
        item = groups.take(key)
        if item is None:
            groups.make_room()
            item = [key, ts]
        else:
            item[1] = max(item[1], ts)
        groups.put(item)

    def _sequence_b(self, p: Pattern, key: Scalar, ts: float) -> bool:
        assert p.then is not None
        item = self.groups[p.name].take(key)
        return item is not None and ts - item[1] <= p.then.within_s

    def evictions(self) -> dict[str, int]:
        return {name: g.evictions for name, g in self.groups.items()}
