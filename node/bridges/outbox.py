"""A bounded, durable outbox in the node's SQLite: what a bridge must send, in order,
kept across broker outages and restarts (a kill -9 loses nothing that was appended).

Generic over bridges: each bridge has its own rows (`bridge` column) and gives each
entry a routing key (a topic, a routing key) and a body. The table is the outbox's own
(`CREATE TABLE IF NOT EXISTS`), not a store migration, so the bridges that use it add no
schema step the node would carry without them.

Ordering: `seq` is an INTEGER PRIMARY KEY AUTOINCREMENT, so entries leave in the order
they were appended and a seq is never reused after a delete (a consumer may use it to
detect duplicates). A sender `peek`s a batch, sends it, and `remove_through` its last
confirmed seq: a crash between send and remove sends the entry again (at least once).

Bounded: an append that would pass `capacity` keeps what fits and refuses the rest,
counted in `overflowed`; the owner audits it (`take_overflow`). Refusing the newest
keeps the order of what was kept and never deletes what a consumer has not seen.

Cancellation: a sender is cancelled whenever its broker connection drops, often while it
awaits a write. The statements of that write are already queued on the store's thread
and run anyway (a queued COMMIT commits), so each write, with the update of `depth`
that goes with it, runs to its end in a task of the outbox's own (`close` awaits them):
a cancelled caller stops waiting, the depth still follows the table.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final

from vsmcp.node.bridges.amqp_config import MAX_OUTBOX_CAPACITY

OUTBOX_TABLE_SQL: Final = """CREATE TABLE IF NOT EXISTS bridge_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    bridge TEXT NOT NULL,
    key TEXT NOT NULL,
    body BLOB NOT NULL
)"""
OUTBOX_INDEX_SQL: Final = (
    "CREATE INDEX IF NOT EXISTS bridge_outbox_by_bridge ON bridge_outbox (bridge, seq)"
)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    seq: int
    key: str
    body: bytes


class Outbox:
    """The outbox of one bridge over the node's `Store`. Use `await Outbox.open(...)`."""

    def __init__(self, store: Any, bridge: str, capacity: int, depth: int) -> None:
        self._store = store
        self.bridge = bridge
        self.capacity = capacity
        self.depth = depth
        # Room taken by appends whose transaction has not committed yet: two appends
        # overlapping across their await must not both count the same free room.
        self._reserved = 0
        self.appended = 0
        self.removed = 0
        # Entries refused because the outbox was full: all time, and since the last
        # `take_overflow` (what the owner has not audited yet).
        self.overflowed = 0
        self._overflow_unreported = 0
        # Set when something is appended. A sender clears it *before* it peeks and waits
        # on it when the peek was empty, so an append racing the peek is not missed.
        self.ready = asyncio.Event()
        if depth:
            self.ready.set()
        # Writes whose caller may have been cancelled: they finish on their own.
        self._writes: set[asyncio.Task[Any]] = set()

    @classmethod
    async def open(cls, store: Any, bridge: str, capacity: int) -> Outbox:
        if not 1 <= capacity <= MAX_OUTBOX_CAPACITY:
            raise ValueError(f"outbox capacity must be in 1..{MAX_OUTBOX_CAPACITY}")
        async with store.transaction() as conn:
            await conn.execute(OUTBOX_TABLE_SQL)
            await conn.execute(OUTBOX_INDEX_SQL)
        async with store.conn.execute(
            "SELECT COUNT(*) FROM bridge_outbox WHERE bridge = ?", (bridge,)
        ) as cur:
            row = await cur.fetchone()
        return cls(store, bridge, capacity, int(row[0]) if row else 0)

    async def _to_the_end(self, write: Coroutine[Any, Any, Any]) -> Any:
        """Run `write` in a task of its own: cancelling the caller does not stop it."""
        task = asyncio.ensure_future(write)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return await asyncio.shield(task)

    async def close(self) -> None:
        """Wait for the writes still running (their callers may be gone)."""
        if self._writes:
            await asyncio.wait(list(self._writes))

    async def append(self, entries: Sequence[tuple[str, bytes]]) -> int:
        """Append `(key, body)` entries in one transaction; returns how many were kept
        (the rest overflowed)."""
        kept: int = await self._to_the_end(self._append(entries))
        return kept

    async def _append(self, entries: Sequence[tuple[str, bytes]]) -> int:
        room = max(0, self.capacity - self.depth - self._reserved)
        kept = entries[:room]
        refused = len(entries) - len(kept)
        if refused:
            self.overflowed += refused
            self._overflow_unreported += refused
        if not kept:
            return 0
        self._reserved += len(kept)
        try:
            async with self._store.transaction() as conn:
                await conn.executemany(
                    "INSERT INTO bridge_outbox (bridge, key, body) VALUES (?, ?, ?)",
                    [(self.bridge, key, body) for key, body in kept],
                )
        finally:
            self._reserved -= len(kept)
        self.depth += len(kept)
        self.appended += len(kept)
        self.ready.set()
        return len(kept)

    async def peek(self, limit: int, *, after: int = 0) -> list[OutboxEntry]:
        """The oldest `limit` entries past seq `after`, oldest first (a sender with
        entries in flight reads on past them)."""
        async with self._store.conn.execute(
            "SELECT seq, key, body FROM bridge_outbox WHERE bridge = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (self.bridge, after, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [OutboxEntry(int(seq), str(key), bytes(body)) for seq, key, body in rows]

    async def remove_through(self, seq: int) -> None:
        """Forget every entry up to and including `seq` (they were delivered)."""
        await self._to_the_end(self._remove_through(seq))

    async def _remove_through(self, seq: int) -> None:
        async with self._store.transaction() as conn:
            cur = await conn.execute(
                "DELETE FROM bridge_outbox WHERE bridge = ? AND seq <= ?", (self.bridge, seq)
            )
            gone = max(0, cur.rowcount)
        self.depth = max(0, self.depth - gone)
        self.removed += gone

    def take_overflow(self) -> int:
        """Entries refused since the last call (for the owner's audit entry)."""
        count, self._overflow_unreported = self._overflow_unreported, 0
        return count
