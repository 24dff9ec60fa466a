"""Supervision: restart with backoff, crash-loop quarantine, concurrency limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from tests.polling import async_wait_for
from vsmcp.node.tools.errors import (
    HeldCallsFull,
    Overloaded,
    ShuttingDown,
    ToolQuarantined,
    ToolTimeout,
    ToolUnavailable,
)
from vsmcp.node.tools.functions import FunctionProvider, PluginTool
from vsmcp.node.tools.model import CallContext, ToolResult, ToolSpec, text_result
from vsmcp.node.tools.registry import LocalCatalog
from vsmcp.node.tools.supervisor import MAX_HELD_CALLS, Supervisor, UnitPolicy, UnitState

CTX = CallContext(caller_id="t", caller_zone="public", origin="test")


class FlakyProvider:
    """Crashes `crashes` times (its run raises after ready), then stays up."""

    def __init__(self, crashes: int) -> None:
        self.crashes = crashes
        self.starts: list[float] = []

    @property
    def name(self) -> str:
        return "flaky"

    def tools(self) -> Sequence[ToolSpec]:
        return (ToolSpec(name="flaky.ping"),)

    async def run(self, ready: Callable[[], None], stop: asyncio.Event) -> None:
        self.starts.append(asyncio.get_running_loop().time())
        ready()
        if len(self.starts) <= self.crashes:
            raise RuntimeError(f"crash {len(self.starts)}")
        await stop.wait()

    async def call(self, tool: str, arguments: Mapping[str, Any], ctx: CallContext) -> ToolResult:
        return text_result("pong")


def policy(**kw: Any) -> UnitPolicy:
    base: dict[str, Any] = dict(
        backoff_initial_s=0.05, backoff_max_s=1.0, crash_loop_failures=4, quarantine_s=0.3
    )
    base.update(kw)
    return UnitPolicy(**base)


async def test_crashing_unit_restarts_with_exponential_backoff() -> None:
    provider = FlakyProvider(crashes=3)
    async with Supervisor() as sup:
        unit = sup.add(provider, policy())
        await async_wait_for(
            _is(lambda: len(provider.starts) == 4 and unit.state is UnitState.RUNNING),
            what="four starts, then running",
        )
        gaps = [b - a for a, b in zip(provider.starts, provider.starts[1:], strict=False)]
        # 0.05, 0.1, 0.2: each wait at least the backoff (never sooner).
        for gap, backoff in zip(gaps, (0.05, 0.1, 0.2), strict=True):
            assert gap >= backoff * 0.95
        assert unit.restarts == 3
    assert unit.state is UnitState.STOPPED


async def test_crash_loop_quarantines_then_retries() -> None:
    provider = FlakyProvider(crashes=4)
    catalog = LocalCatalog(Supervisor())
    unit = catalog.add(provider, policy())
    async with catalog:
        await async_wait_for(_is(lambda: unit.state is UnitState.QUARANTINED), what="quarantined")
        assert catalog.list_tools(CTX) == []
        with pytest.raises(ToolUnavailable) as err:
            await catalog.call_tool("flaky.ping", {}, CTX)
        assert err.value.data["state"] == "quarantined"
        assert err.value.data["retry_after_s"] is not None
        # After the cool-down it is started again and (crash budget spent) stays up.
        await async_wait_for(_is(lambda: unit.state is UnitState.RUNNING), what="back up")
        assert [t.name for t in catalog.list_tools(CTX)] == ["flaky.ping"]
        assert (await catalog.call_tool("flaky.ping", {}, CTX))["content"][0]["text"] == "pong"


async def test_plugin_exceptions_are_error_results_and_quarantine_only_that_tool() -> None:
    def broken(arguments: Mapping[str, Any]) -> str:
        raise RuntimeError("plugin bug")

    def fine(arguments: Mapping[str, Any]) -> str:
        return "fine"

    provider = FunctionProvider(
        "plugin:two",
        lambda: [PluginTool(name="broken", fn=broken), PluginTool(name="fine", fn=fine)],
    )
    catalog = LocalCatalog(Supervisor())
    unit = catalog.add(provider, policy(crash_loop_failures=3, quarantine_s=60))
    async with catalog:
        await catalog.supervisor.wait_running()
        for _ in range(3):
            result = await catalog.call_tool("broken", {}, CTX)
            assert result["isError"] is True
            assert "plugin bug" in result["content"][0]["text"]
        # The tool that keeps failing is refused, with the cause; its unit and the
        # unit's other tools carry on for everyone.
        with pytest.raises(ToolQuarantined, match="quarantined") as err:
            await catalog.call_tool("broken", {}, CTX)
        assert "plugin bug" in err.value.message
        assert err.value.data["cause"] == "RuntimeError: plugin bug"
        assert unit.state is UnitState.RUNNING
        assert (await catalog.call_tool("fine", {}, CTX))["content"][0]["text"] == "fine"


class Holder:
    """The tool `hold`: each call runs until `release` is set; counts calls running."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.running = 0
        self.peak = 0

    async def hold(self, arguments: Mapping[str, Any], ctx: CallContext) -> str:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        return "ok"

    def provider(self) -> FunctionProvider:
        return FunctionProvider("plugin:hold", lambda: [PluginTool(name="hold", fn=self.hold)])


async def test_concurrency_limit_and_bounded_queue() -> None:
    holder = Holder()
    catalog = LocalCatalog(Supervisor())
    unit = catalog.add(holder.provider(), policy(max_concurrency=2, max_queue=1))
    async with catalog:
        await catalog.supervisor.wait_running()
        calls = [asyncio.create_task(catalog.call_tool("hold", {}, CTX)) for _ in range(3)]
        await async_wait_for(_is(lambda: holder.running == 2), what="two running")
        status = catalog.status()[0]
        await async_wait_for(
            _is(lambda: catalog.status()[0]["waiting_calls"] == 1), what="one waiting"
        )
        with pytest.raises(Overloaded) as busy:
            await catalog.call_tool("hold", {}, CTX)
        assert busy.value.data["limit"] == "concurrency"
        assert busy.value.data["retry_after_s"] > 0
        holder.release.set()
        assert [r["content"][0]["text"] for r in await asyncio.gather(*calls)] == ["ok"] * 3
        assert holder.peak == 2
        assert status["running_calls"] == 2
        # The refusal is the limit working, not the unit failing: three calls, no error.
        kpis = unit.kpis.view(time.time())
        assert (kpis["calls"], kpis["errors"], kpis["refused"]) == (3, 0, 1)


async def test_call_timeout() -> None:
    async def sleepy(arguments: Mapping[str, Any], ctx: CallContext) -> str:
        await asyncio.sleep(10)
        return "late"

    provider = FunctionProvider("plugin:sleepy", lambda: [PluginTool(name="sleepy", fn=sleepy)])
    catalog = LocalCatalog(Supervisor())
    catalog.add(provider, policy(timeout_s=0.05))
    async with catalog:
        await catalog.supervisor.wait_running()
        with pytest.raises(ToolTimeout) as err:
            await catalog.call_tool("sleepy", {}, CTX)
        assert err.value.data["timeout_s"] == pytest.approx(0.05, abs=0.01)


async def test_start_and_stop_are_idempotent() -> None:
    sup = Supervisor()
    unit = sup.add(FlakyProvider(crashes=0), policy())
    await sup.start()
    await sup.start()
    await sup.wait_running()
    await sup.stop()
    await sup.stop()
    assert unit.state is UnitState.STOPPED


def _is(predicate: Callable[[], bool]) -> Callable[[], Any]:
    async def probe() -> bool:
        return predicate()

    return probe


async def test_cancel_calls_ends_calls_in_flight_with_shutting_down() -> None:
    started = asyncio.Event()

    async def hang(arguments: Mapping[str, Any]) -> str:
        started.set()
        await asyncio.Event().wait()
        return "unreachable"

    provider = FunctionProvider("plugin:hang", lambda: [PluginTool(name="hang", fn=hang)])
    catalog = LocalCatalog(Supervisor())
    catalog.add(provider, policy(timeout_s=600))
    async with catalog:
        await catalog.supervisor.wait_running()
        call = asyncio.create_task(catalog.call_tool("hang", {}, CTX))
        await started.wait()
        catalog.supervisor.cancel_calls()
        with pytest.raises(ShuttingDown, match="shutting down"):
            await call
        with pytest.raises(ShuttingDown):
            await catalog.call_tool("hang", {}, CTX)


async def test_tightened_concurrency_refuses_beyond_the_scaled_limit_then_restores() -> None:
    holder = Holder()
    catalog = LocalCatalog(Supervisor())
    unit = catalog.add(holder.provider(), policy(max_concurrency=4, max_queue=8))
    async with catalog:
        await catalog.supervisor.wait_running()
        catalog.supervisor.set_concurrency_scale(0.5)
        assert unit.effective_concurrency == 2
        calls = [asyncio.create_task(catalog.call_tool("hold", {}, CTX)) for _ in range(2)]
        await async_wait_for(_is(lambda: holder.running == 2), what="two running")
        # Not queued (the queue has room): refused at once, naming the tightened limit.
        with pytest.raises(Overloaded) as busy:
            await catalog.call_tool("hold", {}, CTX)
        assert busy.value.data["max_concurrency"] == 2
        catalog.supervisor.set_concurrency_scale(1.0)
        assert unit.effective_concurrency == 4
        third = asyncio.create_task(catalog.call_tool("hold", {}, CTX))
        await async_wait_for(_is(lambda: holder.running == 3), what="a third call running")
        holder.release.set()
        await asyncio.gather(*calls, third)
        with pytest.raises(ValueError):
            unit.set_concurrency_scale(0.0)
        catalog.supervisor.set_concurrency_scale(0.25)
        late = catalog.supervisor.add(FlakyProvider(crashes=0), policy(max_concurrency=8))
        assert late.effective_concurrency == 2  # added while tightened: tightened too


async def test_quarantine_on_demand_stops_the_unit_then_starts_it_again() -> None:
    provider = FlakyProvider(crashes=0)
    sup = Supervisor()
    unit = sup.add(provider, policy())
    async with sup:
        await sup.wait_running()
        assert not sup.quarantine("nope", 1.0, "no such unit")
        assert sup.quarantine("flaky", 0.2, "algedonic rule r")
        assert unit.state is UnitState.QUARANTINED
        assert unit.last_error == "algedonic rule r"
        assert not sup.quarantine("flaky", 0.2, "again")  # not running: nothing to do
        with pytest.raises(ToolUnavailable):
            await unit.call("flaky.ping", {}, CTX)
        await async_wait_for(
            _is(lambda: unit.state is UnitState.RUNNING), timeout_s=10, what="restarted"
        )
        assert len(provider.starts) == 2


class SubscribingProvider:
    """A unit with one tool (`subs.echo`) and an offers tool (`vsm.mcp.subs`) whose
    `resources/subscribe` calls are held until `release` is set, as a mount's are."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.holding = 0

    @property
    def name(self) -> str:
        return "subs"

    def tools(self) -> Sequence[ToolSpec]:
        return (ToolSpec(name="subs.echo"), ToolSpec(name="vsm.mcp.subs"))

    async def run(self, ready: Callable[[], None], stop: asyncio.Event) -> None:
        ready()
        await stop.wait()

    async def call(self, tool: str, arguments: Mapping[str, Any], ctx: CallContext) -> ToolResult:
        if tool == "subs.echo":
            return text_result("echo")
        self.holding += 1
        try:
            await self.release.wait()
        finally:
            self.holding -= 1
        return text_result("held")


SUBSCRIBE = {"method": "resources/subscribe", "params": {"uri": "demo://r"}}


async def test_held_subscriptions_take_no_slot_and_no_kpis() -> None:
    provider = SubscribingProvider()
    async with Supervisor() as sup:
        unit = sup.add(provider, policy(max_concurrency=2, max_queue=1))
        await sup.wait_running()
        held = [
            asyncio.create_task(unit.call("vsm.mcp.subs", SUBSCRIBE, CTX), name=f"held-{i}")
            for i in range(MAX_HELD_CALLS)
        ]
        await async_wait_for(
            _is(lambda: provider.holding == MAX_HELD_CALLS), what="all subscriptions held"
        )
        # The unit's two slots are free for its tools, however many subscriptions it holds.
        for _ in range(3):
            result = await unit.call("subs.echo", {}, CTX)
            assert result["content"][0]["text"] == "echo"
        status = unit.status()
        assert status["held_calls"] == MAX_HELD_CALLS
        assert status["running_calls"] == 0
        # One more is refused, clearly.
        with pytest.raises(HeldCallsFull) as full:
            await unit.call("vsm.mcp.subs", SUBSCRIBE, CTX)
        assert full.value.data["limit"] == "held_calls"
        assert full.value.data["max_held_calls"] == MAX_HELD_CALLS
        provider.release.set()
        assert {r["content"][0]["text"] for r in await asyncio.gather(*held)} == {"held"}
        assert unit.status()["held_calls"] == 0
        # Only the three tool calls count in the unit's KPIs.
        assert unit.kpis.view(time.time())["calls"] == 3
