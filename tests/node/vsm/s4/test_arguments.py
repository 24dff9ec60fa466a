"""Arguments from words, by schema kind: places to IANA zones, pairs told apart by the
word before each value, numbers next to their property's name, booleans, free text."""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from vsmcp.node.vsm.s4.arguments import extract, kind_of
from vsmcp.node.vsm.s4.offline import OfflinePlanner, labelled_specs
from vsmcp.node.vsm.s4.places import find_places

TZ = {"type": "string", "description": "IANA timezone name"}
CONVERT = {
    "type": "object",
    "properties": {
        "source_timezone": TZ,
        "time": {"type": "string", "description": "24-hour format (HH:MM)"},
        "target_timezone": TZ,
    },
    "required": ["source_timezone", "time", "target_timezone"],
}


def test_cities_and_zone_names_become_iana_zones_longest_name_first() -> None:
    places = find_places("from New York to Tokyo, or Europe/Paris, or UTC")
    assert [p.timezone for p in places] == ["America/New_York", "Asia/Tokyo", "Europe/Paris", "UTC"]
    assert find_places("a nice split") == []  # lower-case words that are also cities


def test_a_pair_is_told_apart_by_the_word_before_each_value() -> None:
    args, missing = extract("convert 14:30 to London from Tokyo", CONVERT)
    assert args == {
        "source_timezone": "Asia/Tokyo",
        "time": "14:30",
        "target_timezone": "Europe/London",
    }
    assert missing == []
    # One place after "in" is a target ("9:00 in Tokyo"): the source is not given.
    args, missing = extract("what time is it in Tokyo", CONVERT)
    assert args == {"target_timezone": "Asia/Tokyo"}
    assert missing == ["source_timezone", "time"]


def test_numbers_go_to_the_property_they_stand_next_to() -> None:
    schema = {
        "type": "object",
        "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
        "required": ["min", "max"],
    }
    assert extract("maximum 50, minimum 5", schema)[0] == {"min": 5, "max": 50}
    assert extract("from 1 to 10", schema)[0] == {"min": 1, "max": 10}


def test_booleans_enums_and_quoted_free_text() -> None:
    schema = {
        "type": "object",
        "properties": {
            "room": {"type": "string", "enum": ["kitchen", "living room"]},
            "on": {"type": "boolean"},
            "label": {"type": "string"},
        },
        "required": ["room", "on", "label"],
    }
    args, missing = extract('switch the living room lights off, label "evening"', schema)
    assert args == {"room": "living room", "on": False, "label": "evening"}
    assert missing == []


def test_free_text_is_what_is_left_without_the_tools_own_words() -> None:
    schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    vocabulary = frozenset({"echo", "return", "text", "unchanged"})
    assert extract("echo hello world", schema, vocabulary)[0] == {"text": "hello world"}
    assert extract("echo this: a b c", schema, vocabulary)[0] == {"text": "a b c"}


def test_kinds_come_from_type_name_and_description() -> None:
    assert kind_of("url", {"type": "string"}) == "url"
    assert kind_of("to", {"type": "string", "description": "recipient email address"}) == "email"
    assert kind_of("n", {"type": "integer"}) == "integer"
    assert kind_of("x", {"type": "array"}) == "other"


@settings(max_examples=150)
@given(st.text(max_size=600))
def test_any_text_gets_a_plan_or_a_plain_no_never_an_exception(text: str) -> None:
    plan = _labelled_planner().plan(text, _labelled_planner().specs)
    assert plan.planner == "offline"
    assert plan.steps or plan.note or plan.refusal
    for step in plan.steps:
        assert isinstance(step.arguments, dict)


@functools.cache
def _labelled_planner() -> OfflinePlanner:
    cases = Path(__file__).with_name("planner_cases.toml")
    return OfflinePlanner(labelled_specs(tomllib.loads(cases.read_text())["tools"]))
