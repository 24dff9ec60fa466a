"""Boundary hygiene: what enters pycrdt is checked, what leaves it is normalized."""

from __future__ import annotations

import math

import pycrdt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.crdt.harness import Clock
from vsmcp.crdt.errors import InvalidValue, ValueOutOfRange
from vsmcp.crdt.signing import Ed25519Signer
from vsmcp.crdt.values import MAX_SAFE_INT, check_value, dump_json, from_crdt, to_crdt


def round_trip(value: object) -> object:
    doc: pycrdt.Doc[object] = pycrdt.Doc()
    ymap: pycrdt.Map[object] = doc.get("m", type=pycrdt.Map)
    ymap["v"] = to_crdt(value)
    other: pycrdt.Doc[object] = pycrdt.Doc()
    other_map: pycrdt.Map[object] = other.get("m", type=pycrdt.Map)
    other.apply_update(doc.get_update())
    return from_crdt(other_map["v"])


@pytest.mark.parametrize("value", [2**53, -(2**53), 2**63, 2**64, -(2**70)])
def test_huge_ints_rejected_before_pycrdt(value: int) -> None:
    with pytest.raises(ValueOutOfRange):
        to_crdt(value)
    with pytest.raises(ValueOutOfRange):
        to_crdt({"nested": [value]})


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_floats_rejected(value: float) -> None:
    with pytest.raises(ValueOutOfRange):
        check_value(value)


def test_unsupported_types_rejected() -> None:
    with pytest.raises(InvalidValue):
        check_value({1: "non-str key"})
    with pytest.raises(InvalidValue):
        check_value(object())
    deep: object = []
    for _ in range(40):
        deep = [deep]
    with pytest.raises(InvalidValue):
        check_value(deep)


def test_floats_come_back_as_ints_and_bytes_as_bytes() -> None:
    assert round_trip(5) == 5 and type(round_trip(5)) is int
    assert round_trip(MAX_SAFE_INT) == MAX_SAFE_INT
    assert type(round_trip(-MAX_SAFE_INT)) is int
    assert round_trip(b"\x00\xffblob") == b"\x00\xffblob"
    assert type(round_trip(b"x")) is bytes
    assert round_trip(1.5) == 1.5
    assert round_trip({"a": [1, b"b", {"c": 2}]}) == {"a": [1, b"b", {"c": 2}]}


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INT, MAX_SAFE_INT)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(json_values)
def test_round_trip_through_pycrdt(value: object) -> None:
    assert round_trip(value) == value


def test_signed_payloads_reject_huge_ints_with_a_clear_error() -> None:
    from vsmcp.crdt.registry import CapabilityRegistry

    signer = Ed25519Signer()
    registry = CapabilityRegistry(replica_id=signer.public_key, clock=Clock())
    with pytest.raises(ValueOutOfRange, match="input_schema"):
        registry.announce(signer, "t", zone="public", input_schema={"max": 2**60})
    with pytest.raises(ValueOutOfRange, match="version"):
        registry.announce(signer, "t", zone="public", version=2**60)
    with pytest.raises(InvalidValue):
        dump_json({"b": b"bytes are not JSON"}, what="data")
    entry = registry.announce(signer, "t", zone="public", input_schema={"max": 2**52})
    assert entry.input_schema == {"max": 2**52}
    assert type(entry.input_schema["max"]) is int
