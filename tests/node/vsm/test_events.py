"""Typed events: the catalog's view of their fields, the JSON form, recordings."""

from __future__ import annotations

import pytest

from vsmcp.node.vsm.errors import EventsFileError
from vsmcp.node.vsm.events import (
    MAX_EVENT_LINE_BYTES,
    NODE_CATALOG,
    NODE_EVENT_TYPES,
    AlgedonicSignal,
    Event,
    EventCatalog,
    FieldType,
    ToolCallFinished,
    encode_event,
    read_events_jsonl,
)


def test_every_node_event_round_trips_through_json() -> None:
    assert len(NODE_CATALOG.kinds) == len(NODE_EVENT_TYPES)
    call = ToolCallFinished(
        ts=1.5, tool="t", provider="p", origin="o", zone="ops", latency_ms=3.0, reason="x"
    )
    line = encode_event(call)
    assert line.startswith(b'{"kind":"tool_call"')
    assert NODE_CATALOG.decode(line) == call


def test_the_catalog_knows_field_types_and_optionality() -> None:
    fields = NODE_CATALOG.kinds["tool_call"].fields
    assert fields["latency_ms"] == FieldType("num", False)
    assert fields["priority"] == FieldType("str", False)
    assert fields["reason"] == FieldType("str", True)
    assert fields["kind"] == FieldType("str", False)
    assert NODE_CATALOG.kinds["algedonic"].fields["intensity"].base == "num"


def test_two_classes_with_one_kind_are_refused() -> None:
    class Again(Event, frozen=True, gc=False, kw_only=True, tag="algedonic"):
        x: str

    with pytest.raises(TypeError, match="algedonic"):
        EventCatalog([AlgedonicSignal, Again])


def test_recordings_skip_blank_lines_and_name_the_bad_line() -> None:
    good = encode_event(AlgedonicSignal(ts=1, source="s", valence="pain", intensity=0.5))
    lines = [good, b"\n", good]
    assert len(list(read_events_jsonl(lines, "rec.jsonl"))) == 2
    bad_lines = [
        b'{"kind":"nope","ts":1}',
        b'{"kind":"algedonic"}',
        b"not json",
        b'{"kind":"algedonic","ts":NaN,"source":"s","valence":"pain","intensity":1}',
        b'{"kind":"algedonic","ts":1e999,"source":"s","valence":"pain","intensity":1}',
        b" " * (MAX_EVENT_LINE_BYTES + 1),
    ]
    for bad in bad_lines:
        with pytest.raises(EventsFileError) as info:
            list(read_events_jsonl([good, bad], "rec.jsonl"))
        assert info.value.line == 2 and str(info.value).startswith("rec.jsonl:2: ")
