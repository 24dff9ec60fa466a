"""The bridges' SQLite outbox (node/bridges/outbox.py) on a real store: order, bound,
survival across a reopen, one bridge's rows apart from another's."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from vsmcp.node.bridges.outbox import Outbox
from vsmcp.node.store.database import Store


async def test_entries_leave_in_order_and_removal_is_through_a_seq(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store:
        outbox = await Outbox.open(store, "amqp", capacity=100)
        assert await outbox.append([(f"k{i}", f"b{i}".encode()) for i in range(5)]) == 5
        assert outbox.ready.is_set() and outbox.depth == 5
        batch = await outbox.peek(3)
        assert [e.key for e in batch] == ["k0", "k1", "k2"]
        assert [e.body for e in batch] == [b"b0", b"b1", b"b2"]
        assert [e.seq for e in batch] == sorted(e.seq for e in batch)
        await outbox.remove_through(batch[-1].seq)
        assert outbox.depth == 2
        assert [e.key for e in await outbox.peek(10)] == ["k3", "k4"]


async def test_a_sender_with_entries_in_flight_peeks_past_them(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store:
        outbox = await Outbox.open(store, "amqp", capacity=100)
        await outbox.append([(f"k{i}", b"") for i in range(5)])
        first = await outbox.peek(2)
        second = await outbox.peek(2, after=first[-1].seq)
        assert [e.key for e in second] == ["k2", "k3"]
        assert [e.key for e in await outbox.peek(10, after=second[-1].seq)] == ["k4"]
        # Nothing removed yet: the oldest are still what a plain peek returns.
        assert [e.key for e in await outbox.peek(1)] == ["k0"]


async def test_the_bound_refuses_the_newest_and_counts_them(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store:
        outbox = await Outbox.open(store, "amqp", capacity=3)
        assert await outbox.append([("a", b"1"), ("b", b"2")]) == 2
        assert await outbox.append([("c", b"3"), ("d", b"4"), ("e", b"5")]) == 1
        assert outbox.depth == 3 and outbox.overflowed == 2
        assert [e.key for e in await outbox.peek(10)] == ["a", "b", "c"]
        assert outbox.take_overflow() == 2
        assert outbox.take_overflow() == 0  # reported once
        assert await outbox.append([("f", b"6")]) == 0
        assert outbox.overflowed == 3 and outbox.take_overflow() == 1


async def test_overlapping_appends_do_not_share_the_same_free_room(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store:
        outbox = await Outbox.open(store, "amqp", capacity=4)
        # Both start before either commits: together they may keep only the room there is.
        kept = await asyncio.gather(
            outbox.append([(f"a{i}", b"") for i in range(3)]),
            outbox.append([(f"b{i}", b"") for i in range(3)]),
        )
        assert sum(kept) == 4 and outbox.depth == 4 and outbox.overflowed == 2
        assert len(await outbox.peek(10)) == 4


async def test_what_was_appended_survives_a_reopen_and_seqs_are_not_reused(
    tmp_path: Path,
) -> None:
    async with Store.open(tmp_path) as store:
        outbox = await Outbox.open(store, "amqp", capacity=10)
        await outbox.append([("a", b"1"), ("b", b"2")])
        last = (await outbox.peek(10))[-1].seq
        await outbox.remove_through(last)
        await outbox.append([("c", b"3")])
    async with Store.open(tmp_path) as store:
        again = await Outbox.open(store, "amqp", capacity=10)
        assert again.depth == 1 and again.ready.is_set()
        (entry,) = await again.peek(10)
        assert entry.key == "c" and entry.seq > last


async def test_bridges_do_not_see_each_others_entries(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store:
        amqp = await Outbox.open(store, "amqp", capacity=10)
        mqtt = await Outbox.open(store, "mqtt", capacity=10)
        await amqp.append([("a", b"1")])
        await mqtt.append([("m", b"2")])
        await amqp.remove_through((await amqp.peek(1))[0].seq + 100)
        assert amqp.depth == 0 and [e.key for e in await mqtt.peek(10)] == ["m"]


async def test_a_capacity_out_of_range_is_refused(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store:
        with pytest.raises(ValueError, match="capacity"):
            await Outbox.open(store, "amqp", capacity=0)


async def _rows(store: Store) -> int:
    async with store.conn.execute("SELECT COUNT(*) FROM bridge_outbox") as cur:
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("operation", ["append", "remove_through"])
async def test_a_cancelled_write_leaves_the_depth_equal_to_the_rows(
    tmp_path: Path, operation: str
) -> None:
    """A sender is cancelled when its connection drops, at any await of its write: the
    SQL it issued still runs on the store's thread (a COMMIT already queued commits), so
    the depth must follow what the table holds, not what the cancelled caller saw
    (a removal whose COMMIT ran while its caller was cancelled left the depth too high
    for good: the AMQP outbox never looked drained)."""
    async with Store.open(tmp_path) as store:
        outbox = await Outbox.open(store, "amqp", capacity=1_000_000)
        # Every point of the write: cancelled after 0, 1, 2, ... loop iterations.
        for steps in range(60):
            await outbox.append([(f"k{i}", b"x") for i in range(4)])
            last = (await outbox.peek(4))[-1].seq
            if operation == "append":
                write = outbox.append([("n", b"y")])
            else:
                write = outbox.remove_through(last)
            task = asyncio.ensure_future(write)
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.wait({task})
            # Whatever the cancellation interrupted finishes (or not) on its own: the
            # depth agrees with the table once the store is idle again.
            async with store.transaction():
                pass
            assert outbox.depth == await _rows(store), f"cancelled after {steps} steps"
            await outbox.remove_through(2**62)
            assert outbox.depth == 0
