"""System 3's rolling pain/pleasure balance."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vsmcp.node.vsm.algedonic import Signal
from vsmcp.node.vsm.balance import AlgedonicBalance


def sig(ts: float, valence: str, intensity: float, seq: int = 1) -> Signal:
    assert valence in ("pain", "pleasure")
    return Signal(seq, ts, "t", valence, intensity, "")  # type: ignore[arg-type]


def test_balance_is_signed_and_weak_signals_stay_weak() -> None:
    b = AlgedonicBalance(window_s=10)
    assert b.balance(0.0) == 0.0
    b.add([sig(1.0, "pain", 0.2)])
    assert b.balance(1.0) == pytest.approx(-0.2)
    b.add([sig(2.0, "pleasure", 0.2)])
    assert b.balance(2.0) == pytest.approx(0.0)
    b.add([sig(3.0, "pain", 0.9), sig(3.0, "pain", 0.9)])
    assert b.balance(3.0) == pytest.approx((0.2 - 2.0) / 2.2)


def test_signals_leave_the_window() -> None:
    b = AlgedonicBalance(window_s=10)
    b.add([sig(0.0, "pain", 1.0), sig(5.0, "pleasure", 0.5)])
    assert b.balance(9.9) == pytest.approx((0.5 - 1.0) / 1.5)
    assert b.balance(10.0) == pytest.approx(0.5)  # the pain at t=0 is out
    view = b.view(10.0)
    assert view["signals_in_window"] == 1 and view["pain_total"] == 1


def test_memory_is_bounded_and_evictions_counted() -> None:
    b = AlgedonicBalance(window_s=100, max_signals=3)
    b.add([sig(float(i), "pain", 0.1) for i in range(5)])
    assert b.view(5.0)["signals_in_window"] == 3 and b.evicted == 2


@given(
    st.lists(
        st.tuples(st.sampled_from(["pain", "pleasure"]), st.floats(0, 1, allow_nan=False)),
        max_size=50,
    )
)
def test_balance_stays_in_bounds(signals: list[tuple[str, float]]) -> None:
    b = AlgedonicBalance(window_s=10)
    b.add([sig(1.0, v, i) for v, i in signals])
    assert -1.0 <= b.balance(1.0) <= 1.0
