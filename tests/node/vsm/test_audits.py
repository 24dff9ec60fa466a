"""System 3* audits on a real supervised unit: a busy unit is skipped, not failed; the
probe passes the unit's adaptive limit; only failures in a row quarantine."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from tests.polling import async_wait_for
from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.tools.config import ProbeConfig
from vsmcp.node.tools.errors import ConcurrencyLimited, Overloaded, RateLimited, ToolTimeout
from vsmcp.node.tools.model import CallContext, ToolResult, ToolSpec, text_result
from vsmcp.node.tools.supervisor import Supervisor, UnitPolicy, UnitState
from vsmcp.node.vsm.audits import Auditor
from vsmcp.node.vsm.audits_config import AuditsConfig
from vsmcp.node.vsm.limiter_settings import LimiterSettings

CTX = CallContext(caller_id="t", caller_zone="public", origin="test")
PROBE = ProbeConfig(arguments={}, expect={"required": ["ok"]})


class Probed:
    """`p.echo` answers `{"ok": ...}` (or `{"bad": ...}` while `broken`); `p.hold` waits
    for `release`; `refuse` makes every call raise it (a load refusal)."""

    def __init__(self) -> None:
        self.broken = False
        self.refuse: Exception | None = None
        self.release = asyncio.Event()
        self.calls = 0

    @property
    def name(self) -> str:
        return "p"

    def tools(self) -> Sequence[ToolSpec]:
        return (ToolSpec(name="p.echo"), ToolSpec(name="p.hold"))

    async def run(self, ready: Callable[[], None], stop: asyncio.Event) -> None:
        ready()
        await stop.wait()

    async def call(self, tool: str, arguments: Mapping[str, Any], ctx: CallContext) -> ToolResult:
        self.calls += 1
        if self.refuse is not None:
            raise self.refuse
        if tool == "p.hold":
            await self.release.wait()
        return text_result(json.dumps({"bad" if self.broken else "ok": True}))


def _auditor(sup: Supervisor, **config: Any) -> Auditor:
    auditor = Auditor(AuditsConfig(**config), LoopSupervisor(), zone="public")
    auditor.bind(sup, {"p.echo": PROBE})
    return auditor


async def _hold(sup: Supervisor, provider: Probed) -> asyncio.Task[ToolResult]:
    held = asyncio.create_task(sup.units["p"].call("p.hold", {}, CTX))

    async def running() -> bool:
        return provider.calls == 1

    await async_wait_for(running, what="the held call running")
    return held


async def test_a_unit_with_no_free_slot_is_skipped_not_failed_nor_queued() -> None:
    provider = Probed()
    async with Supervisor() as sup:
        unit = sup.add(provider, UnitPolicy(max_concurrency=1))
        await sup.wait_running()
        auditor = _auditor(sup, failures_to_quarantine=1)
        held = await _hold(sup, provider)
        assert await auditor.audit_tool("p.echo") is None
        assert provider.calls == 1 and unit.waiting_calls == 0  # never queued
        with pytest.raises(Overloaded):  # a peer's vsm.probe is refused for load, too
            await auditor.probe_tool({"tool": "p.echo"}, CTX)
        assert auditor.stats.get("skipped") == 1 and "failed" not in auditor.stats
        assert unit.state is UnitState.RUNNING and "p.echo" not in auditor.last
        provider.release.set()
        await held
        assert await auditor.audit_tool("p.echo") is True


async def test_a_load_refusal_of_the_probe_is_skipped() -> None:
    provider = Probed()
    async with Supervisor() as sup:
        unit = sup.add(provider, UnitPolicy())
        await sup.wait_running()
        auditor = _auditor(sup, failures_to_quarantine=1)
        provider.refuse = RateLimited("per-tool", "p.echo", 1.0)
        assert await auditor.audit_tool("p.echo") is None
        assert unit.state is UnitState.RUNNING and auditor.stats["skipped"] == 1


async def test_the_probe_runs_past_a_full_adaptive_limit_at_critical_priority() -> None:
    provider = Probed()
    async with Supervisor() as sup:
        sup.set_limiter_settings(LimiterSettings(min_limit=1, initial_limit=1, max_limit=1))
        sup.add(provider, UnitPolicy(max_concurrency=4))
        await sup.wait_running()
        auditor = _auditor(sup)
        held = await _hold(sup, provider)
        with pytest.raises(ConcurrencyLimited):  # a normal call is refused now
            await sup.units["p"].call("p.echo", {}, CTX)
        assert await auditor.audit_tool("p.echo") is True
        provider.release.set()
        await held


async def test_only_failures_in_a_row_quarantine_the_unit() -> None:
    provider = Probed()
    async with Supervisor() as sup:
        unit = sup.add(provider, UnitPolicy())
        await sup.wait_running()
        auditor = _auditor(sup)  # failures_to_quarantine = 2 by default
        provider.broken = True
        assert await auditor.audit_tool("p.echo") is False
        assert unit.state is UnitState.RUNNING and "quarantined" not in auditor.stats
        provider.broken = False
        assert await auditor.audit_tool("p.echo") is True  # a pass resets the count
        provider.broken = True
        assert await auditor.audit_tool("p.echo") is False
        assert unit.state is UnitState.RUNNING
        assert await auditor.audit_tool("p.echo") is False
        assert unit.status()["state"] == "quarantined" and auditor.stats["quarantined"] == 1
        assert auditor.stats["failed"] == 3


class Late(Probed):
    """`p.hold` as a mounted server's client can end it: the call cancelled at its
    deadline, it still answers with its own timeout error (after an await)."""

    async def call(self, tool: str, arguments: Mapping[str, Any], ctx: CallContext) -> ToolResult:
        try:
            return await super().call(tool, arguments, ctx)
        except asyncio.CancelledError:
            await asyncio.sleep(0)
            raise ToolTimeout(tool, 0.01) from None


def _hang_auditor(sup: Supervisor, timeout_s: float) -> Auditor:
    config = AuditsConfig(timeout_s=timeout_s, failures_to_quarantine=1000)
    auditor = Auditor(config, LoopSupervisor(), zone="public")
    auditor.bind(sup, {"p.hold": PROBE})
    return auditor


@pytest.mark.parametrize("provider", [Probed(), Late()], ids=["hangs", "times-out-itself"])
async def test_a_probe_with_no_answer_in_time_is_told_one_way(provider: Probed) -> None:
    """The probe's deadline reaches the unit (which stops the call at it) and bounds the
    audit's wait: whichever ends the call, the audit says the same."""
    async with Supervisor() as sup:
        sup.add(provider, UnitPolicy(max_concurrency=64))
        await sup.wait_running()
        auditor = _hang_auditor(sup, 0.01)
        details = set()
        for _ in range(20):
            assert await auditor.audit_tool("p.hold") is False
            details.add(auditor.last["p.hold"]["detail"])
        assert details == {"no answer within 0.01 s"}


async def test_a_unit_timeout_shorter_than_the_probes_is_told_as_the_tools_own() -> None:
    async with Supervisor() as sup:
        sup.add(Probed(), UnitPolicy(timeout_s=0.01))
        await sup.wait_running()
        auditor = _hang_auditor(sup, 30.0)
        assert await auditor.audit_tool("p.hold") is False
        detail = auditor.last["p.hold"]["detail"]
        assert detail == "timeout: Tool 'p.hold' did not finish within 0.010 s", detail
