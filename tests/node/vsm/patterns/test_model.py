"""Parsing and validation of patterns: what is accepted, and every refusal names the
file, the pattern and the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vsmcp.node.errors import NodeError
from vsmcp.node.vsm.errors import PatternError
from vsmcp.node.vsm.events import NODE_CATALOG
from vsmcp.node.vsm.patterns.model import (
    AlgedonicAction,
    All,
    AnyOf,
    Compare,
    CountWindow,
    Not,
    Pattern,
    Then,
    load_pattern_dir,
    load_pattern_file,
    parse_patterns,
    validate_patterns,
)


def one(**raw: Any) -> Pattern:
    raw.setdefault("name", "p")
    raw.setdefault("kind", "tool_call")
    (pattern,) = parse_patterns([raw], "<test>", NODE_CATALOG)
    return pattern


def refused(raw: dict[str, Any] | list[Any], reason: str) -> PatternError:
    data = raw if isinstance(raw, list) else [{"name": "bad", "kind": "tool_call", **raw}]
    with pytest.raises(PatternError) as info:
        parse_patterns(data, "patterns.toml", NODE_CATALOG)
    error = info.value
    assert isinstance(error, NodeError)
    assert error.source == "patterns.toml"
    assert reason in error.reason, error.reason
    assert "patterns.toml" in str(error)
    return error


def test_a_full_pattern_parses_into_structs() -> None:
    pattern = one(
        where={
            "all": [
                {"field": "latency_ms", "op": "gt", "value": 500},
                {"any": [{"field": "tool", "op": "in", "value": ["a", "b"]}]},
                {"not": {"field": "reason", "op": "exists"}},
            ]
        },
        group_by="origin",
        max_groups=10,
        window={"count": 3, "within_s": 5},
        actions=[{"type": "algedonic", "valence": "pain", "intensity": 0.7}],
    )
    assert pattern.where == All(
        (
            Compare("latency_ms", "gt", 500),
            AnyOf((Compare("tool", "in", ("a", "b")),)),
            Not(Compare("reason", "exists")),
        )
    )
    assert pattern.window == CountWindow(count=3, within_s=5.0)
    assert pattern.group_by == "origin" and pattern.max_groups == 10
    assert pattern.actions == (AlgedonicAction(valence="pain", intensity=0.7),)


def test_rate_is_a_count_over_the_window() -> None:
    assert one(window={"rate_per_s": 2, "within_s": 10}).window == CountWindow(20, 10.0)
    assert one(window={"rate_per_s": 0.25, "within_s": 10}).window == CountWindow(3, 10.0)


def test_a_sequence_parses() -> None:
    pattern = one(kind="denial", group_by="origin", then={"kind": "tool_call", "within_s": 5})
    assert pattern.then == Then(kinds=("tool_call",), where=None, within_s=5.0)


def test_a_table_with_patterns_key_is_accepted() -> None:
    data = {"patterns": [{"name": "a", "kind": "denial"}]}
    assert [p.name for p in parse_patterns(data, "<t>", NODE_CATALOG)] == ["a"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"where": {"field": "tool", "op": "like", "value": "x"}}, "unknown operator 'like'"),
        ({"where": {"field": "tool", "op": "regex", "value": "(unclosed"}}, "bad regex"),
        ({"where": {"field": "latency_ms", "op": "regex", "value": "1"}}, "needs a string"),
        ({"window": {"count": 3, "within_s": 0}}, "'within_s' must be in (0"),
        ({"window": {"count": 0, "within_s": 1}}, "'count' must be in 1.."),
        ({"window": {"count": 3}}, "'within_s' must be a number"),
        ({"window": {"count": 3, "rate_per_s": 1, "within_s": 1}}, "exactly one of"),
        ({"where": {"field": "peer", "op": "eq", "value": "x"}}, "no field 'peer'"),
        ({"where": {"field": "latency_ms", "op": "gt", "value": "slow"}}, "takes a number"),
        ({"where": {"field": "latency_ms", "op": "gt", "value": True}}, "takes a number"),
        ({"where": {"field": "tool", "op": "eq", "value": 3}}, "takes a string"),
        ({"where": {"field": "tool", "op": "in", "value": "abc"}}, "'in' needs a list"),
        ({"where": {"field": "tool", "op": "in", "value": ["a", 1]}}, "takes a string"),
        ({"where": {"field": "tool", "op": "exists", "value": 1}}, "takes no value"),
        ({"where": {"field": "ts", "op": "gt", "value": float("nan")}}, "not a finite"),
        ({"where": {"all": {"field": "tool"}}}, "expected a list"),
        ({"where": {"all": [], "any": []}}, "takes no other keys"),
        ({"where": {"field": "tool", "op": "eq", "value": "x", "extra": 1}}, "unknown keys"),
        ({"kinds": ["nope"], "kind": None}, "exactly one of 'kind' or 'kinds'"),
        ({"group_by": "origin"}, "'group_by' needs a 'window' or a 'then'"),
        ({"group_by": "peer", "window": {"count": 2, "within_s": 1}}, "no field 'peer'"),
        ({"max_groups": 0, "window": {"count": 2, "within_s": 1}}, "'max_groups' must be"),
        (
            {"window": {"count": 2, "within_s": 1}, "then": {"kind": "denial", "within_s": 1}},
            "not both",
        ),
        ({"then": {"kind": "denial", "within_s": -1}}, "then: 'within_s'"),
        (
            {"group_by": "tool", "then": {"kind": "denial", "within_s": 1}},
            "kind 'denial' has no field 'tool'",
        ),
        ({"actions": [{"type": "launch"}]}, "actions:"),
        ({"actions": [{"type": "algedonic", "valence": "pain", "intensity": 2}]}, "[0, 1]"),
        ({"surprise": 1}, "unknown keys ['surprise']"),
        ({"max_groups": 5}, "'max_groups' needs a 'window' or a 'then'"),
        (
            {"kind": "pattern_matched", "actions": [{"type": "emit"}]},
            "would feed itself",
        ),
        (
            {"then": {"kind": "pattern_matched", "within_s": 1}, "actions": [{"type": "emit"}]},
            "would feed itself",
        ),
    ],
)
def test_bad_patterns_are_refused_naming_file_pattern_and_reason(
    raw: dict[str, Any], reason: str
) -> None:
    error = refused(raw, reason)
    assert error.pattern == "bad"


def test_unknown_kind_is_refused() -> None:
    refused([{"name": "bad", "kind": "nope"}], "unknown event kind 'nope'")


def test_a_field_must_exist_in_every_kind_of_the_pattern() -> None:
    raw = [
        {
            "name": "bad",
            "kinds": ["tool_call", "denial"],
            "where": {"field": "tool", "op": "eq", "value": "x"},
        }
    ]
    refused(raw, "kind 'denial' has no field 'tool'")
    ok = [dict(raw[0], where={"field": "origin", "op": "eq", "value": "x"})]
    assert parse_patterns(ok, "<t>", NODE_CATALOG)[0].kinds == ("tool_call", "denial")


def test_duplicate_names_are_refused() -> None:
    refused([{"name": "a", "kind": "denial"}, {"name": "a", "kind": "denial"}], "second pattern")


def test_an_unnamed_pattern_is_named_by_position() -> None:
    error = refused([{"name": "a", "kind": "denial"}, {"kind": "denial"}], "'name'")
    assert error.pattern == "#2"


def test_patterns_built_in_code_are_validated_too() -> None:
    bad = Pattern(name="x", kinds=("tool_call",), where=Compare("tool", "regex", "("))
    with pytest.raises(PatternError, match="bad regex"):
        validate_patterns([bad], "<code>", NODE_CATALOG)


TOML = """
[[patterns]]
name = "auth-storm"
kind = "envelope_rejected"
where = {field = "reason", op = "eq", value = "bad_signature"}
group_by = "sender"
window = {count = 20, within_s = 10}
actions = [{type = "policy", policy = "block_sender", ttl_s = 600}]
"""


def test_toml_and_json_files_load(tmp_path: Path) -> None:
    toml_file = tmp_path / "a.toml"
    toml_file.write_text(TOML)
    json_file = tmp_path / "b.json"
    json_file.write_text(json.dumps({"patterns": [{"name": "denials", "kind": "denial"}]}))
    assert [p.name for p in load_pattern_file(toml_file, NODE_CATALOG)] == ["auth-storm"]
    assert [p.name for p in load_pattern_dir(tmp_path, NODE_CATALOG)] == ["auth-storm", "denials"]


def test_bad_files_are_refused_naming_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[[patterns]\nname=")
    with pytest.raises(PatternError, match=r"broken\.toml: cannot parse"):
        load_pattern_file(broken, NODE_CATALOG)
    with pytest.raises(PatternError, match="cannot read"):
        load_pattern_file(tmp_path / "absent.json", NODE_CATALOG)


def test_a_name_in_two_files_is_refused_naming_both(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps([{"name": "x", "kind": "denial"}]))
    (tmp_path / "b.json").write_text(json.dumps([{"name": "x", "kind": "denial"}]))
    with pytest.raises(PatternError) as info:
        load_pattern_dir(tmp_path, NODE_CATALOG)
    assert info.value.source.endswith("b.json") and "a.json" in info.value.reason
