"""System 5's responses on real limits, shedder and supervisor, and S5's lane ahead of S3's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.polling import async_wait_for
from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.app.vsm_systems import NodeEffectors
from vsmcp.node.tools.config import RateLimitConfig, RateLimitsConfig, ToolsConfig
from vsmcp.node.tools.registry import LocalCatalog, build_local_catalog
from vsmcp.node.tools.supervisor import UnitState
from vsmcp.node.vsm.algedonic import AlgedonicChannel
from vsmcp.node.vsm.balance import AlgedonicBalance
from vsmcp.node.vsm.events import ResponseTaken
from vsmcp.node.vsm.mitigation import MitigationOutcome, MitigationRequest
from vsmcp.node.vsm.responses import ResponseRule
from vsmcp.node.vsm.shedding import LoadShedder
from vsmcp.node.vsm.stream import EventStream, Subscriber
from vsmcp.node.vsm.system3 import System3Aggregate
from vsmcp.node.vsm.system5 import System5


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Immune:
    """A Mitigator (the immune system is built elsewhere): records and answers."""

    status: str = "issued"
    requests: list[MitigationRequest] = field(default_factory=list)

    def mitigate(self, request: MitigationRequest) -> MitigationOutcome:
        self.requests.append(request)
        return MitigationOutcome(status=self.status, policy_id="p1")  # type: ignore[arg-type]


@dataclass
class Rig:
    channel: AlgedonicChannel
    s5: System5
    s3: System3Aggregate
    catalog: LocalCatalog
    shedder: LoadShedder
    clock: Clock
    events: Subscriber
    audit: list[tuple[str, dict[str, Any]]]
    balance: AlgedonicBalance

    def responses(self) -> list[ResponseTaken]:
        return [e for e in self.events.buffer if isinstance(e, ResponseTaken)]


def make_rig(
    rules: list[ResponseRule],
    catalog: LocalCatalog,
    s3_interval_s: float = 3600,
    monotonic: Callable[[], float] | None = None,
) -> Rig:
    stream = EventStream()
    seen = stream.subscribe("seen", lambda batch: None)
    clock = Clock()
    order = iter(range(1, 1_000_000))
    channel = AlgedonicChannel(stream, threshold=0.7, capacity=16, clock=clock)
    balance = AlgedonicBalance(300)
    shedder = LoadShedder(stream)
    effectors = NodeEffectors(shedder)
    effectors.catalog = catalog
    audit: list[tuple[str, dict[str, Any]]] = []
    loops = LoopSupervisor()
    s5 = System5(
        channel.s5,
        rules,
        effectors,
        events=stream,
        balance=balance,
        loops=loops,
        audit=lambda kind, data: audit.append((kind, data)),
        order=lambda: next(order),
        monotonic=monotonic or clock,
        wall=clock,
    )
    s3 = System3Aggregate(
        channel.s3, balance, loops, interval_s=s3_interval_s, clock=clock, order=lambda: next(order)
    )
    return Rig(channel, s5, s3, catalog, shedder, clock, seen, audit, balance)


@pytest.fixture
async def catalog() -> AsyncIterator[LocalCatalog]:
    limits = RateLimitsConfig(per_origin=RateLimitConfig(rate_per_s=10, burst=10))
    cat = build_local_catalog(ToolsConfig(entry_points=False), limits)
    async with cat:
        await cat.supervisor.wait_running()
        yield cat


async def test_tighten_scales_limits_and_restores_them_when_it_ends(catalog: LocalCatalog) -> None:
    rule = ResponseRule(name="tight", do="tighten_limit", factor=0.25, duration_s=60)
    rig = make_rig([rule], catalog)
    builtin = catalog.supervisor.units["builtin"]
    limiter = catalog.policy.limiter
    assert limiter is not None
    rig.s5.handle(rig.channel.raise_signal("http:ops", "pain", 0.9, "overload"))
    assert builtin.effective_concurrency == 4  # 16 × 0.25
    assert limiter.per_origin.limit_for("http:x") is not None
    assert limiter.per_origin.limit_for("http:x").rate_per_s == 2.5  # type: ignore[union-attr]
    (active,) = rig.s5.view()["active"]
    assert active["until"] == 1060.0 and active["signal_seq"] == 1
    rig.clock.now += 59.9
    rig.s5.expire()
    assert builtin.effective_concurrency == 4
    rig.clock.now += 0.1
    rig.s5.expire()
    assert builtin.effective_concurrency == 16
    assert limiter.per_origin.limit_for("http:x").rate_per_s == 10  # type: ignore[union-attr]
    assert [(e.rule, e.outcome, e.until) for e in rig.responses()] == [
        ("tight", "applied", 1060.0),
        ("tight", "restored", None),
    ]
    assert [(k, d["outcome"]) for k, d in rig.audit] == [
        ("vsm.response", "applied"),
        ("vsm.response", "restored"),
    ]


async def test_the_tightest_of_overlapping_responses_wins(catalog: LocalCatalog) -> None:
    rules = [
        ResponseRule(name="half", do="tighten_limit", factor=0.5, duration_s=10),
        ResponseRule(name="quarter", do="tighten_limit", when=0.95, factor=0.25, duration_s=20),
    ]
    rig = make_rig(rules, catalog)
    unit = catalog.supervisor.units["builtin"]
    rig.s5.handle(rig.channel.raise_signal("x", "pain", 0.99))
    assert unit.effective_concurrency == 4
    rig.clock.now += 15  # `half` ended; `quarter` still holds
    rig.s5.expire()
    assert unit.effective_concurrency == 4
    rig.clock.now += 5
    rig.s5.expire()
    assert unit.effective_concurrency == 16


async def test_a_repeated_signal_extends_the_response_rather_than_stacking(
    catalog: LocalCatalog,
) -> None:
    rig = make_rig(
        [ResponseRule(name="shed", do="shed", priority="normal", duration_s=10)], catalog
    )
    rig.s5.handle(rig.channel.raise_signal("x", "pain", 0.9))
    rig.clock.now += 5
    rig.s5.handle(rig.channel.raise_signal("x", "pain", 0.9))
    assert len(rig.s5.active) == 1 and rig.shedder.level == "normal"
    rig.clock.now += 9
    rig.s5.expire()
    assert rig.shedder.level == "normal"
    rig.clock.now += 1
    rig.s5.expire()
    assert rig.shedder.level is None


async def test_quarantine_unit_goes_through_the_supervisor(catalog: LocalCatalog) -> None:
    rules = [
        ResponseRule(name="q", do="quarantine_unit", target="builtin", duration_s=30),
        ResponseRule(name="q-src", do="quarantine_unit", source="unit:*", duration_s=30),
    ]
    rig = make_rig(rules, catalog)
    rig.s5.handle(rig.channel.raise_signal("unit:ghost", "pain", 0.9, "crashing"))
    assert catalog.supervisor.units["builtin"].state is UnitState.QUARANTINED
    outcomes = {(e.rule, e.target): e.outcome for e in rig.responses()}
    # The second rule's target is the signal's source: no such unit, so it failed.
    assert outcomes == {("q", "builtin"): "applied", ("q-src", "unit:ghost"): "failed"}


async def test_block_origin_is_unavailable_without_an_immune_system(
    catalog: LocalCatalog,
) -> None:
    rule = ResponseRule(name="block", do="block_origin", duration_s=120)
    rig = make_rig([rule], catalog)
    rig.s5.handle(rig.channel.raise_signal("http:attacker", "pain", 0.9, "probing"))
    assert rig.responses()[-1].outcome == "unavailable"
    assert rig.s5.active == []
    immune = Immune()
    rig.s5.mitigator = immune
    rig.s5.handle(rig.channel.raise_signal("http:attacker", "pain", 0.9, "probing"))
    assert rig.responses()[-1].outcome == "issued"
    (request,) = immune.requests
    assert (request.target_kind, request.target, request.ttl_s) == ("origin", "http:attacker", 120)
    assert request.source == "s5:block" and request.reason == "probing"
    immune.status = "refused"
    rig.s5.handle(rig.channel.raise_signal("http:attacker", "pain", 0.9, "probing"))
    assert rig.responses()[-1].outcome == "refused"


async def test_alert_logs_a_warning_and_publishes(
    catalog: LocalCatalog, caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig([ResponseRule(name="page", do="alert", valence="any")], catalog)
    with caplog.at_level("WARNING", logger="vsmcp.node.vsm.system5"):
        rig.s5.handle(rig.channel.raise_signal("http:ops", "pleasure", 0.95, "record day"))
    assert "algedonic alert (rule page)" in caplog.text and "record day" in caplog.text
    assert [(e.action, e.outcome) for e in rig.responses()] == [("alert", "logged")]


async def test_no_rule_matching_is_recorded_but_changes_nothing(catalog: LocalCatalog) -> None:
    rig = make_rig([ResponseRule(name="r", do="shed", when=0.95)], catalog)
    rig.s5.handle(rig.channel.raise_signal("x", "pain", 0.9))
    assert rig.shedder.level is None and rig.responses() == []
    (recent,) = rig.s5.view()["recent_signals"]
    assert recent["rules"] == [] and recent["seq"] == 1
    assert rig.balance.balance(rig.clock.now) < 0  # S5's signals count in the balance


async def test_s5_lane_is_answered_while_earlier_weak_signals_wait_for_s3(
    catalog: LocalCatalog,
) -> None:
    rule = ResponseRule(name="shed", do="shed", priority="normal", duration_s=60)
    rig = make_rig([rule], catalog, s3_interval_s=3600)
    async with rig.s5, rig.s3:
        weak = [rig.channel.raise_signal("x", "pain", 0.2) for _ in range(5)]
        strong = rig.channel.raise_signal("x", "pain", 0.9)

        async def answered() -> bool:
            return rig.shedder.level == "normal"

        await async_wait_for(answered, what="S5's response")
        assert rig.s3.view()["queued"] == 5 and rig.s3.last_seq == 0
        assert rig.s5.view()["recent_signals"][0]["seq"] == strong.seq > weak[-1].seq
        assert rig.s3.drain() == 5
        assert rig.s3.last_order > rig.s5.view()["recent_signals"][0]["order"]


async def test_s5_loop_restores_a_response_when_its_time_is_up(catalog: LocalCatalog) -> None:
    rule = ResponseRule(name="shed", do="shed", priority="low", duration_s=0.05)
    # The loop's timer runs on real time here.
    rig = make_rig([rule], catalog, monotonic=asyncio.get_running_loop().time)
    async with rig.s5:
        rig.channel.raise_signal("x", "pain", 0.9)

        async def restored() -> bool:
            return any(e.outcome == "restored" for e in rig.responses())

        await async_wait_for(restored, what="the shed response restored by the S5 loop")
    assert rig.shedder.level is None
