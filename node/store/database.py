"""The node's embedded store: one SQLite file, `<data_dir>/vsmcp.db`.

One aiosqlite connection in WAL mode with `synchronous=FULL`: a commit is on disk
when it returns, which the audit log relies on. The schema is versioned with
`PRAGMA user_version`; `MIGRATIONS` is applied in order at open, one transaction per
step, so a crash mid-migration leaves the previous version intact.

Writers share the one connection, so every multi-statement transaction goes
through `Store.transaction()`, which serialises them: a `kv_set` issued while the
audit writer's batch is open must not become part of (or be rolled back with) it.

Opening runs `PRAGMA quick_check` (every page, record and free list, but not index
contents: ≈40 ms for 100,000 audit entries, a 21 MB file, with the file in the page
cache) and refuses a damaged file: appending to it would bury the damage under new
entries. The store then needs an operator: restore a backup or move the file aside.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import aiosqlite

from vsmcp.mesh.service import Service
from vsmcp.node.errors import NodeError

DB_FILENAME: Final = "vsmcp.db"
BUSY_TIMEOUT_MS: Final = 5_000
# How many of quick_check's problem lines a refusal quotes (it lists up to 100).
INTEGRITY_PROBLEMS_SHOWN: Final = 3

# Append only: never edit a step that has shipped. Step i brings the schema to
# version i + 1.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        "CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
        # Audit entries; see node/store/audit.py for the hash and signature definitions.
        """CREATE TABLE audit_entries (
            seq INTEGER PRIMARY KEY,
            ts_ms INTEGER NOT NULL,
            kind TEXT NOT NULL,
            actor TEXT NOT NULL,
            data TEXT NOT NULL,
            prev_hash BLOB NOT NULL,
            hash BLOB NOT NULL,
            sig BLOB NOT NULL
        )""",
        # At most one row: the signed head of the chain, written with every batch.
        """CREATE TABLE audit_head (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq INTEGER NOT NULL,
            hash BLOB NOT NULL,
            sig BLOB NOT NULL
        )""",
    ),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)


class StoreError(NodeError):
    """The store cannot be opened, migrated or used. The message names the path."""

    def __init__(self, message: str, *, reason: str = "store") -> None:
        super().__init__(message)
        self.reason = reason


def db_path_for(data_dir: Path) -> Path:
    """The SQLite file of the store kept in `data_dir`."""
    return data_dir / DB_FILENAME


class Store(Service):
    """The node's SQLite store. Use `async with Store.open(data_dir) as store:`."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = Path(data_dir)
        self._db_path = db_path_for(self._data_dir)
        self._conn: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._schema_version = 0

    @classmethod
    def open(cls, data_dir: Path) -> Store:
        """A store for `data_dir`, connected when entered as an async context manager."""
        return cls(data_dir)

    @property
    def db_path(self) -> Path:
        return self._db_path

    @property
    def schema_version(self) -> int:
        return self._schema_version

    @property
    def conn(self) -> aiosqlite.Connection:
        """The open connection (autocommit: wrap multi-statement writes in `transaction()`)."""
        if self._conn is None:
            raise StoreError(f"store {self._db_path} is not open", reason="closed")
        return self._conn

    async def start(self) -> None:
        """Connect, configure and migrate. Idempotent."""
        if self._conn is not None:
            return
        self._data_dir.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves.
            conn = await aiosqlite.connect(self._db_path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self._db_path}: {exc}", reason="open") from exc
        try:
            await self._configure(conn)
            await self._check_integrity(conn)
            self._schema_version = await self._migrate(conn)
            await self._check_schema(conn)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    async def close(self) -> None:
        """Close the connection. Idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def stop(self) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """An exclusive write transaction on the shared connection; rolled back on error."""
        async with self._write_lock:
            conn = self.conn
            try:
                await conn.execute("BEGIN IMMEDIATE")
                yield conn
                await conn.execute("COMMIT")
            except BaseException:
                # Whatever was queued runs on aiosqlite's thread even when this task was
                # cancelled while awaiting it: a BEGIN may be about to open a transaction
                # (`in_transaction` is still False here) that nothing would end, and a
                # failed COMMIT (e.g. I/O error) may or may not have ended it. A ROLLBACK
                # queued behind them ends what is open (an error when nothing is).
                with contextlib.suppress(sqlite3.Error, ValueError):
                    await conn.execute("ROLLBACK")
                raise

    async def kv_get(self, key: str) -> bytes | None:
        async with self.conn.execute("SELECT value FROM kv WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return None if row is None else bytes(row[0])

    async def kv_set(self, key: str, value: bytes) -> None:
        async with self._write_lock:
            await self.conn.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, bytes(value)),
            )

    async def kv_delete(self, key: str) -> None:
        async with self._write_lock:
            await self.conn.execute("DELETE FROM kv WHERE key = ?", (key,))

    async def _configure(self, conn: aiosqlite.Connection) -> None:
        try:
            # A non-SQLite file is only detected on the first read, which this is.
            async with conn.execute("PRAGMA journal_mode=WAL") as cur:
                row = await cur.fetchone()
            await conn.execute("PRAGMA synchronous=FULL")
            await conn.execute("PRAGMA foreign_keys=ON")
            await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"store {self._db_path} is not a usable SQLite database: {exc}", reason="corrupt"
            ) from exc
        if row is None or str(row[0]).lower() != "wal":
            raise StoreError(
                f"store {self._db_path}: cannot enable WAL mode (got {row!r})", reason="wal"
            )

    async def _check_integrity(self, conn: aiosqlite.Connection) -> None:
        try:
            async with conn.execute("PRAGMA quick_check") as cur:
                rows = await cur.fetchall()
        except sqlite3.DatabaseError as exc:
            # Damage bad enough that the check itself cannot walk the file.
            problems = [str(exc)]
        else:
            problems = [str(row[0]) for row in rows]
        if problems != ["ok"]:
            raise StoreError(
                f"store {self._db_path} fails SQLite's integrity check "
                f"({integrity_summary(problems)}); restore it from a backup or move it aside",
                reason="corrupt",
            )

    async def _migrate(self, conn: aiosqlite.Connection) -> int:
        version = await _user_version(conn)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {self._db_path} has schema version {version}, newer than this "
                f"vsmcp supports ({SCHEMA_VERSION}); upgrade vsmcp",
                reason="schema_too_new",
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            await conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[target - 1]:
                    await conn.execute(statement)
                # user_version lives in the database header and is part of the transaction.
                await conn.execute(f"PRAGMA user_version={target}")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    await conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(
                        f"store {self._db_path}: migration to schema version {target} "
                        f"failed: {exc}",
                        reason="migration",
                    ) from exc
                raise
            await conn.execute("COMMIT")
        return await _user_version(conn)

    async def _check_schema(self, conn: aiosqlite.Connection) -> None:
        """Every table the migrations made is there with its columns: a database whose
        version says "migrated" but that lost a table (a bad edit, a damaged file)
        would otherwise fail on first use, as a traceback and exit 1 in a restart loop."""
        for table, expected in _expected_schema().items():
            try:
                async with conn.execute(f"PRAGMA table_info({table})") as cur:
                    columns = tuple(str(row[1]) for row in await cur.fetchall())
            except sqlite3.DatabaseError as exc:
                raise StoreError(
                    f"store {self._db_path} is not a usable SQLite database: {exc}",
                    reason="corrupt",
                ) from exc
            if not columns:
                problem = f"table {table} is missing"
            elif columns != expected:
                problem = (
                    f"table {table} has columns {', '.join(columns)}, not {', '.join(expected)}"
                )
            else:
                continue
            raise StoreError(
                f"store {self._db_path} (schema version {self._schema_version}) is damaged: "
                f"{problem}; restore it from a backup, or move it aside to start an empty one",
                reason="schema",
            )


@functools.cache
def _expected_schema() -> dict[str, tuple[str, ...]]:
    """{table: columns} that `MIGRATIONS` produce, read from a scratch in-memory database
    so that the check can never disagree with the migrations."""
    scratch = sqlite3.connect(":memory:")
    try:
        for step in MIGRATIONS:
            for statement in step:
                scratch.execute(statement)
        tables = [
            str(row[0])
            for row in scratch.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        return {
            t: tuple(str(r[1]) for r in scratch.execute(f"PRAGMA table_info({t})")) for t in tables
        }
    finally:
        scratch.close()


def integrity_summary(problems: list[str]) -> str:
    """The first problems `PRAGMA quick_check` reported, on one line (it may put them all
    in one row, a line each, under a "*** in database main ***" banner)."""
    lines = [
        line.strip()
        for problem in problems
        for line in problem.splitlines()
        if line.strip() and not line.startswith("***")
    ]
    shown = "; ".join(lines[:INTEGRITY_PROBLEMS_SHOWN])
    more = len(lines) - INTEGRITY_PROBLEMS_SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")


async def _user_version(conn: aiosqlite.Connection) -> int:
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row is not None else 0
