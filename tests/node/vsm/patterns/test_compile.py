"""The compiled engine: each operator, combinators, windows, group bounds, sequences,
hot swap and the all-or-nothing `replace`."""

from __future__ import annotations

from typing import Any

import pytest

from vsmcp.node.vsm.errors import PatternError
from vsmcp.node.vsm.events import (
    NODE_CATALOG,
    Denial,
    Event,
    MembershipChanged,
    ToolCallFinished,
)
from vsmcp.node.vsm.patterns import Match, PatternEngine, parse_patterns
from vsmcp.node.vsm.patterns.model import Pattern


def call(ts: float = 0.0, **fields: Any) -> ToolCallFinished:
    base: dict[str, Any] = {"tool": "t", "provider": "p", "origin": "o", "zone": "ops"}
    return ToolCallFinished(ts=ts, **{**base, **fields})


def denial(ts: float = 0.0, origin: str = "o") -> Denial:
    return Denial(ts=ts, origin=origin, zone="ops", limit="rate", blocked="t")


def patterns(*raw: dict[str, Any]) -> tuple[Pattern, ...]:
    return parse_patterns(list(raw), "<test>", NODE_CATALOG)


class Recorder:
    def __init__(self, *raw: dict[str, Any]) -> None:
        self.matches: list[Match] = []
        self.engine = PatternEngine(self.matches.append, NODE_CATALOG, patterns(*raw))

    def feed(self, *events: Event) -> list[tuple[str, Any, int]]:
        start = len(self.matches)
        self.engine.process_batch(events)
        return [(m.pattern, m.group, m.count) for m in self.matches[start:]]


def where(condition: dict[str, Any], kind: str = "tool_call") -> Recorder:
    return Recorder({"name": "p", "kind": kind, "where": condition})


def matches(recorder: Recorder, event: Event) -> bool:
    return bool(recorder.feed(event))


@pytest.mark.parametrize(
    ("op", "value", "hits", "misses"),
    [
        ("eq", 100, [100, 100.0], [99, 101]),
        ("ne", 100, [99, 101], [100]),
        ("lt", 100, [99.5], [100, 101]),
        ("le", 100, [100, 99], [100.5]),
        ("gt", 100, [100.5], [100, 99]),
        ("ge", 100, [100, 101], [99.9]),
        ("in", [1, 5.5, 100], [1, 5.5, 100.0], [2, 0]),
    ],
)
def test_numeric_operators(op: str, value: Any, hits: list[float], misses: list[float]) -> None:
    recorder = where({"field": "latency_ms", "op": op, "value": value})
    for latency in hits:
        assert matches(recorder, call(latency_ms=latency)), (op, latency)
    for latency in misses:
        assert not matches(recorder, call(latency_ms=latency)), (op, latency)


def test_string_operators() -> None:
    eq = where({"field": "tool", "op": "eq", "value": "disk"})
    assert matches(eq, call(tool="disk")) and not matches(eq, call(tool="disk2"))
    ne = where({"field": "tool", "op": "ne", "value": "disk"})
    assert matches(ne, call(tool="cpu")) and not matches(ne, call(tool="disk"))
    lt = where({"field": "tool", "op": "lt", "value": "m"})
    assert matches(lt, call(tool="a")) and not matches(lt, call(tool="z"))
    in_ = where({"field": "tool", "op": "in", "value": ["a", "b"]})
    assert matches(in_, call(tool="b")) and not matches(in_, call(tool="c"))
    regex = where({"field": "tool", "op": "regex", "value": "^db_(read|write)$"})
    assert matches(regex, call(tool="db_read"))
    assert not matches(regex, call(tool="db_drop"))
    searched = where({"field": "tool", "op": "regex", "value": "adm"})
    assert matches(searched, call(tool="sysadmin"))  # search, not fullmatch


def test_presence_operators_and_comparisons_on_absent_fields() -> None:
    exists = where({"field": "reason", "op": "exists"})
    absent = where({"field": "reason", "op": "absent"})
    assert matches(exists, call(reason="boom")) and not matches(exists, call())
    assert matches(absent, call()) and not matches(absent, call(reason="boom"))
    # A comparison on an absent field is false, `ne` included.
    for op in ("eq", "ne", "lt", "ge"):
        recorder = where({"field": "reason", "op": op, "value": "x"})
        assert not matches(recorder, call()), op
    ne = where({"field": "reason", "op": "ne", "value": "x"})
    assert matches(ne, call(reason="y"))


def test_kind_is_a_field() -> None:
    recorder = Recorder(
        {
            "name": "p",
            "kinds": ["tool_call", "denial"],
            "where": {"field": "kind", "op": "eq", "value": "denial"},
        }
    )
    assert recorder.feed(call(), denial()) == [("p", None, 1)]
    assert recorder.matches[0].event == denial()


def test_all_any_not() -> None:
    recorder = where(
        {
            "all": [
                {"field": "outcome", "op": "ne", "value": "ok"},
                {
                    "any": [
                        {"field": "latency_ms", "op": "gt", "value": 1000},
                        {"field": "tool", "op": "eq", "value": "x"},
                    ]
                },
                {"not": {"field": "zone", "op": "eq", "value": "public"}},
            ]
        }
    )
    assert matches(recorder, call(outcome="error", latency_ms=2000))
    assert matches(recorder, call(outcome="error", tool="x"))
    assert not matches(recorder, call(outcome="ok", tool="x"))
    assert not matches(recorder, call(outcome="error", tool="y"))
    assert not matches(recorder, call(outcome="error", tool="x", zone="public"))
    assert matches(where({"all": []}), call())
    assert not matches(where({"any": []}), call())


def test_a_pattern_without_where_matches_every_event_of_its_kinds() -> None:
    recorder = Recorder({"name": "p", "kind": "denial"})
    assert recorder.feed(call(), denial(), call()) == [("p", None, 1)]


def test_patterns_fire_in_order_and_only_for_their_kinds() -> None:
    recorder = Recorder(
        {"name": "b", "kind": "tool_call"},
        {"name": "a", "kind": "denial"},
        {"name": "c", "kinds": ["denial", "tool_call"]},
    )
    assert recorder.feed(call(), denial()) == [
        ("b", None, 1),
        ("c", None, 1),
        ("a", None, 1),
        ("c", None, 1),
    ]
    assert recorder.engine.match_counts() == {"b": 1, "a": 1, "c": 2}


def test_unknown_event_classes_are_ignored() -> None:
    recorder = Recorder({"name": "p", "kind": "tool_call"})
    assert recorder.feed(MembershipChanged(ts=0, peer="x", state="dead")) == []


def counting(count: int, within_s: float, max_groups: int = 100) -> Recorder:
    return Recorder(
        {
            "name": "burst",
            "kind": "denial",
            "group_by": "origin",
            "max_groups": max_groups,
            "window": {"count": count, "within_s": within_s},
        }
    )


def test_count_window_fires_at_the_count_within_the_window_then_restarts() -> None:
    recorder = counting(3, 10)
    assert recorder.feed(denial(0), denial(1)) == []
    assert recorder.feed(denial(2)) == [("burst", "o", 3)]
    assert recorder.feed(denial(3), denial(4)) == []  # the window started afresh
    assert recorder.feed(denial(5)) == [("burst", "o", 3)]


def test_count_window_forgets_events_older_than_the_window() -> None:
    recorder = counting(3, 10)
    # (t - 10, t]: the event at 0 is out of the window at 10, still in at 9.99.
    assert recorder.feed(denial(0), denial(5), denial(10)) == []
    assert recorder.feed(denial(14.9)) == [("burst", "o", 3)]
    recorder = counting(2, 10)
    assert recorder.feed(denial(0), denial(9.99)) == [("burst", "o", 2)]


def test_count_window_counts_each_group_apart() -> None:
    recorder = counting(2, 10)
    assert recorder.feed(denial(0, "a"), denial(1, "b"), denial(2, "c")) == []
    assert recorder.feed(denial(3, "b")) == [("burst", "b", 2)]
    assert recorder.feed(denial(4, "a")) == [("burst", "a", 2)]


def test_an_event_older_than_its_group_counts_at_the_group_time() -> None:
    recorder = counting(2, 10)
    assert recorder.feed(denial(100), denial(50)) == [("burst", "o", 2)]
    # Once the window has emptied, nothing is held: an old event starts a new window.
    assert recorder.feed(denial(3), denial(4)) == [("burst", "o", 2)]


def test_groups_are_bounded_the_least_recently_touched_is_evicted() -> None:
    recorder = counting(2, 100, max_groups=2)
    recorder.feed(denial(0, "a"), denial(1, "b"))
    recorder.feed(denial(2, "a"))  # fires for a; a is now most recent
    assert recorder.feed(denial(3, "c")) == []  # evicts b, the least recent
    assert recorder.feed(denial(4, "b")) == []  # b starts over (evicting a)
    stats = recorder.engine.window_stats()["burst"]
    assert stats == {"groups": 2, "held": 2, "evictions": 2}
    assert recorder.feed(denial(5, "c")) == [("burst", "c", 2)]


def test_window_state_stays_bounded_under_many_groups() -> None:
    recorder = counting(5, 1000, max_groups=50)
    recorder.feed(*(denial(i, f"origin-{i}") for i in range(10_000)))
    stats = recorder.engine.window_stats()["burst"]
    assert stats["groups"] == 50 and stats["held"] == 50
    assert stats["evictions"] == 10_000 - 50


def sequence(within_s: float = 5, **then: Any) -> Recorder:
    return Recorder(
        {
            "name": "deny-then-call",
            "kind": "denial",
            "group_by": "origin",
            "then": {"kind": "tool_call", "within_s": within_s, **then},
        }
    )


def test_a_followed_by_b_within_t() -> None:
    recorder = sequence(5)
    assert recorder.feed(call(0)) == []  # B without A
    assert recorder.feed(denial(1), call(6)) == [("deny-then-call", "o", 2)]  # 5 s: inclusive
    assert recorder.feed(call(7)) == []  # the A was consumed
    assert recorder.feed(denial(10), call(15.5)) == []  # too late
    assert recorder.feed(call(16)) == []  # and the expired A is gone


def test_a_sequence_correlates_by_group() -> None:
    recorder = sequence(5)
    assert recorder.feed(denial(0, "a"), call(1, origin="b")) == []
    assert recorder.feed(call(2, origin="a")) == [("deny-then-call", "a", 2)]


def test_a_sequence_b_condition() -> None:
    recorder = sequence(5, where={"field": "outcome", "op": "eq", "value": "error"})
    assert recorder.feed(denial(0), call(1)) == []
    assert recorder.feed(call(2, outcome="error")) == [("deny-then-call", "o", 2)]


def test_a_sequence_on_one_kind_tries_b_before_a() -> None:
    recorder = Recorder(
        {"name": "twice", "kind": "denial", "then": {"kind": "denial", "within_s": 10}}
    )
    # Each event is tried as a B (completing the previous A), then recorded as the next A.
    assert recorder.feed(denial(0)) == []
    assert recorder.feed(denial(1)) == [("twice", None, 2)]
    assert recorder.feed(denial(2)) == [("twice", None, 2)]


def test_sequence_groups_are_bounded() -> None:
    recorder = Recorder(
        {
            "name": "s",
            "kind": "denial",
            "group_by": "origin",
            "max_groups": 3,
            "then": {"kind": "tool_call", "within_s": 100},
        }
    )
    recorder.feed(*(denial(i, f"o{i}") for i in range(10)))
    assert recorder.engine.window_stats()["s"] == {"groups": 3, "held": 3, "evictions": 7}
    assert recorder.feed(call(20, origin="o0")) == []  # evicted
    assert recorder.feed(call(20, origin="o9")) == [("s", "o9", 2)]


def test_hot_swap_keeps_the_windows_of_unchanged_patterns() -> None:
    burst = {
        "name": "burst",
        "kind": "denial",
        "group_by": "origin",
        "window": {"count": 3, "within_s": 100},
    }
    other = dict(burst, name="other")
    recorder = Recorder(burst, other)
    recorder.feed(denial(0), denial(1))
    changed = dict(other, window={"count": 3, "within_s": 50})
    added = {"name": "new", "kind": "denial"}
    with_action = dict(burst, actions=[{"type": "emit", "label": "x"}])
    report = recorder.engine.replace(patterns(with_action, changed, added))
    assert report.kept == ["burst"] and report.fresh == ["other"] and report.removed == []
    # burst had 2 of 3: fires on the next; other restarted from nothing.
    assert recorder.feed(denial(2)) == [("burst", "o", 3), ("new", None, 1)]
    assert recorder.matches[-2].actions[0].__struct_config__.tag == "emit"
    assert recorder.feed(denial(3), denial(4)) == [
        ("new", None, 1),
        ("other", "o", 3),
        ("new", None, 1),
    ]
    report = recorder.engine.replace(patterns(added))
    assert sorted(report.removed) == ["burst", "other"]
    assert recorder.engine.match_counts() == {"new": 3}


def test_replace_is_all_or_nothing() -> None:
    recorder = counting(2, 100)
    recorder.feed(denial(0))
    bad = Pattern(name="bad", kinds=("denial",), where=None, window=None, group_by="origin")
    good = recorder.engine.patterns[0]
    with pytest.raises(PatternError, match="'bad'"):
        recorder.engine.replace([good, bad], source="reload.toml")
    assert recorder.engine.patterns == (good,)
    assert recorder.feed(denial(1)) == [("burst", "o", 2)]  # the old set, with its window


def test_an_event_with_a_field_of_the_wrong_type_is_counted_and_skipped() -> None:
    recorder = where({"field": "latency_ms", "op": "gt", "value": 10})
    wrong: Any = "slow"  # a producer building a struct by hand is not type-checked
    assert recorder.feed(call(latency_ms=wrong), call(latency_ms=20)) == [("p", None, 1)]
    assert recorder.engine.bad_events == 1
    assert recorder.engine.events == 2


def test_shared_comparisons_are_evaluated_once() -> None:
    shared = {"field": "outcome", "op": "eq", "value": "error"}
    recorder = Recorder(
        {
            "name": "a",
            "kind": "tool_call",
            "where": {"all": [shared, {"field": "tool", "op": "eq", "value": "x"}]},
        },
        {
            "name": "b",
            "kind": "tool_call",
            "where": {"any": [shared, {"field": "zone", "op": "eq", "value": "ops"}]},
        },
    )
    source = recorder.engine.source("tool_call")
    assert source.count("==") == 3, source  # outcome == once, tool ==, zone ==
    assert "s0 = " in source
    assert recorder.feed(call(outcome="error", tool="x")) == [("a", None, 1), ("b", None, 1)]


def test_values_are_constants_never_source() -> None:
    hostile = '"); import os; os.system("false"); ("'
    recorder = where({"field": "tool", "op": "eq", "value": hostile})
    source = recorder.engine.source("tool_call")
    assert hostile not in source and "system" not in source and "import" not in source
    assert matches(recorder, call(tool=hostile))
    assert not matches(recorder, call(tool="x"))
