"""The environment scan over what it reads (peers, tools, KPIs, bridges): proposals as
`s4_proposal` events in the node's event stream, and in its view."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.polling import async_wait_until
from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.vsm.events import AdaptationProposed, Event
from vsmcp.node.vsm.s4.config import S4Config
from vsmcp.node.vsm.s4.scan import EnvironmentScan, ScanInputs
from vsmcp.node.vsm.stream import EventStream


class World:
    """What the scan reads, changed by each test."""

    def __init__(self) -> None:
        self.peers: dict[str, str] = {"node-b": "alive", "node-c": "alive"}
        self.tools: dict[str, frozenset[str]] = {"echo": frozenset({"node-b", "node-c"})}
        self.errors = 0.0
        self.p95: float | None = None
        self.bridges: dict[str, str] = {}
        self.now = 1000.0

    def inputs(self) -> ScanInputs:
        return ScanInputs(
            peers=lambda: self.peers,
            tools=lambda: self.tools,
            kpis=lambda: (self.errors, self.p95),
            latency_objective_ms=100.0,
            bridges=lambda: self.bridges,
        )


@pytest.fixture
async def stream() -> AsyncIterator[tuple[EventStream, list[Event]]]:
    seen: list[Event] = []
    events = EventStream()
    events.subscribe("test", seen.extend, kinds=(AdaptationProposed,))
    async with events:
        yield events, seen


def proposals(scan: EnvironmentScan) -> list[tuple[str, str]]:
    return [(p["proposal"], p["subject"]) for p in scan.proposals]


async def test_changes_become_proposals_once_each(
    stream: tuple[EventStream, list[Event]],
) -> None:
    events, seen = stream
    world = World()
    config = S4Config(degraded_after_s=600.0)
    scan = EnvironmentScan(
        world.inputs(), config, events, LoopSupervisor(), clock=lambda: world.now
    )
    scan.scan()
    assert proposals(scan) == []  # the first look is the baseline
    world.tools = {"echo": frozenset({"node-b"}), "time.now": frozenset({"node-c"})}
    world.peers = {"node-b": "alive", "node-c": "suspect", "node-d": "alive"}
    scan.scan()
    scan.scan()  # nothing new: nothing proposed twice
    assert proposals(scan) == [
        ("peer_joined", "node-d"),
        ("tool_appeared", "time.now"),
        ("single_provider", "echo"),
    ]
    assert "one provider left (node-b)" in scan.proposals[-1]["note"]
    world.now += 601
    world.bridges = {"telegram": "down"}
    world.errors, world.p95 = 0.5, 250.0
    scan.scan()
    world.now += 601
    scan.scan()
    assert proposals(scan)[3:] == [
        ("peer_degraded", "node-c"),
        ("error_trend", "calls"),
        ("latency_trend", "calls"),
        ("bridge_down", "telegram"),
    ]
    world.peers["node-c"] = "dead"
    world.tools = {"echo": frozenset({"node-b"})}
    scan.scan()
    assert proposals(scan)[7:] == [("peer_gone", "node-c"), ("tool_gone", "time.now")]
    await async_wait_until(lambda: len(seen) == len(scan.proposals), what="every proposal an event")
    assert [(e.proposal, e.subject) for e in seen if isinstance(e, AdaptationProposed)] == (
        proposals(scan)
    )


async def test_the_scan_runs_as_a_supervised_loop(
    stream: tuple[EventStream, list[Event]],
) -> None:
    events, _ = stream
    world = World()
    scan = EnvironmentScan(world.inputs(), S4Config(scan_interval_s=0.01), events, LoopSupervisor())
    async with scan:
        await async_wait_until(lambda: scan.scans >= 3, what="three scans")
    assert scan.view()["scans"] >= 3


async def test_what_is_gone_is_forgotten_whatever_the_churn(
    stream: tuple[EventStream, list[Event]],
) -> None:
    events, _ = stream
    world = World()
    scan = EnvironmentScan(
        world.inputs(),
        S4Config(degraded_after_s=1.0),
        events,
        LoopSupervisor(),
        clock=lambda: world.now,
    )
    for i in range(200):  # peers come, turn suspect, and are reaped
        world.peers = {"node-b": "alive", f"churn-{i}": "suspect"}
        world.now += 5.0
        scan.scan()
    world.peers = {"node-b": "alive"}
    scan.scan()
    # Only what is still there (and the two KPI keys) is remembered.
    assert scan._bad_since == {}
    assert scan._raised <= {"peer:node-b", "single:echo", "kpi:errors", "kpi:latency"}


async def test_the_carriers_of_resources_and_prompts_are_not_proposed_about(
    stream: tuple[EventStream, list[Event]],
) -> None:
    events, _ = stream
    world = World()
    world.tools["vsm.mcp.node"] = frozenset({"node-b", "node-c"})
    scan = EnvironmentScan(world.inputs(), S4Config(), events, LoopSupervisor())
    scan.scan()
    world.tools = {
        "echo": frozenset({"node-b", "node-c"}),
        "vsm.mcp.node": frozenset({"node-b"}),  # one provider left
        "vsm.mcp.mount:time": frozenset({"node-c"}),  # appeared
        "time.now": frozenset({"node-c"}),
    }
    scan.scan()
    world.tools = {"echo": frozenset({"node-b", "node-c"})}  # gone
    scan.scan()
    assert proposals(scan) == [("tool_appeared", "time.now"), ("tool_gone", "time.now")]
