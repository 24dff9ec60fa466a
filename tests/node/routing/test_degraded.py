"""The gray-failure tracker: what degrades a provider's tool, what does not (slow but
within the objective, refusals), probing back, bounds."""

from __future__ import annotations

from vsmcp.node.routing.degraded import MAX_KEYS, GrayTracker, refused_probe_answer
from vsmcp.node.routing.gray_config import GrayConfig

CONFIG = GrayConfig(objective_s=1.0, min_bad=2, bad_ratio=0.5, window_s=10.0, recover_probes=2)


def test_calls_in_a_row_past_the_objective_degrade_after_many_good_ones() -> None:
    tracker = GrayTracker(CONFIG)
    for i in range(100):
        assert not tracker.record("p", "t", bad=False, reason="ok", now=i * 0.01)
    assert not tracker.record("p", "t", bad=True, reason="hang", now=1.1)
    assert not tracker.is_degraded("p", "t")
    assert tracker.record("p", "t", bad=True, reason="hang", now=1.2)
    assert tracker.is_degraded("p", "t")
    assert not tracker.is_degraded("q", "t") and not tracker.is_degraded("p", "u")
    assert "2 calls in a row bad" in tracker.view()[0]["reason"]


def test_intermittent_failures_degrade_by_ratio_within_the_window() -> None:
    tracker = GrayTracker(CONFIG)
    degraded = [
        tracker.record("p", "t", bad=i % 2 == 0, reason="x", now=float(i)) for i in range(4)
    ]
    assert degraded == [False, False, True, False]  # bad, good, bad: 2 of 3


def test_bad_calls_outside_the_window_do_not_count() -> None:
    tracker = GrayTracker(CONFIG)
    tracker.record("p", "t", bad=True, reason="x", now=0.0)
    tracker.record("p", "t", bad=False, reason="x", now=5.0)
    assert not tracker.record("p", "t", bad=True, reason="x", now=20.0)


def test_good_probes_in_a_row_bring_it_back_a_failed_one_resets() -> None:
    tracker = GrayTracker(CONFIG.__class__(probe_interval_s=1.0, recover_probes=2))
    tracker.record("p", "t", bad=True, reason="x", now=0.0)
    tracker.record("p", "t", bad=True, reason="x", now=0.1)
    assert tracker.probes_due(0.5) == []
    assert tracker.probes_due(1.2) == [("p", "t")]
    assert tracker.probes_due(1.3) == []  # scheduled again, not due twice
    assert not tracker.probe_result(("p", "t"), "ok", 1.3)
    assert not tracker.probe_result(("p", "t"), "failed", 2.3)
    assert not tracker.probe_result(("p", "t"), "ok", 3.3)
    assert tracker.probe_result(("p", "t"), "ok", 4.3)
    assert not tracker.is_degraded("p", "t")
    assert tracker.stats["recovered"] == 1


def test_a_tool_without_a_probe_is_released_after_hold_s() -> None:
    tracker = GrayTracker(GrayConfig(hold_s=30.0))
    tracker.record("p", "t", bad=True, reason="x", now=0.0)
    tracker.record("p", "t", bad=True, reason="x", now=0.0)
    assert not tracker.probe_result(("p", "t"), "no_probe", 10.0)
    assert tracker.probe_result(("p", "t"), "no_probe", 31.0)


def test_quorum_degrades_without_local_observations_and_is_reported() -> None:
    tracker = GrayTracker(CONFIG)
    assert tracker.set_quorum({("p", "t")}) == {("p", "t")}
    assert tracker.is_degraded("p", "t")
    assert tracker.view() == [
        {
            "provider": "p",
            "tool": "t",
            "local": False,
            "quorum": True,
            "reason": "a quorum of callers",
            "probes": 0,
        }
    ]
    assert tracker.set_quorum(set()) == {("p", "t")}
    assert not tracker.is_degraded("p", "t")


def test_disabled_records_nothing_and_state_is_bounded() -> None:
    off = GrayTracker(GrayConfig(enabled=False))
    assert not off.record("p", "t", bad=True, reason="x", now=0.0)
    assert not off.record("p", "t", bad=True, reason="x", now=0.0)
    tracker = GrayTracker(CONFIG)
    for i in range(MAX_KEYS + 10):
        tracker.record(f"p{i}", "t", bad=False, reason="x", now=0.0)
    assert len(tracker._seen) == MAX_KEYS
    tracker.record("gone", "t", bad=True, reason="x", now=0.0)
    tracker.record("gone", "t", bad=True, reason="x", now=0.0)
    assert tracker.retain({"p1"}) == [("gone", "t")]
    assert not tracker.is_degraded("gone", "t")


def test_a_provider_is_whole_node_degraded_when_every_tool_used_is() -> None:
    tracker = GrayTracker(CONFIG)
    for tool in ("t", "u"):
        tracker.record("p", tool, bad=False, reason="ok", now=0.0)
    for _ in range(2):
        tracker.record("p", "t", bad=True, reason="hang", now=1.0)
    assert tracker.provider_view("p") == {"degraded": False, "degraded_tools": ["t"]}
    for _ in range(2):
        tracker.record("p", "u", bad=True, reason="hang", now=1.0)
    assert tracker.provider_view("p") == {"degraded": True, "degraded_tools": ["t", "u"]}
    assert tracker.provider_view("q") == {"degraded": False, "degraded_tools": []}


def test_disabled_ignores_the_quorum_too() -> None:
    off = GrayTracker(GrayConfig(enabled=False))
    assert off.set_quorum({("p", "t")}) == set()
    assert not off.is_degraded("p", "t")
    assert off.view() == [] and off.provider_view("p")["degraded_tools"] == []


def test_a_skipped_probe_changes_nothing() -> None:
    tracker = GrayTracker(GrayConfig(hold_s=30.0, recover_probes=2))
    tracker.record("p", "t", bad=True, reason="x", now=0.0)
    tracker.record("p", "t", bad=True, reason="x", now=0.0)
    assert not tracker.probe_result(("p", "t"), "ok", 1.0)
    assert not tracker.probe_result(("p", "t"), "skipped", 40.0)  # past hold_s: no release
    assert tracker.is_degraded("p", "t") and tracker.view()[0]["probes"] == 1
    assert tracker.probe_result(("p", "t"), "ok", 41.0)  # the good probe before still counts
    assert tracker.stats["probes_skipped"] == 1


def test_a_probe_refused_for_load_is_skipped_a_peer_without_vsm_probe_has_no_probe() -> None:
    assert refused_probe_answer("unknown_tool") == "no_probe"
    for reason in ("overloaded", "rate_limited", "shed"):
        assert refused_probe_answer(reason) == "skipped"
    for reason in ("timeout", "provider_error", "unavailable"):
        assert refused_probe_answer(reason) == "failed"
