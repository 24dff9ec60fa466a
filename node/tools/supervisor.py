"""Supervision of System 1 tool units: restart with backoff, quarantine, concurrency limits.

Each provider runs as one `Unit` in one named task owned by the `Supervisor`:

- **Restart with backoff.** A provider whose `run` returns or raises before it was
  asked to stop has crashed; it is restarted after `backoff_initial_s * 2**(n-1)`
  (capped at `backoff_max_s`), `n` counting crashes since it last ran for
  `backoff_reset_s`. A call that raises `UnitFault` (e.g. a mounted server's pipe
  closed) restarts it too (see "Faults of one tool").
- **Quarantine.** `crash_loop_failures` crashes within `crash_loop_window_s` quarantine
  the unit for `quarantine_s`: it is stopped, its tools leave the list, calls get
  `ToolUnavailable` naming the state, the cause and the retry time. After the cool-down
  it is started again with a clean failure record.
- **Faults of one tool stay with that tool.** A call that breaks its unit (a mounted
  server that dies mid-call) or raises restarts the unit at the initial backoff, but
  counts against the *tool*: the same number of such faults within the window
  quarantines only that tool (`ToolQuarantined`), so whoever keeps calling a crashing
  tool cannot take the unit's other tools away from everyone. A call that raises
  (a plugin's bug, or `ToolFault`: a WASM module stopped at a limit) counts the same
  way without a restart.
- **Shutdown.** `cancel_calls` cancels every call in flight (their callers get
  `ShuttingDown`) and refuses new ones, so that a hung tool cannot hold the node up.
- **Concurrency.** At most `max_concurrency` calls run at once per unit; up to
  `max_queue` more wait (within their deadline) for a slot; beyond that a call is
  refused at once with `Overloaded` and a retry-after estimated from recent call
  durations. We queue a little rather than refuse at once so that short bursts are
  absorbed, and bound the queue so that overload is answered quickly. With
  `[vsm.concurrency]` each unit also has an adaptive limit (`node.vsm.concurrency`,
  at most `max_concurrency`): a call beyond it is refused at once, lower priority
  classes first, so the queue is only reached if the limit is above what can run.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final

from vsmcp.mesh.service import Service
from vsmcp.node.tools.errors import (
    HeldCallsFull,
    Overloaded,
    ShuttingDown,
    ToolConfigError,
    ToolError,
    ToolFault,
    ToolQuarantined,
    ToolTimeout,
    ToolUnavailable,
    UnitFault,
)
from vsmcp.node.tools.model import CallContext, Provider, ToolResult, ToolSpec, text_result
from vsmcp.node.tools.offers import SUBSCRIBE_METHOD, is_offers_tool
from vsmcp.node.vsm.events import EventSink, UnitStateChanged
from vsmcp.node.vsm.kpis import CALLER_OUTCOMES, REFUSED_OUTCOMES, CallKpis
from vsmcp.node.vsm.limiter_settings import LimiterSettings

if TYPE_CHECKING:
    from vsmcp.node.tools.admission import EntryGate

log = logging.getLogger(__name__)

UNIT_KPI_WINDOW_S = 60.0
# Calls each unit's KPI window keeps (the oldest go first): ≈1 MB per unit at most.
UNIT_KPI_MAX_CALLS = 10_000

INITIAL_CALL_ESTIMATE_S = 0.1
# Held calls (a resource subscription kept until its deadline, `is_held_call`) a unit
# runs at once: outside its slots, gate and KPIs, so they cannot starve its tool calls
# nor skew its latency; one more is refused (`HeldCallsFull`).
MAX_HELD_CALLS: Final = 64


@dataclass(slots=True)
class _ToolFaults:
    """Recent faults of one tool (see "Faults of one tool stay with that tool")."""

    times: deque[float]
    last_error: str | None = None
    quarantined_until: float | None = None


class UnitState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    QUARANTINED = "quarantined"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitPolicy:
    max_concurrency: int = 16
    max_queue: int = 64
    timeout_s: float | None = 30.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 30.0
    backoff_reset_s: float = 30.0
    crash_loop_failures: int = 5
    crash_loop_window_s: float = 60.0
    quarantine_s: float = 60.0
    stop_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_concurrency < 1 or self.max_queue < 0 or self.crash_loop_failures < 1:
            raise ToolConfigError(
                "unit policy: max_concurrency >= 1, max_queue >= 0, crash_loop_failures >= 1"
            )


StateCallback = Callable[["Unit", UnitState], None]
"""`on_state(unit, previous)`: the unit's state changed from `previous`."""


class Unit:
    """One supervised provider. Created by `Supervisor.add`."""

    def __init__(
        self,
        provider: Provider,
        policy: UnitPolicy,
        on_change: Callable[[], None],
        on_state: StateCallback | None = None,
    ) -> None:
        self.provider = provider
        self.policy = policy
        self._on_change = on_change
        self._on_state = on_state
        self.state = UnitState.STOPPED
        self.retry_at: float | None = None
        self.last_error: str | None = None
        self.restarts = 0
        self._failures: deque[float] = deque()
        self._consecutive = 0
        self._started_at: float | None = None
        self._sem = asyncio.Semaphore(policy.max_concurrency)
        self._waiting = 0
        self._running = 0
        self._held = 0
        self._call_estimate_s = INITIAL_CALL_ESTIMATE_S
        self._restart = asyncio.Event()
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._tool_faults: dict[str, _ToolFaults] = {}
        # Set while System 5 tightens limits: calls beyond it are refused, not queued.
        self._concurrency_cap: int | None = None
        # The unit's adaptive concurrency limit (`node.vsm.concurrency`), if configured.
        self.gate: EntryGate | None = None
        # System 3's KPIs of this unit's calls, over a sliding window.
        self.kpis = CallKpis(UNIT_KPI_WINDOW_S, UNIT_KPI_MAX_CALLS)
        self._calls: set[asyncio.Task[Any]] = set()
        self._cancelled_calls: set[asyncio.Task[Any]] = set()
        self._closing = False

    @property
    def name(self) -> str:
        return self.provider.name

    def tools(self) -> Sequence[ToolSpec]:
        """The unit's tools while it is running, else none."""
        return self.provider.tools() if self.state is UnitState.RUNNING else ()

    def known_tools(self) -> Sequence[ToolSpec]:
        """The tools the provider last declared, running or not (for clear errors)."""
        return self.provider.tools()

    def status(self) -> dict[str, Any]:
        now = _now()
        return {
            "unit": self.name,
            "state": self.state.value,
            "restarts": self.restarts,
            "recent_failures": len(self._failures),
            "retry_in_s": None if self.retry_at is None else max(0.0, self.retry_at - now),
            "running_calls": self._running,
            "held_calls": self._held,
            "waiting_calls": self._waiting,
            "adaptive": None if self.gate is None else self.gate.limiter.view(),
            "last_error": self.last_error,
        }

    # -- calls -------------------------------------------------------------------------

    def _retry_after(self) -> float | None:
        return None if self.retry_at is None else max(0.0, self.retry_at - _now())

    def _check_running(self, tool: str) -> None:
        if self._closing:
            raise ShuttingDown(tool)
        if self.state is not UnitState.RUNNING:
            raise ToolUnavailable(
                tool, self.name, self.state.value, self._retry_after(), self.last_error
            )
        faults = self._tool_faults.get(tool)
        if faults is not None and faults.quarantined_until is not None:
            left = faults.quarantined_until - _now()
            if left > 0:
                raise ToolQuarantined(tool, self.name, left, faults.last_error)
            faults.quarantined_until = None
            faults.times.clear()

    async def call(self, tool: str, arguments: Mapping[str, Any], ctx: CallContext) -> ToolResult:
        self._check_running(tool)
        held = is_held_call(tool, arguments)
        if held:
            if self._held >= MAX_HELD_CALLS:
                raise HeldCallsFull(self.name, MAX_HELD_CALLS)
            self._held += 1
        task = asyncio.current_task()
        if task is not None:
            self._calls.add(task)
        started = time.monotonic()
        failed = True
        refused = False  # a limit refused it before it ran: not a call of the window
        try:
            result = await self._call(tool, arguments, ctx, held)
            failed = bool(result.get("isError"))
            return result
        except ToolError as e:
            refused = e.reason in REFUSED_OUTCOMES
            failed = e.reason not in CALLER_OUTCOMES
            raise
        except asyncio.CancelledError:
            if task is None or task not in self._cancelled_calls:
                failed = False  # the caller's cancel
                raise
            # Our own cancel (cancel_calls): the caller is told why, unless someone
            # else cancelled the task too.
            self._cancelled_calls.discard(task)
            if task.uncancel() > 0:
                raise
            raise ShuttingDown(tool) from None
        finally:
            if task is not None:
                self._calls.discard(task)
                self._cancelled_calls.discard(task)
            if held:
                self._held -= 1
            elif refused:
                self.kpis.refused(time.time())
            else:
                self.kpis.record(time.time(), (time.monotonic() - started) * 1000, failed)

    async def _call(
        self, tool: str, arguments: Mapping[str, Any], ctx: CallContext, held: bool
    ) -> ToolResult:
        gate = None if held else self.gate
        started = gate.admit(ctx, tool) if gate is not None else 0.0
        ran = False  # the call ran here (or timed out here): its latency feeds the limit
        ctx = ctx.with_timeout(self.policy.timeout_s)
        budget = ctx.remaining_s()
        deadline = asyncio.timeout_at(ctx.deadline)
        try:
            async with deadline:
                if not held:
                    await self._acquire_slot()
                try:
                    self._check_running(tool)
                    result = await self._invoke(tool, arguments, ctx, held)
                    ran = True
                    return result
                finally:
                    if not held:
                        self._sem.release()
        except TimeoutError:
            if deadline.expired():
                ran = True
                raise ToolTimeout(tool, budget or 0.0) from None
            raise
        finally:
            if gate is not None:
                gate.done(started, sample=ran)

    def cancel_calls(self) -> None:
        """Refuse new calls and cancel those in flight (their callers get `ShuttingDown`)."""
        self._closing = True
        for task in self._calls - self._cancelled_calls:
            self._cancelled_calls.add(task)
            task.cancel()

    @property
    def effective_concurrency(self) -> int:
        """Calls that may run at once now (lower while System 5 tightens limits)."""
        cap = self._concurrency_cap
        return self.policy.max_concurrency if cap is None else cap

    @property
    def slot_free(self) -> bool:
        """A call admitted now runs at once, without waiting for a slot (S3* probes run
        only then: their timeout times the tool, not the queue)."""
        return not self._sem.locked() and not self._over_cap()

    @property
    def running_calls(self) -> int:
        return self._running

    @property
    def waiting_calls(self) -> int:
        return self._waiting

    def set_concurrency_scale(self, factor: float) -> None:
        """System 5's `tighten_limit` (the adaptive limit's upper bound too): below 1, at
        most max(1, ⌊max_concurrency × factor⌋) calls run and a call beyond that is
        refused at once (`Overloaded`) rather than queued; 1.0 restores the configured
        limit."""
        if not 0 < factor <= 1:
            raise ValueError(f"scale must be in (0, 1], got {factor}")
        cap = max(1, int(self.policy.max_concurrency * factor))
        self._concurrency_cap = None if factor == 1 else cap
        if self.gate is not None:
            self.gate.limiter.set_scale(factor)

    def quarantine(self, seconds: float, reason: str) -> bool:
        """Quarantine the running unit for `seconds` (System 5's `quarantine_unit`): it
        is stopped and started again afterwards, as after a crash loop. False when it
        is not running (already restarting, quarantined or stopped)."""
        live = self.state in (UnitState.RUNNING, UnitState.STARTING)
        if self._task is None or self._stopping or not live:
            return False
        self.last_error = reason
        log.warning("tool unit %s quarantined for %.1f s: %s", self.name, seconds, reason)
        self._set_state(UnitState.QUARANTINED, seconds)
        self._restart.set()
        return True

    def _over_cap(self) -> bool:
        cap = self._concurrency_cap
        return cap is not None and self._running >= cap

    def _refuse_overloaded(self) -> None:
        policy = self.policy
        estimate = self._call_estimate_s * (1 + self._waiting / policy.max_concurrency)
        raise Overloaded(self.name, self.effective_concurrency, policy.max_queue, estimate)

    async def _acquire_slot(self) -> None:
        if self._over_cap():
            self._refuse_overloaded()
        if self._sem.locked() and self._waiting >= self.policy.max_queue:
            policy = self.policy
            estimate = self._call_estimate_s * (1 + self._waiting / policy.max_concurrency)
            raise Overloaded(self.name, policy.max_concurrency, policy.max_queue, estimate)
        self._waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self._waiting -= 1
        if self._over_cap():  # tightened while this call waited
            self._sem.release()
            self._refuse_overloaded()

    async def _invoke(
        self, tool: str, arguments: Mapping[str, Any], ctx: CallContext, held: bool
    ) -> ToolResult:
        loop = asyncio.get_running_loop()
        started = loop.time()
        running = 0 if held else 1  # a held call is not one of the unit's running calls
        self._running += running
        try:
            return await self.provider.call(tool, arguments, ctx)
        except ToolError:
            raise
        except UnitFault as exc:
            cause = f"a call to {tool!r} broke it: {exc}"
            self.fault(cause, restart=True, tool=tool)
            raise ToolUnavailable(
                tool, self.name, self.state.value, self._retry_after(), cause
            ) from exc
        except ToolFault as exc:  # expected, so no traceback; it counts all the same
            log.warning("tool %s (unit %s) failed: %s", tool, self.name, exc)
            self.fault(str(exc), restart=False, tool=tool)
            return text_result(f"Tool {tool!r} failed: {exc}", is_error=True)
        except Exception as exc:  # plugin code: any bug is the caller's isError result
            log.warning("tool %s (unit %s) raised", tool, self.name, exc_info=True)
            self.fault(f"{type(exc).__name__}: {exc}", restart=False, tool=tool)
            return text_result(f"Tool {tool!r} failed: {type(exc).__name__}: {exc}", is_error=True)
        finally:
            self._running -= running
            if not held:
                elapsed = loop.time() - started
                self._call_estimate_s = 0.8 * self._call_estimate_s + 0.2 * elapsed

    # -- failures ----------------------------------------------------------------------

    def _note_failure(self, reason: str) -> bool:
        """Record one failure; True when it makes a crash loop."""
        now = _now()
        self.last_error = reason
        if self._started_at is not None and now - self._started_at >= self.policy.backoff_reset_s:
            self._consecutive = 0
        self._consecutive += 1
        self._failures.append(now)
        while self._failures and now - self._failures[0] > self.policy.crash_loop_window_s:
            self._failures.popleft()
        return len(self._failures) >= self.policy.crash_loop_failures

    def _set_state(self, state: UnitState, retry_in_s: float | None = None) -> None:
        self.retry_at = None if retry_in_s is None else _now() + retry_in_s
        if state is not self.state:
            previous = self.state
            was_running = previous is UnitState.RUNNING
            self.state = state
            if self._on_state is not None:
                self._on_state(self, previous)
            if was_running or state is UnitState.RUNNING:
                self._on_change()

    def _after_failure(self, crash_loop: bool) -> None:
        if crash_loop:
            log.error(
                "tool unit %s quarantined for %.1f s after %d failures: %s",
                self.name,
                self.policy.quarantine_s,
                len(self._failures),
                self.last_error,
            )
            self._set_state(UnitState.QUARANTINED, self.policy.quarantine_s)
        else:
            delay = min(
                self.policy.backoff_max_s,
                self.policy.backoff_initial_s * 2 ** (self._consecutive - 1),
            )
            log.warning("tool unit %s restarting in %.2f s: %s", self.name, delay, self.last_error)
            self._set_state(UnitState.RESTARTING, delay)

    def fault(self, reason: str, *, restart: bool, tool: str | None = None) -> None:
        """A call failed. Quarantine on a crash loop (of `tool` if given, else of the
        unit); restart the provider if asked."""
        live = self.state in (UnitState.RUNNING, UnitState.STARTING)
        if tool is None:
            crash_loop = self._note_failure(reason)
            if (crash_loop or restart) and live:
                self._after_failure(crash_loop)
                self._restart.set()
            return
        if restart and not live:
            # Already restarting: the other calls in flight when the unit broke fail
            # with it, and only the first one to notice is held responsible.
            return
        self.last_error = reason
        self._note_tool_fault(tool, reason)
        if restart:
            # The tool is what failed, not the unit: no growing backoff for the others.
            delay = self.policy.backoff_initial_s
            log.warning("tool unit %s restarting in %.2f s: %s", self.name, delay, reason)
            self._set_state(UnitState.RESTARTING, delay)
            self._restart.set()

    def _note_tool_fault(self, tool: str, reason: str) -> None:
        now = _now()
        faults = self._tool_faults.get(tool)
        if faults is None:
            faults = self._tool_faults[tool] = _ToolFaults(deque())
        faults.last_error = reason
        faults.times.append(now)
        while faults.times and now - faults.times[0] > self.policy.crash_loop_window_s:
            faults.times.popleft()
        if len(faults.times) >= self.policy.crash_loop_failures:
            faults.quarantined_until = now + self.policy.quarantine_s
            log.error(
                "tool %s of unit %s quarantined for %.1f s after %d faults: %s",
                tool,
                self.name,
                self.policy.quarantine_s,
                len(faults.times),
                reason,
            )

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._closing = False
            self._task = asyncio.create_task(self._loop(), name=f"tool-unit:{self.name}")

    async def stop(self) -> None:
        self.cancel_calls()
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._restart.set()
        self._wake.set()
        await asyncio.wait({task}, timeout=self.policy.stop_timeout_s + 1)
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
        self._set_state(UnitState.STOPPED)

    def _on_ready(self) -> None:
        if self.state is UnitState.STARTING:
            self._started_at = _now()
            self._set_state(UnitState.RUNNING)

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, seconds))

    async def _loop(self) -> None:
        while not self._stopping:
            if self.state is UnitState.QUARANTINED:
                await self._sleep(self._retry_after() or 0.0)
                self._failures.clear()
                self._consecutive = 0
            elif self.state is UnitState.RESTARTING:
                await self._sleep(self._retry_after() or 0.0)
            if self._stopping:
                break
            if self.state is not UnitState.STOPPED:
                self.restarts += 1
            self._set_state(UnitState.STARTING)
            self._restart.clear()
            stop = asyncio.Event()
            run = asyncio.create_task(
                self.provider.run(self._on_ready, stop), name=f"tool-unit:{self.name}:provider"
            )
            restart = asyncio.create_task(self._restart.wait(), name=f"tool-unit:{self.name}:watch")
            try:
                await asyncio.wait({run, restart}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                restart.cancel()
                if not run.done():
                    stop.set()
                    await self._finish(run)
            error = _describe_end(run)
            if self._stopping:
                break
            if self.state in (UnitState.RUNNING, UnitState.STARTING):
                # The provider ended on its own: a crash.
                self._after_failure(self._note_failure(error))
        self._set_state(UnitState.STOPPED)

    async def _finish(self, run: asyncio.Task[None]) -> None:
        await asyncio.wait({run}, timeout=self.policy.stop_timeout_s)
        if not run.done():
            log.warning("tool unit %s did not stop in time; cancelling it", self.name)
            run.cancel()
            await asyncio.wait({run})


def _describe_end(run: asyncio.Task[None]) -> str:
    if run.cancelled():
        return "cancelled"
    exc = run.exception()
    if exc is None:
        return "provider exited"
    return f"{type(exc).__name__}: {exc}"


def _now() -> float:
    return asyncio.get_running_loop().time()


class Supervisor(Service):
    """Owns the units. Async context manager; `start`/`stop` are idempotent."""

    def __init__(self) -> None:
        self._units: dict[str, Unit] = {}
        self._callbacks: list[Callable[[], None]] = []
        self._started = False
        self._change_event = asyncio.Event()
        # Where unit state changes are published (the node's event stream); set by the node.
        self.events: EventSink | None = None
        self._concurrency_scale = 1.0
        # Each unit's adaptive concurrency limit (`vsm.concurrency`); None: fixed limits only.
        self._limiter_settings: LimiterSettings | None = None

    @property
    def units(self) -> Mapping[str, Unit]:
        return self._units

    def add(self, provider: Provider, policy: UnitPolicy | None = None) -> Unit:
        if provider.name in self._units:
            raise ToolConfigError(f"tool unit {provider.name!r} is declared twice")
        unit = Unit(provider, policy or UnitPolicy(), self._changed, self._state_changed)
        self._attach_limiter(unit)
        unit.set_concurrency_scale(self._concurrency_scale)  # a unit added while tightened
        self._units[provider.name] = unit
        # Providers whose tool list changes while running (mounted servers) tell us.
        hook = getattr(provider, "set_on_change", None)
        if callable(hook):
            hook(self._changed)
        if self._started:
            unit.start()
        return unit

    async def remove(self, name: str) -> None:
        unit = self._units.pop(name, None)
        if unit is not None:
            await unit.stop()
            self._changed()

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    def _state_changed(self, unit: Unit, previous: UnitState) -> None:
        if self.events is not None:
            self.events.publish(
                UnitStateChanged(
                    ts=time.time(),
                    unit=unit.name,
                    state=unit.state.value,
                    previous=previous.value,
                    reason=unit.last_error if unit.state is not UnitState.RUNNING else None,
                )
            )

    def _changed(self) -> None:
        self._change_event.set()
        self._change_event = asyncio.Event()
        for callback in list(self._callbacks):
            try:
                callback()
            except Exception:  # one listener must not break the others
                log.exception("tool change listener failed")

    def status(self) -> list[dict[str, Any]]:
        return [unit.status() for unit in self._units.values()]

    def quarantine(self, name: str, seconds: float, reason: str) -> bool:
        """Quarantine the unit `name` for `seconds`; False if there is no such unit or it
        is not running."""
        unit = self._units.get(name)
        return unit is not None and unit.quarantine(seconds, reason)

    def set_concurrency_scale(self, factor: float) -> None:
        """Scale every unit's concurrency limit, and that of units added later (see
        `Unit.set_concurrency_scale`)."""
        self._concurrency_scale = factor
        for unit in self._units.values():
            unit.set_concurrency_scale(factor)

    def set_limiter_settings(self, settings: LimiterSettings | None) -> None:
        """Give every unit (and units added later) an adaptive concurrency limit; None:
        none (the fixed `max_concurrency`/`max_queue` only)."""
        self._limiter_settings = settings
        for unit in self._units.values():
            self._attach_limiter(unit)
            unit.set_concurrency_scale(self._concurrency_scale)

    def _attach_limiter(self, unit: Unit) -> None:
        settings = self._limiter_settings
        if settings is None:
            unit.gate = None
            return
        # A unit never needs a limit above the calls it can run at once.
        bounded = replace(
            settings,
            max_limit=max(settings.min_limit, min(settings.max_limit, unit.policy.max_concurrency)),
            initial_limit=max(
                settings.min_limit, min(settings.initial_limit, unit.policy.max_concurrency)
            ),
        )
        # Imported with the first limit ([vsm.concurrency]): an idle node has none.
        from vsmcp.node.tools.admission import EntryGate
        from vsmcp.node.vsm.concurrency import AdaptiveLimiter

        limiter = AdaptiveLimiter(f"unit:{unit.name}", bounded, time.monotonic())
        unit.gate = EntryGate(limiter, self.events)

    async def wait_running(self, timeout_s: float = 10.0) -> None:
        """Wait until every unit is running (startup convenience; raises TimeoutError)."""
        async with asyncio.timeout(timeout_s):
            while any(u.state is not UnitState.RUNNING for u in self._units.values()):
                changed = self._change_event
                await changed.wait()

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        for unit in self._units.values():
            unit.start()

    def cancel_calls(self) -> None:
        """The first step of shutdown: end every call in flight, refuse new ones."""
        for unit in self._units.values():
            unit.cancel_calls()

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        await asyncio.gather(*(unit.stop() for unit in self._units.values()))


def is_held_call(tool: str, arguments: Mapping[str, Any]) -> bool:
    """A call that is held open until its deadline by design: an offers tool's
    `resources/subscribe` (the provider passes the URI's updates while it runs)."""
    return is_offers_tool(tool) and arguments.get("method") == SUBSCRIBE_METHOD
