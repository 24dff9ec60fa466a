"""The epoch clock: wall-time deadlines for running modules.

wasmtime interrupts a store once the engine's epoch passes the store's deadline. One
thread advances the epoch every `tick_s` *of wall time* (it catches up after a late
wake-up, so the epoch tracks the clock rather than drifting by each sleep's overshoot),
and only while calls run: an idle node pays nothing. A runaway module is therefore
stopped between its deadline and one tick after it, and never holds a thread longer.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Final, Protocol

DEFAULT_TICK_S: Final = 0.001


class _Engine(Protocol):
    def increment_epoch(self) -> None: ...


class EpochClock:
    def __init__(self, engine: _Engine, tick_s: float = DEFAULT_TICK_S) -> None:
        self._engine = engine
        self.tick_s = tick_s
        self._cond = threading.Condition()
        self._active = 0
        self._closing = False
        self._thread: threading.Thread | None = None

    def ticks_for(self, seconds: float) -> int:
        """A store deadline (in ticks from now) that passes no sooner than `seconds`:
        the current tick is already partly gone, hence the one extra."""
        return max(1, math.ceil(seconds / self.tick_s)) + 1

    def enter(self) -> None:
        """A call starts: the clock must run until the matching `leave`."""
        with self._cond:
            self._active += 1
            # `_closing` is left as it is: a call that starts after `close` (a call
            # rerun in the pool after its inline budget) keeps the thread only while it
            # runs; only `open` takes the close back.
            # `_thread` is None once the thread has decided to end (`_wait_for_calls`),
            # though it may not have exited yet: that thread ticks no more, so a new one.
            if self._thread is None:
                # Daemon: when idle it only waits on the condition, so it never touches
                # wasmtime while the interpreter tears down.
                self._thread = threading.Thread(target=self._run, name="wasm-epoch", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def thread_alive(self) -> bool:
        with self._cond:
            return self._thread is not None and self._thread.is_alive()

    def leave(self) -> None:
        with self._cond:
            self._active -= 1

    def open(self) -> None:
        """The runtime is in use again after a `close`: the thread waits for calls."""
        with self._cond:
            self._closing = False

    def close(self) -> None:
        """Let the thread end once no call runs (a call in flight keeps its deadline).
        Not joined: the event loop calls this, and a call may run for its whole limit."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def _wait_for_calls(self) -> bool:
        """Wait until a call runs (True) or the clock is closed and idle (False: the
        thread ends, and is forgotten here under the lock, so that a call entering
        before it has exited starts another rather than waiting on one that is gone)."""
        with self._cond:
            while self._active == 0 and not self._closing:
                self._cond.wait()
            if self._active > 0:
                return True
            if self._thread is threading.current_thread():
                self._thread = None
            return False

    def _run(self) -> None:
        while self._wait_for_calls():
            next_at = time.monotonic() + self.tick_s
            while True:
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                now = time.monotonic()
                while next_at <= now:
                    self._engine.increment_epoch()
                    next_at += self.tick_s
                with self._cond:
                    if self._active == 0:
                        break
