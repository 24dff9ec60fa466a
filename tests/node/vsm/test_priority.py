"""Priority classes: parsing, ranking and the cap a grant sets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vsmcp.node.vsm.priority import (
    PRIORITY_CLASSES,
    PriorityError,
    capped,
    parse_priority,
    priority_rank,
)


def test_classes_rank_low_to_critical() -> None:
    assert [priority_rank(p) for p in ("low", "normal", "high", "critical")] == [0, 1, 2, 3]


@pytest.mark.parametrize("value", ["urgent", "", "HIGH", 3, None, ["high"], {"p": 1}, True])
def test_nonsense_is_refused_naming_the_classes(value: object) -> None:
    with pytest.raises(PriorityError) as info:
        parse_priority(value)
    for name in PRIORITY_CLASSES:
        assert name in str(info.value)


def test_a_long_value_is_clipped_in_the_message() -> None:
    with pytest.raises(PriorityError) as info:
        parse_priority("x" * 10_000)
    assert len(str(info.value)) < 200


@given(st.sampled_from(PRIORITY_CLASSES), st.sampled_from(PRIORITY_CLASSES))
def test_the_cap_lowers_never_raises(requested: str, cap: str) -> None:
    got = capped(parse_priority(requested), parse_priority(cap))
    assert priority_rank(got) == min(priority_rank(requested), priority_rank(cap))
