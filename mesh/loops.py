"""Supervised background loops: the one way a node runs a long-lived task.

`LoopSupervisor.spawn(name, run)` runs `run()` in a task named `name`. When the loop
raises, the error is logged and counted (`restarts`, by loop kind: the metric
`vsmcp_loop_restarts_total{loop=...}`) and the loop is started again after an
exponential backoff. A loop that keeps failing (more than `max_restarts` restarts within
`window_s`) is given up: it stays down and the supervisor reports it in `failures`, so
the node's `/healthz` fails naming it and the systemd watchdog stops being fed (systemd
then restarts the whole process, which is the repair we can trust).

That holds for per-peer loops too (`transport-peer-<peer>`): one given up keeps the node
unhealthy after its peer has gone, and is not retried later. On purpose: a loop that
failed that often within a minute is a bug, not weather, and a restarted process is a
known state; without systemd, `/healthz` stays failing until the operator restarts it.

Cancellation of the loop's own task (shutdown) is not a failure. A CancelledError that
ends the loop while nobody cancelled its task (a future it awaited was cancelled
elsewhere, or `inject_fault`) is one: the loop is no longer running either way.

A loop that returns is done and is not restarted (a consumer whose source closed).
Lives in `mesh` so that both `mesh` (the transport) and `node` use it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

RESTART_BACKOFF_MIN_S = 0.1
RESTART_BACKOFF_MAX_S = 10.0
# More restarts than this within the window and the loop is given up (node unhealthy).
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
# Given-up loops remembered (for /healthz); per-peer loops could otherwise add up.
MAX_FAILURES_KEPT = 64
MAX_ERROR_CHARS = 300

LoopFn = Callable[[], Coroutine[Any, Any, None]]


class InjectedFault(Exception):
    """What a loop ended with when `inject_fault` stopped it (tests, `node.debug_api`)."""


class StrayCancellation(Exception):
    """A loop ended with CancelledError although nobody cancelled its task."""


@dataclass(eq=False)
class _Loop:
    name: str
    kind: str
    run: LoopFn
    restarts_at: deque[float] = field(default_factory=deque)
    current: asyncio.Task[None] | None = None
    fault_armed: bool = False  # fault the next run as soon as it starts
    faulted: bool = False  # the current run was ended by `inject_fault`


class LoopSupervisor:
    """Runs, restarts and reports the background loops of one node."""

    def __init__(
        self,
        *,
        max_restarts: int = MAX_RESTARTS,
        window_s: float = RESTART_WINDOW_S,
        backoff_min_s: float = RESTART_BACKOFF_MIN_S,
        backoff_max_s: float = RESTART_BACKOFF_MAX_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_restarts < 0 or window_s <= 0 or not 0 < backoff_min_s <= backoff_max_s:
            raise ValueError("bad loop supervision settings")
        self._max_restarts = max_restarts
        self._window_s = window_s
        self._backoff_min_s = backoff_min_s
        self._backoff_max_s = backoff_max_s
        self._clock = clock
        self.restarts: Counter[str] = Counter()
        self.failures: dict[str, str] = {}
        self._kinds: set[str] = set()
        self._loops: dict[str, _Loop] = {}

    # -- running -------------------------------------------------------------------------

    def spawn(self, name: str, run: LoopFn, *, kind: str | None = None) -> asyncio.Task[None]:
        """Run `run()` supervised, in a task named `name`; cancel the task to stop it.

        `kind` is the metric label (default: `name`); loops started per peer share one,
        so the metric's label set stays small.
        """
        loop = _Loop(name, kind or name, run)
        self._kinds.add(loop.kind)
        return asyncio.create_task(self._supervise(loop), name=name)

    async def _supervise(self, loop: _Loop) -> None:
        self._loops[loop.name] = loop
        try:
            while True:
                error = await self._run_once(loop)
                if error is None:
                    return
                delay = self._after_failure(loop, error)
                if delay is None:
                    return
                await asyncio.sleep(delay)
        finally:
            if self._loops.get(loop.name) is loop:
                del self._loops[loop.name]

    async def _run_once(self, loop: _Loop) -> BaseException | None:
        """Run the loop to its end: None if it returned, else what ended it."""
        task = asyncio.create_task(loop.run(), name=f"{loop.name}:run")
        loop.current = task
        if loop.fault_armed:
            loop.fault_armed = False
            asyncio.get_running_loop().call_soon(_fault, loop)
        try:
            await task
        except asyncio.CancelledError:
            if _being_cancelled():
                raise  # shutdown: our own task was cancelled (and the loop with it)
            if loop.faulted:
                return InjectedFault("fault injected through the debug API")
            return StrayCancellation("cancelled, but not by its owner")
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - top-level handler of a supervised loop
            # BaseException: pycrdt's Rust panics derive from it, and must not end the loop.
            return exc
        finally:
            loop.current = None
            loop.faulted = False
        return None

    def _after_failure(self, loop: _Loop, error: BaseException) -> float | None:
        """Count the failure; the delay before the restart, or None if given up."""
        now = self._clock()
        recent = loop.restarts_at
        while recent and now - recent[0] > self._window_s:
            recent.popleft()
        described = f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]
        if len(recent) >= self._max_restarts:
            if len(self.failures) < MAX_FAILURES_KEPT:
                self.failures[loop.name] = described
            log.critical(
                "loop %s failed %d times within %.0f s; giving up (node unhealthy): %s",
                loop.name,
                len(recent) + 1,
                self._window_s,
                described,
                exc_info=error,
            )
            return None
        recent.append(now)
        self.restarts[loop.kind] += 1
        delay: float = min(self._backoff_max_s, self._backoff_min_s * 2.0 ** (len(recent) - 1))
        log.error(
            "loop %s failed; restarting in %.3g s: %s", loop.name, delay, described, exc_info=error
        )
        return delay

    # -- reporting -----------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return not self.failures

    def problems(self) -> list[str]:
        """One line per given-up loop, for `/healthz` and the systemd status."""
        return [f"loop {name} stopped: {error}" for name, error in sorted(self.failures.items())]

    def restart_counts(self) -> dict[str, int]:
        """Restarts by loop kind, every kind ever started included (at zero)."""
        counts = dict.fromkeys(self._kinds, 0)
        counts.update(self.restarts)
        return counts

    def running(self) -> list[str]:
        return sorted(name for name, loop in self._loops.items() if loop.current is not None)

    # -- fault injection (tests only: the node offers it only with node.debug_api) ------

    def inject_fault(self, name: str) -> bool:
        """End the loop `name` as if it had raised, at its next await point (now if it is
        running, else as soon as it restarts). False if no such loop is supervised."""
        loop = self._loops.get(name)
        if loop is None:
            return False
        if loop.current is not None and not loop.current.done():
            _fault(loop)
        else:
            loop.fault_armed = True
        return True


def _fault(loop: _Loop) -> None:
    if loop.current is not None and not loop.current.done():
        loop.faulted = True
        loop.current.cancel()


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
