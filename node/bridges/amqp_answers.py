"""The answers of AMQP calls a node remembers, in memory and in its SQLite store, so that
a call redelivered after a restart of the node (crash, kill -9, upgrade) is answered
again, not run again (`amqp_calls.py`).

An answer is committed before it is published: `remember` returns once the answer is
on disk. The writes are batched: the answers that arrive while one transaction commits
go in the next (one `synchronous=FULL` commit for all the calls in flight, not one per
call). Where a crash falls, for a call on the pinned queue (each step in order):

1. the tool runs; crash before the commit of its answer: nothing was sent, the call is
   redelivered and **runs again** (the one window where a call runs twice: whatever
   the tool did is not known to have finished);
2. the answer is committed; crash before it is published, or before the broker's
   confirm, or before the ack reaches the broker: the call is redelivered and answered
   from the store (the caller may get the same answer twice, same `correlation_id`);
3. the ack reached the broker: nothing comes back.

Bounded like the memory it mirrors: the last `REMEMBERED_ANSWERS` answers, at most
`REMEMBERED_BYTES`, none older than `REMEMBER_FOR_S`; the oldest go first, from memory
and (in the next write) from the table. The table is the bridge's own (`CREATE TABLE IF
NOT EXISTS`, as the outbox), loaded at start: a row that is not what this file writes
(a key too long, a body that is not a JSON-RPC answer, an answer larger than
`REMEMBERED_BYTES`) is refused with a warning, counted and deleted; a table whose columns
are not this file's is made again (counted as one refused row). A table of this file's
that cannot be read (an I/O error; damage inside a record that the store's quick_check
at open does not see, such as a key that is no longer UTF-8: a corrupt page refuses the
whole store before this runs) is left as it is and `open` raises `AnswersUnreadable`:
the bridge then answers from memory only, with pain.

A failed write (disk full, I/O error, the store closed) does not hold the answer: the
caller gets it, the failure is counted (`answers_not_remembered`) and logged, and a
redelivery after a restart would run that call again.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import OrderedDict
from typing import Any, Final

import msgspec

from vsmcp.node.errors import NodeError

log = logging.getLogger(__name__)

REMEMBERED_ANSWERS: Final = 10_000
REMEMBERED_BYTES: Final = 64 * 1024 * 1024
# The longest a redelivery can come after its answer: the pinned queue lives a day
# without a consumer (amqp_bridge.PINNED_QUEUE_EXPIRES_MS), so does what it holds.
REMEMBER_FOR_S: Final = 24 * 3600.0
# A key is a hex digest (amqp_calls: 64 characters); rows written before keys were
# hashed (longer, at most this) age out.
MAX_KEY_CHARS: Final = 1_024

ANSWERS_TABLE_SQL: Final = """CREATE TABLE IF NOT EXISTS amqp_answers (
    key TEXT PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    body BLOB NOT NULL
)"""

ANSWERS_COLUMNS: Final = ("key", "ts_ms", "body")

_decode_answer = msgspec.json.Decoder(dict[str, Any]).decode


class AnswersUnreadable(NodeError):
    """The table of remembered answers is this file's and cannot be read."""


class RememberedAnswers:
    """Use `await RememberedAnswers.open(store)` (or `RememberedAnswers(None)`: in
    memory only)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        # key -> (monotonic deadline, body), oldest first.
        self._answers: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        # Written by the next transaction: new rows, keys evicted since the last one.
        self._unwritten: list[tuple[str, int, bytes]] = []
        self._evicted: list[str] = []
        self._written: asyncio.Future[None] | None = None  # the next write's completion
        self._writer: asyncio.Task[None] | None = None
        self.writes = 0
        self.not_remembered = 0
        self.refused_rows = 0

    @classmethod
    async def open(cls, store: Any) -> RememberedAnswers:
        """Load what the store remembers (what is still young enough, within bounds)."""
        answers = cls(store)
        try:
            async with store.transaction() as conn:
                await conn.execute(ANSWERS_TABLE_SQL)
            rows = await _load(store)
        except sqlite3.DatabaseError as exc:
            if await _columns(store) in (ANSWERS_COLUMNS, None):
                # The table is ours and could not be read (I/O error, a corrupt page):
                # what it holds is kept for a repair, not dropped.
                raise AnswersUnreadable(f"AMQP remembered answers unreadable: {exc}") from exc
            # Not the table this file makes (its columns changed by hand, say): what it
            # held is lost, not the node's start.
            log.warning("AMQP remembered answers unreadable (%s): table made again", exc)
            async with store.transaction() as conn:
                await conn.execute("DROP TABLE amqp_answers")
                await conn.execute(ANSWERS_TABLE_SQL)
            answers.refused_rows = 1
            return answers
        bad: list[int] = []
        now_ms, now = time.time() * 1000, time.monotonic()
        for rowid, key, ts_ms, body in rows:
            problem = _row_problem(key, ts_ms, body)
            if problem is not None:
                log.warning("AMQP remembered answer %r refused: %s", str(key)[:80], problem)
                bad.append(int(rowid))
                continue
            age_s = max(0.0, (now_ms - ts_ms) / 1000)
            if age_s < REMEMBER_FOR_S:
                answers._keep(key, now + REMEMBER_FOR_S - age_s, bytes(body))
            else:
                answers._evicted.append(key)
        answers.refused_rows = len(bad)
        if bad or answers._evicted:
            async with store.transaction() as conn:
                await conn.executemany(
                    "DELETE FROM amqp_answers WHERE rowid = ?", [(r,) for r in bad]
                )
                await conn.executemany(
                    "DELETE FROM amqp_answers WHERE key = ?", [(k,) for k in answers._evicted]
                )
            answers._evicted.clear()
        return answers

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: str) -> bytes | None:
        known = self._answers.get(key)
        if known is None:
            return None
        if known[0] <= time.monotonic():
            self._expire()
            return None
        return known[1]

    async def remember(self, key: str, body: bytes) -> None:
        """Remember `body` as the answer under `key`; returns once it is on disk (or the
        write failed: counted). Cancelling the caller does not stop the write."""
        self._keep(key, time.monotonic() + REMEMBER_FOR_S, body)
        self._expire()
        if self._store is None:
            return
        self._unwritten.append((key, int(time.time() * 1000), body))
        if self._written is None:
            self._written = asyncio.get_running_loop().create_future()
        written = self._written
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name="amqp-answers-write")
        await asyncio.shield(written)

    def _keep(self, key: str, deadline: float, body: bytes) -> None:
        old = self._answers.pop(key, None)
        if old is not None:
            self._bytes -= len(old[1])
        self._answers[key] = (deadline, body)
        self._bytes += len(body)
        while len(self._answers) > REMEMBERED_ANSWERS or (
            self._bytes > REMEMBERED_BYTES and len(self._answers) > 1
        ):
            self._drop_oldest()

    def _expire(self) -> None:
        now = time.monotonic()
        while self._answers and next(iter(self._answers.values()))[0] <= now:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        key, (_, body) = self._answers.popitem(last=False)
        self._bytes -= len(body)
        if self._store is not None:
            self._evicted.append(key)

    async def _write(self) -> None:
        """The one writer: what accumulated while the previous transaction committed,
        in one transaction, until nothing is left."""
        try:
            while self._unwritten or self._evicted:
                # Only what memory still holds gets a row (an answer evicted before its
                # batch is written would outlive the bounds), and a key kept again since
                # it was evicted keeps its row.
                rows = [row for row in self._unwritten if row[0] in self._answers]
                evicted = [k for k in self._evicted if k not in self._answers]
                self._unwritten, self._evicted = [], []
                done, self._written = self._written, None
                failed = False
                try:
                    async with self._store.transaction() as conn:
                        await conn.executemany(
                            "DELETE FROM amqp_answers WHERE key = ?", [(k,) for k in evicted]
                        )
                        await conn.executemany(
                            "INSERT OR REPLACE INTO amqp_answers (key, ts_ms, body) "
                            "VALUES (?, ?, ?)",
                            rows,
                        )
                    self.writes += 1
                except Exception as exc:  # noqa: BLE001 - a failed write is counted, never held
                    failed = True
                    self.not_remembered += len(rows)
                    log.warning("AMQP: %d answers not remembered: %s", len(rows), exc)
                    # Their rows still have to go: with the next write (not retried now,
                    # a store that fails would be retried in a loop).
                    self._evicted[:0] = evicted
                finally:
                    # The answers go out whatever became of their write (even cancelled).
                    if done is not None and not done.done():
                        done.set_result(None)
                if failed and not self._unwritten:
                    break
        finally:
            self._writer = None
            if self._written is not None and not self._written.done():
                # Cancelled (close): nobody's answer waits on a write that will not come.
                self._written.set_result(None)
                self._written = None

    async def close(self) -> None:
        """Wait for the write in progress (and what it still has to write)."""
        writer = self._writer
        if writer is not None:
            await asyncio.wait({writer})


async def _load(store: Any) -> list[Any]:
    async with store.conn.execute(
        "SELECT rowid, key, ts_ms, body FROM amqp_answers ORDER BY ts_ms, rowid"
    ) as cur:
        return list(await cur.fetchall())


async def _columns(store: Any) -> tuple[str, ...] | None:
    """The table's columns; None if they cannot be read either."""
    try:
        async with store.conn.execute("PRAGMA table_info(amqp_answers)") as cur:
            return tuple(str(row[1]) for row in await cur.fetchall())
    except sqlite3.DatabaseError:
        return None


def _row_problem(key: Any, ts_ms: Any, body: Any) -> str | None:
    """Why a row is not one this file wrote, or None."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_CHARS:
        return f"key is not a string of 1..{MAX_KEY_CHARS} characters"
    if not isinstance(ts_ms, int):
        return "ts_ms is not an integer"
    if not isinstance(body, bytes):
        return "body is not a blob"
    if len(body) > REMEMBERED_BYTES:
        return f"answer of {len(body)} bytes, over {REMEMBERED_BYTES}"
    try:
        answer = _decode_answer(body)
    except msgspec.DecodeError as exc:
        return f"body is not a JSON object: {exc}"
    if answer.get("jsonrpc") != "2.0" or not ("result" in answer or "error" in answer):
        return "body is not a JSON-RPC answer"
    return None
