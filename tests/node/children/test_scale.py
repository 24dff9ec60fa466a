"""The scale decision (System 3's variety-driven spawning): hysteresis, max, settle
time, quiet time before retirement; and the child config it writes."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping

import msgspec
import pytest

from vsmcp.node.children.scale import CpuMeter, ScaleDecider, ScaleSample, child_config
from vsmcp.node.tools.config import PluginToolConfig, ScaleConfig

CONFIG = ScaleConfig(children="auto", max=2, quiet_s=30.0, cpu=0.8, samples=3, settle_s=10.0)


def full(
    now: float, busy: Mapping[str, bool | None] | None = None, cpu: float = 0.95
) -> ScaleSample:
    return ScaleSample(now, cpu, running=2, waiting=3, slots=2, busy=busy or {})


def idle(now: float, busy: Mapping[str, bool | None] | None = None) -> ScaleSample:
    return ScaleSample(now, 0.05, running=0, waiting=0, slots=2, busy=busy or {})


def test_spawns_only_after_enough_saturated_samples_in_a_row() -> None:
    d = ScaleDecider(CONFIG)
    assert d.observe(full(1)) is None
    assert d.observe(full(2)) is None
    assert d.observe(idle(3)) is None  # the run is broken: start again
    assert d.observe(full(4)) is None
    assert d.observe(full(5)) is None
    action = d.observe(full(6))
    assert action is not None and action.action == "spawn"
    assert "CPU 0.95" in action.reason and "3 queued" in action.reason


def test_full_unit_without_cpu_is_not_saturated() -> None:
    """Calls that queue on I/O (low CPU) are not helped by another process."""
    d = ScaleDecider(CONFIG)
    for t in range(10):
        assert d.observe(full(t, cpu=0.3)) is None


def test_a_busy_unit_that_does_not_queue_is_not_saturated() -> None:
    d = ScaleDecider(CONFIG)
    for t in range(10):
        sample = ScaleSample(t, 0.95, running=1, waiting=0, slots=2, busy={})
        assert d.observe(sample) is None


def test_waits_settle_time_and_for_the_children_to_be_busy_before_the_next() -> None:
    d = ScaleDecider(CONFIG)
    for t in range(3):
        action = d.observe(full(t))
    assert action is not None and action.action == "spawn"
    d.spawned(2)
    # The new child is not busy yet: the tool is not saturated as a whole.
    for t in range(3, 20):
        assert d.observe(full(t, {"c1": False})) is None
    # Busy, but within settle_s of the spawn: nothing.
    d2 = ScaleDecider(CONFIG)
    for t in range(3):
        d2.observe(full(t))
    d2.spawned(2)
    assert [d2.observe(full(t, {"c1": True})) for t in range(3, 12)] == [None] * 9
    action = d2.observe(full(12, {"c1": True}))
    assert action is not None and action.action == "spawn"


def test_never_more_than_max_children() -> None:
    d = ScaleDecider(CONFIG)
    busy = {"c1": True, "c2": True}
    assert all(d.observe(full(t, busy)) is None for t in range(100))


def test_retires_a_child_idle_for_quiet_time_only() -> None:
    d = ScaleDecider(CONFIG)
    assert d.observe(idle(0, {"c1": True, "c2": True})) is None
    assert d.observe(idle(10, {"c1": True, "c2": True})) is None
    assert d.observe(idle(35, {"c1": False, "c2": True})) is None  # c1 idle 25 s
    action = d.observe(idle(40.5, {"c1": False, "c2": True}))
    assert action is not None and (action.action, action.child) == ("retire", "c1")
    assert action.idle_s == pytest.approx(30.5)
    assert d.observe(idle(41, {"c2": True})) is None  # c1 gone, c2 busy


def test_a_call_in_flight_resets_the_quiet_time() -> None:
    d = ScaleDecider(CONFIG)
    d.observe(idle(0, {"c1": False}))
    d.observe(idle(25, {"c1": True}))
    assert d.observe(idle(50, {"c1": False})) is None
    action = d.observe(idle(55, {"c1": False}))
    assert action is not None and action.action == "retire"


def test_the_quiet_time_starts_when_the_child_is_routable() -> None:
    """A child the catalog does not route to yet (None) is neither idle nor busy."""
    d = ScaleDecider(CONFIG)
    assert all(d.observe(idle(t, {"c1": None})) is None for t in range(0, 101, 5))
    assert d.observe(idle(101, {"c1": False})) is None  # routable since 100
    assert d.observe(idle(129, {"c1": False})) is None
    action = d.observe(idle(130, {"c1": False}))
    assert action is not None and action.action == "retire"


def test_a_child_not_routable_yet_does_not_count_as_full() -> None:
    d = ScaleDecider(CONFIG)
    assert not d.saturated(full(0, {"c1": None}))
    assert d.saturated(full(0, {"c1": True}))


def test_no_retirement_while_saturated() -> None:
    d = ScaleDecider(CONFIG)
    d.observe(idle(0, {"c1": False}))
    # Saturated needs every child busy, so use a child that is busy and one that is gone.
    assert d.observe(full(100, {"c1": True})) is None


def test_a_child_stopped_elsewhere_is_forgotten() -> None:
    d = ScaleDecider(CONFIG)
    d.observe(idle(0, {"c1": False}))
    assert d.observe(idle(100, {})) is None
    # Seen again (same name, a new child): its quiet time starts afresh.
    assert d.observe(idle(101, {"c1": False})) is None


def test_cpu_meter_reads_cores_between_readings() -> None:
    times = iter([0.0, 2.0, 3.0])
    cpus = iter([10.0, 11.5, 11.5])
    meter = CpuMeter(cpu_clock=lambda: next(cpus), clock=lambda: next(times))
    assert meter.read() == pytest.approx(0.75)
    assert meter.read() == 0.0


def test_child_config_serves_the_same_tool_without_scale() -> None:
    tool = msgspec.convert(
        {
            "name": "burn.cpu",
            "target": "tests.integration.plugin_tools:burn",
            "description": 'say "hi" 🙂 — \u00e9\nback',  # beyond the BMP too
            "input_schema": {"type": "object", "properties": {"n": {"type": "integer"}}},
            "limits": {"max_concurrency": 2},
            "scale": {"children": "auto", "max": 2},
        },
        PluginToolConfig,
    )
    parsed = tomllib.loads(child_config(tool))
    assert parsed["tools"]["entry_points"] is False
    (entry,) = parsed["tools"]["plugins"]
    again = msgspec.convert(entry, PluginToolConfig)
    assert again == msgspec.structs.replace(tool, scale=None)
