"""The epoch clock's thread: it runs while calls run, and ends after `close` once the
last call, including one that started after the close, has left."""

from __future__ import annotations

import threading

from tests.polling import wait_for
from vsmcp.edge.clock import EpochClock


class _CountingEngine:
    def __init__(self) -> None:
        self.ticks = 0
        self._lock = threading.Lock()

    def increment_epoch(self) -> None:
        with self._lock:
            self.ticks += 1


def test_a_call_entering_after_close_keeps_the_thread_only_while_it_runs() -> None:
    engine = _CountingEngine()
    clock = EpochClock(engine)
    clock.enter()
    wait_for(lambda: engine.ticks > 0, what="the epoch ticking for the first call")
    clock.close()  # as at shutdown, with the first call still in flight
    clock.enter()  # a call rerun in the pool after its inline budget
    clock.leave()
    assert clock.thread_alive()  # the rerun still runs
    clock.leave()
    wait_for(lambda: not clock.thread_alive(), what="the thread ended after the last call")


def test_open_takes_a_close_back() -> None:
    engine = _CountingEngine()
    clock = EpochClock(engine)
    clock.enter()
    clock.leave()
    clock.close()
    wait_for(lambda: not clock.thread_alive(), what="the thread ended once closed and idle")
    clock.open()
    clock.enter()
    before = engine.ticks
    wait_for(lambda: engine.ticks > before, what="the epoch ticking again after open")
    clock.leave()
    # Idle but open: the thread waits for calls rather than ending.
    assert clock.thread_alive()
    clock.close()
    wait_for(lambda: not clock.thread_alive(), what="the thread ended after the second close")


class _PausingClock(EpochClock):
    """Its thread stops, once it has decided to end, until the test lets it go: the gap
    between that decision and the thread's exit, held open."""

    def __init__(self, engine: _CountingEngine) -> None:
        super().__init__(engine)
        self.ending = threading.Event()
        self.let_go = threading.Event()

    def _wait_for_calls(self) -> bool:
        calls = super()._wait_for_calls()
        if not calls:
            self.ending.set()
            self.let_go.wait()
        return calls


def test_a_call_entering_while_the_thread_is_ending_gets_a_ticking_clock() -> None:
    engine = _CountingEngine()
    clock = _PausingClock(engine)
    clock.enter()
    clock.leave()
    clock.close()
    assert clock.ending.wait(10), "the thread did not decide to end after close"
    try:
        clock.open()  # the runtime is acquired again
        clock.enter()  # and a call starts while the old thread is still alive
        before = engine.ticks
        wait_for(lambda: engine.ticks > before, what="the epoch ticking for the new call")
        clock.leave()
    finally:
        clock.let_go.set()
    clock.close()
    wait_for(lambda: not clock.thread_alive(), what="the new thread ended once closed and idle")
