"""The PostgreSQL bridge: mirrors the node's audit log (with its policy notes) and its
signed CRDT snapshots into a database many nodes share (`postgres_mirror.py` does one
pass, `postgres_schema.py` keeps the tables).

One supervised loop connects, migrates, checks that the mirror continues the local log
(same hash at the mirror's last entry; a mirror of another history is refused rather than
mixed with this one), then copies batches until it is caught up, and waits
`interval_s` between passes. When PostgreSQL is unreachable the mirror falls behind (its
`lag` counts the entries), the outage is pain on the algedonic channel, and it retries
every `retry_s`; it picks up again from PostgreSQL's own position.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

from vsmcp.mesh.identity import public_key_from_node_id
from vsmcp.mesh.service import Service
from vsmcp.node.bridges.model import BridgeContext, BridgeState, BridgeStatus
from vsmcp.node.bridges.postgres_config import PostgresSection
from vsmcp.node.bridges.postgres_mirror import (
    CREATE_STAGE,
    MIRRORED_POSITION,
    REGISTER_NODE,
    Batch,
    LocalLog,
    write_batch,
    write_snapshot,
)
from vsmcp.node.bridges.postgres_schema import SchemaTooNew, migrate
from vsmcp.node.store.database import db_path_for
from vsmcp.node.vsm.events import UnitStateChanged

log = logging.getLogger(__name__)

NAME: Final = "postgres"
PAIN_SOURCE: Final = "bridge.postgres"
EVENT_UNIT: Final = f"bridge:{NAME}"
PAIN_INTENSITY: Final = 0.6
# While PostgreSQL stays down, pain again this often (not at every retry).
PAIN_REPEAT_S: Final = 30.0
MAX_ERROR_CHARS: Final = 300
_T = TypeVar("_T")


def application_name(node_id: str) -> str:
    """The mirror's session name in pg_stat_activity."""
    return f"vsmcp-mirror {node_id[-12:]}"


class MirrorDiverged(Exception):
    """PostgreSQL holds a different history for this node than the local log."""


def _failures() -> tuple[type[BaseException], ...]:
    import asyncpg

    return (
        OSError,
        TimeoutError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        SchemaTooNew,
        MirrorDiverged,
        sqlite3.Error,  # reading the local log (its file is the node's own concern)
    )


class PostgresBridge(Service):
    name = NAME

    def __init__(self, section: PostgresSection, context: BridgeContext) -> None:
        self._section = section
        self._context = context
        self._node_id = context.node_id
        self._public_key = public_key_from_node_id(context.node_id)
        self._state: BridgeState = "connecting"
        self._since = time.time()
        self._errors = 0
        self._last_error = ""
        self._mirrored = 0
        self._counters = {"mirrored": 0, "batches": 0, "snapshots": 0, "connects": 0}
        self._local: LocalLog | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_pain = -PAIN_REPEAT_S
        self._last_snapshot_id: str | None = None
        # Reads of the local log in worker threads, until they end (`stop` waits for them).
        self._reads: set[asyncio.Future[Any]] = set()

    async def start(self) -> None:
        if self._task is not None:
            return
        self._local = await asyncio.to_thread(
            LocalLog, db_path_for(self._context.data_dir), self._node_id
        )
        self._task = self._context.loops.spawn("bridge-postgres", self._run)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # Wait for it without taking its CancelledError as ours: a cancel of `stop`
            # itself must still reach our caller.
            await asyncio.wait({task})
        if self._reads:
            # A read in a worker thread cannot be stopped: let it end before the file is
            # closed under it (what it read is read again from PostgreSQL's position).
            await asyncio.wait(self._reads)
        local, self._local = self._local, None
        if local is not None:
            local.close()
        self._set_state("stopped")

    def status(self) -> BridgeStatus:
        lag = max(0, int(self._context.audit_log.head_seq) - self._mirrored)
        return BridgeStatus(
            name=NAME,
            state=self._state,
            outbox_depth=lag,
            lag=lag,
            errors=self._errors,
            last_error=self._last_error,
            since=self._since,
            counters=dict(self._counters),
        )

    # -- the loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        failures = _failures()
        while True:
            conn: Any = None
            try:
                conn = await self._connect()
                self._set_state("connected")
                await self._mirror(conn)
            except failures as exc:
                self._fail(exc)
            finally:
                if conn is not None:
                    conn.terminate()  # no goodbye round trip to a server that may be gone
            await asyncio.sleep(self._section.retry_s)

    async def _connect(self) -> Any:
        import asyncpg

        timeout = self._section.connect_timeout_s
        conn = await asyncpg.connect(self._section.dsn, timeout=timeout, command_timeout=timeout)
        try:
            self._counters["connects"] += 1
            # Safe without waiting for PostgreSQL's fsync: a commit lost to its crash is
            # copied again, as the mirror resumes from PostgreSQL's own position.
            await conn.execute("SET synchronous_commit = off")
            # Named in pg_stat_activity, unless the DSN names the session itself.
            await conn.execute(
                "SELECT set_config('application_name', $1, false) "
                "WHERE current_setting('application_name') = ''",
                application_name(self._node_id),
            )
            await migrate(conn)
            await conn.execute(CREATE_STAGE)
            await conn.execute(
                REGISTER_NODE, self._node_id, self._public_key, self._context.node_name
            )
            await self._resume_position(conn)
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _resume_position(self, conn: Any) -> None:
        """Take PostgreSQL's position as ours, once it is shown to continue the local log."""
        row = await conn.fetchrow(MIRRORED_POSITION, self._node_id)
        if row is None:
            self._mirrored = 0
            return
        seq, mirrored_hash = int(row["seq"]), bytes(row["hash"])
        local = await self._in_thread(self._log().hash_at, seq)
        if local != mirrored_hash:
            raise MirrorDiverged(
                f"the mirror's entry {seq} for node {self._node_id} is not the local log's "
                f"({'absent locally' if local is None else 'different hash'}): it mirrors "
                f"another history; move those rows aside to mirror this log"
            )
        self._mirrored = seq

    async def _mirror(self, conn: Any) -> None:
        next_snapshot = 0.0
        # The next batch, read (in a worker thread) while PostgreSQL takes this one.
        ahead: asyncio.Future[Batch] | None = None
        while True:
            if conn.is_closed():
                # Seen while idle too, so the state says so before there is work to fail.
                raise ConnectionError("connection to PostgreSQL lost")
            now = time.monotonic()
            if self._section.snapshot_interval_s > 0 and now >= next_snapshot:
                await self._copy_snapshot(conn)
                next_snapshot = now + self._section.snapshot_interval_s
            if ahead is not None or self._context.audit_log.head_seq > self._mirrored:
                if ahead is not None:
                    batch, ahead = await asyncio.shield(ahead), None
                else:
                    batch = await self._read(self._mirrored)
                if batch.rows:
                    if self._context.audit_log.head_seq > batch.last_seq:
                        ahead = self._read_ahead(batch.last_seq)
                    self._counters["mirrored"] += await write_batch(conn, self._node_id, batch)
                    self._counters["batches"] += 1
                    self._mirrored = batch.last_seq
                    continue
            await asyncio.sleep(self._section.interval_s)

    def _read_ahead(self, after: int) -> asyncio.Future[Batch]:
        return self._start_read(self._log().read, after, self._section.batch_rows)

    async def _read(self, after: int) -> Batch:
        return await self._in_thread(self._log().read, after, self._section.batch_rows)

    async def _in_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        """`fn(*args)` on the local log in a worker thread. Cancelling the wait leaves the
        read running (a thread cannot be stopped); `stop` waits for it."""
        return await asyncio.shield(self._start_read(fn, *args))

    def _start_read(self, fn: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        read = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        self._reads.add(read)
        read.add_done_callback(self._read_done)
        return read

    def _read_done(self, read: asyncio.Future[Any]) -> None:
        self._reads.discard(read)
        if not read.cancelled():
            read.exception()  # retrieved here; whoever awaits it gets it too

    async def _copy_snapshot(self, conn: Any) -> None:
        snapshot = await self._in_thread(self._log().snapshot)
        if snapshot is None:
            return
        ident = await write_snapshot(conn, self._node_id, snapshot)
        if ident != self._last_snapshot_id:
            self._last_snapshot_id = ident
            self._counters["snapshots"] += 1

    # -- state -------------------------------------------------------------------------

    def _log(self) -> LocalLog:
        if self._local is None:
            raise RuntimeError("postgres bridge is not started")
        return self._local

    def _set_state(self, state: BridgeState) -> None:
        if state == self._state:
            return
        previous, self._state = self._state, state
        self._since = time.time()
        if state == "connected":
            log.info("postgres mirror connected at entry %d", self._mirrored)
        # A `unit_state` event, as S1 units and child VSMs publish (unit `bridge:<name>`),
        # so patterns and the event stream see bridge outages too.
        self._context.events.publish(
            UnitStateChanged(
                ts=self._since,
                unit=EVENT_UNIT,
                state=state,
                previous=previous,
                reason=self._last_error if state == "down" else None,
            )
        )

    def _fail(self, exc: BaseException) -> None:
        self._errors += 1
        reason = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        was = self._state
        self._last_error = reason
        self._set_state("down")
        now = time.monotonic()
        if was != "down" or now - self._last_pain >= PAIN_REPEAT_S:
            self._last_pain = now
            log.warning("postgres mirror down (%d entries behind): %s", self.status().lag, reason)
            self._context.pain(PAIN_SOURCE, PAIN_INTENSITY, f"PostgreSQL mirror down: {reason}")


def create(section: PostgresSection, context: BridgeContext) -> PostgresBridge:
    return PostgresBridge(section, context)
