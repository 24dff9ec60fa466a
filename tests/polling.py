"""Wait for a condition with a deadline instead of sleeping a fixed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

POLL_INTERVAL_S = 0.02


def wait_for(
    probe: Callable[[], T | None], *, timeout_s: float = 10.0, what: str = "condition"
) -> T:
    """Call `probe` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s: {what} (last={last!r})")
        time.sleep(POLL_INTERVAL_S)


async def async_wait_for(
    probe: Callable[[], Awaitable[T | None]], *, timeout_s: float = 10.0, what: str = "condition"
) -> T:
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while True:
        last = await probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s: {what} (last={last!r})")
        await asyncio.sleep(POLL_INTERVAL_S)


async def async_wait_until(
    predicate: Callable[[], T | None], *, timeout_s: float = 10.0, what: str = "condition"
) -> T:
    """`async_wait_for` with a plain predicate, polled without blocking the event loop."""

    async def probe() -> T | None:
        return predicate()

    return await async_wait_for(probe, timeout_s=timeout_s, what=what)
