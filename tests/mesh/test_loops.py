"""The loop supervisor: restart with backoff, give up (unhealthy) on a crash loop,
shutdown is not a crash, and the counts behind `vsmcp_loop_restarts_total`."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from tests.polling import async_wait_until
from vsmcp.mesh.loops import LoopSupervisor

FAST = {"backoff_min_s": 0.001, "backoff_max_s": 0.004}


async def test_a_loop_that_raises_is_restarted_and_counted() -> None:
    loops = LoopSupervisor(**FAST)
    runs = 0
    resumed = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("boom")
        resumed.set()
        await asyncio.Event().wait()

    task = loops.spawn("flaky", flaky)
    await asyncio.wait_for(resumed.wait(), timeout=10)
    assert runs == 2
    assert loops.restart_counts() == {"flaky": 1}
    assert loops.healthy and loops.problems() == []
    assert loops.running() == ["flaky"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_loop_that_keeps_raising_makes_health_fail_naming_it() -> None:
    loops = LoopSupervisor(max_restarts=3, window_s=3600, **FAST)
    runs = 0

    async def broken() -> None:
        nonlocal runs
        runs += 1
        raise ValueError(f"bad input {runs}")

    task = loops.spawn("replication-anti-entropy", broken)
    await asyncio.wait_for(task, timeout=10)  # given up: the supervising task ends
    assert runs == 4  # the first run and three restarts
    assert loops.restart_counts() == {"replication-anti-entropy": 3}
    assert not loops.healthy
    [problem] = loops.problems()
    assert "replication-anti-entropy" in problem and "ValueError: bad input 4" in problem
    assert loops.running() == []


async def test_backoff_doubles_up_to_its_cap(caplog: pytest.LogCaptureFixture) -> None:
    loops = LoopSupervisor(max_restarts=5, backoff_min_s=0.001, backoff_max_s=0.004)

    async def broken() -> None:
        raise RuntimeError("again")

    with caplog.at_level(logging.ERROR, logger="vsmcp.mesh.loops"):
        await asyncio.wait_for(loops.spawn("broken", broken), timeout=10)
    delays = [
        float(m.group(1))
        for r in caplog.records
        if (m := re.search(r"restarting in ([0-9.]+) s", r.getMessage()))
    ]
    assert delays == [0.001, 0.002, 0.004, 0.004, 0.004]


async def test_failures_spread_wider_than_the_window_never_give_up() -> None:
    now = 0.0
    loops = LoopSupervisor(max_restarts=2, window_s=10, clock=lambda: now, **FAST)
    failed = asyncio.Event()

    async def fails_once_per_run() -> None:
        failed.set()
        raise RuntimeError("rare")

    task = loops.spawn("rare", fails_once_per_run)
    for _ in range(6):
        await asyncio.wait_for(failed.wait(), timeout=10)
        failed.clear()
        now += 11  # each failure outside the window of the previous ones
    assert loops.healthy and not task.done()
    assert loops.restart_counts()["rare"] >= 5
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_cancellation_stops_the_loop_cleanly_and_is_not_a_crash() -> None:
    loops = LoopSupervisor(**FAST)
    started = asyncio.Event()
    cleaned_up = False

    async def forever() -> None:
        nonlocal cleaned_up
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up = True

    task = loops.spawn("forever", forever)
    await asyncio.wait_for(started.wait(), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned_up
    assert loops.restart_counts() == {"forever": 0}
    assert loops.healthy and loops.running() == []
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("forever")]


async def test_a_cancellation_nobody_asked_the_loop_for_is_a_crash() -> None:
    loops = LoopSupervisor(**FAST)
    waiting: list[asyncio.Future[None]] = []
    runs = 0

    async def awaits_a_future() -> None:
        nonlocal runs
        runs += 1
        future = asyncio.get_running_loop().create_future()
        waiting.append(future)
        await future

    task = loops.spawn("waiter", awaits_a_future)
    await async_wait_until(lambda: waiting, what="the loop waiting")
    waiting[0].cancel()  # someone else cancels what the loop awaits
    await async_wait_until(lambda: runs == 2, what="the loop restarted")
    assert loops.restart_counts() == {"waiter": 1}
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_loop_that_returns_is_done_and_not_restarted() -> None:
    loops = LoopSupervisor(**FAST)
    runs = 0

    async def once() -> None:
        nonlocal runs
        runs += 1

    await asyncio.wait_for(loops.spawn("once", once), timeout=10)
    assert runs == 1 and loops.restart_counts() == {"once": 0} and loops.healthy


async def test_injected_faults_restart_the_loop_and_enough_of_them_fail_health() -> None:
    loops = LoopSupervisor(max_restarts=2, window_s=3600, **FAST)
    runs = 0

    async def steady() -> None:
        nonlocal runs
        runs += 1
        await asyncio.Event().wait()

    task = loops.spawn("steady", steady)
    assert not loops.inject_fault("no-such-loop")
    await async_wait_until(lambda: runs == 1, what="first run")
    for expected in (2, 3):
        assert loops.inject_fault("steady")
        await async_wait_until(lambda n=expected: runs == n, what=f"run {expected}")
    assert loops.healthy
    assert loops.inject_fault("steady")
    await asyncio.wait_for(task, timeout=10)
    assert not loops.healthy and "steady" in loops.problems()[0]
    assert "InjectedFault" in loops.problems()[0]


async def test_a_fault_injected_during_the_backoff_hits_the_next_run() -> None:
    loops = LoopSupervisor(backoff_min_s=5, backoff_max_s=5)
    runs = 0

    async def steady() -> None:
        nonlocal runs
        runs += 1
        await asyncio.Event().wait()

    task = loops.spawn("steady", steady)
    await async_wait_until(lambda: runs == 1, what="first run")
    assert loops.inject_fault("steady")
    await async_wait_until(lambda: loops.restart_counts()["steady"] == 1, what="first fault")
    assert loops.running() == []  # in its backoff
    assert loops.inject_fault("steady")  # armed for the next run
    task.cancel()  # shutdown during the backoff is clean too
    with pytest.raises(asyncio.CancelledError):
        await task
    assert loops.healthy


def test_per_peer_loops_share_one_metric_label() -> None:
    async def main() -> LoopSupervisor:
        loops = LoopSupervisor(**FAST)

        async def broken() -> None:
            raise RuntimeError("x")

        tasks = [loops.spawn(f"link-{i}", broken, kind="link") for i in range(3)]
        await asyncio.sleep(0)
        await async_wait_until(lambda: loops.restarts["link"] >= 3, what="three restarts")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return loops

    loops = asyncio.run(main())
    assert set(loops.restart_counts()) == {"link"}
