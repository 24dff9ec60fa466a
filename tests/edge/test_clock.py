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
