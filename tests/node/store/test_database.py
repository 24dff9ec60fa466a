from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from vsmcp.node.errors import NodeError
from vsmcp.node.store.database import DB_FILENAME, MIGRATIONS, SCHEMA_VERSION, Store, StoreError


def _tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows}


async def test_open_creates_schema_and_pragmas(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "data") as store:
        assert store.db_path == tmp_path / "data" / DB_FILENAME
        assert store.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
        async with store.conn.execute("PRAGMA journal_mode") as cur:
            assert (await cur.fetchone())[0] == "wal"
        async with store.conn.execute("PRAGMA synchronous") as cur:
            assert (await cur.fetchone())[0] == 2  # FULL
        async with store.conn.execute("PRAGMA foreign_keys") as cur:
            assert (await cur.fetchone())[0] == 1
    assert {"kv", "audit_entries", "audit_head"} <= _tables(store.db_path)


async def test_migrations_apply_once_and_reopen_keeps_data(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store:
        await store.kv_set("a", b"1")
    # A second open must not re-run CREATE TABLE (which would fail) nor lose data.
    async with Store.open(tmp_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert await store.kv_get("a") == b"1"
    with sqlite3.connect(tmp_path / DB_FILENAME) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_kv_round_trip(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store:
        assert await store.kv_get("missing") is None
        await store.kv_set("k", b"\x00\xffvalue")
        assert await store.kv_get("k") == b"\x00\xffvalue"
        await store.kv_set("k", b"")
        assert await store.kv_get("k") == b""
        await store.kv_delete("k")
        assert await store.kv_get("k") is None
        await store.kv_delete("k")  # deleting an absent key is fine


async def test_close_is_idempotent_and_conn_after_close_raises(tmp_path: Path) -> None:
    store = Store.open(tmp_path)
    await store.start()
    await store.start()
    await store.close()
    await store.close()
    with pytest.raises(StoreError):
        _ = store.conn


async def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store:
        with pytest.raises(RuntimeError):
            async with store.transaction() as conn:
                await conn.execute("INSERT INTO kv (key, value) VALUES ('x', x'01')")
                raise RuntimeError("boom")
        assert await store.kv_get("x") is None
        async with store.transaction() as conn:
            await conn.execute("INSERT INTO kv (key, value) VALUES ('x', x'02')")
        assert await store.kv_get("x") == b"\x02"


async def test_a_transaction_cancelled_at_any_await_leaves_none_open(tmp_path: Path) -> None:
    """aiosqlite runs a statement that was queued even when its caller is cancelled: a
    `BEGIN` cancelled before it ran used to open a transaction nothing ended (every
    later `transaction()` then failed: "cannot start a transaction within a
    transaction", and autocommit writes joined it uncommitted)."""

    async def write(value: bytes) -> None:
        async with store.transaction() as conn:
            await conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES ('x', ?)", (value,))

    async with Store.open(tmp_path) as store:
        for steps in range(40):  # cancelled after 0, 1, 2, ... loop iterations
            task = asyncio.ensure_future(write(b"cancelled"))
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.wait({task})
            await write(b"%d" % steps)  # the next transaction starts
            assert not store.conn.in_transaction, f"cancelled after {steps} steps"
            assert await store.kv_get("x") == b"%d" % steps


async def test_non_sqlite_file_raises_store_error_with_path(tmp_path: Path) -> None:
    (tmp_path / DB_FILENAME).write_bytes(b"this is not a database, just some text " * 100)
    with pytest.raises(StoreError) as info:
        async with Store.open(tmp_path):
            pass
    assert isinstance(info.value, NodeError)
    assert str(tmp_path / DB_FILENAME) in str(info.value)


async def test_newer_schema_version_raises_naming_both_versions(tmp_path: Path) -> None:
    async with Store.open(tmp_path):
        pass
    newer = SCHEMA_VERSION + 5
    with sqlite3.connect(tmp_path / DB_FILENAME) as conn:
        conn.execute(f"PRAGMA user_version={newer}")
    with pytest.raises(StoreError) as info:
        async with Store.open(tmp_path):
            pass
    message = str(info.value)
    assert str(newer) in message and str(SCHEMA_VERSION) in message
    assert str(tmp_path / DB_FILENAME) in message
    assert info.value.reason == "schema_too_new"


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        ("DROP TABLE audit_entries", "table audit_entries is missing"),
        ("DROP TABLE kv", "table kv is missing"),
        ("ALTER TABLE audit_head DROP COLUMN sig", "table audit_head has columns id, seq, hash"),
    ],
)
async def test_a_migrated_store_missing_a_table_is_refused_naming_it(
    tmp_path: Path, damage: str, fragment: str
) -> None:
    async with Store.open(tmp_path):
        pass
    with sqlite3.connect(tmp_path / DB_FILENAME) as conn:
        conn.execute(damage)
    with pytest.raises(StoreError) as info:
        async with Store.open(tmp_path):
            pass
    assert fragment in str(info.value)
    assert str(tmp_path / DB_FILENAME) in str(info.value)
    assert info.value.reason == "schema"


def _flip_bytes(path: Path, offset: int, count: int = 40) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


async def _store_with_rows(data_dir: Path, rows: int = 200) -> Path:
    async with Store.open(data_dir) as store:
        for i in range(rows):
            await store.kv_set(f"k{i}", bytes(100))
    return store.db_path


@pytest.mark.parametrize(
    ("offset", "problem"),
    [
        (8192 + 100, "out of range"),  # cell pointers of a table page: quick_check lists them
        (4096, "malformed"),  # a page header: quick_check itself cannot walk the tree
    ],
)
async def test_damaged_file_is_refused_at_open_naming_it_and_the_problem(
    tmp_path: Path, offset: int, problem: str
) -> None:
    db = await _store_with_rows(tmp_path)
    _flip_bytes(db, offset)
    with pytest.raises(StoreError) as caught:
        async with Store.open(tmp_path):
            pass
    message = str(caught.value)
    assert caught.value.reason == "corrupt"
    assert str(db) in message and "integrity check" in message and problem in message
    assert "\n" not in message and len(message) < 600
