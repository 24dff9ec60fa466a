from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from node.audit import (
    GENESIS_PREV_HASH,
    AuditEntryError,
    AuditError,
    AuditIntegrityError,
    AuditLog,
    AuditWriteError,
    canonical_json,
    encode_entry,
    entry_hash,
    verify_audit_log,
)
from node.errors import NodeError
from node.store import Store, StoreError

KEY = SigningKey.generate()
PUBLIC_KEY = bytes(KEY.verify_key)


def sign(message: bytes) -> bytes:
    return KEY.sign(message).signature


async def append_entries(
    data_dir: Path, count: int, *, start: int = 0, **audit_kwargs: Any
) -> None:
    async with (
        Store.open(data_dir) as store,
        AuditLog(store, sign, PUBLIC_KEY, **audit_kwargs) as audit,
    ):
        for i in range(start, start + count):
            await audit.append("tool.call", f"node-{i % 3}", {"i": i, "tool": "echo"})


def db_of(data_dir: Path) -> Path:
    return data_dir / "vsmcp.db"


def tamper(db: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    conn = sqlite3.connect(db)
    try:
        with conn:
            for sql, params in statements:
                conn.execute(sql, params)
    finally:
        conn.close()


def swap_rows(db: Path, a: int, b: int) -> None:
    """Swap every column but seq between entries a and b: the two entries change places."""
    conn = sqlite3.connect(db)
    try:
        cols = "ts_ms, kind, actor, data, prev_hash, hash, sig"
        row_a = conn.execute(f"SELECT {cols} FROM audit_entries WHERE seq = ?", (a,)).fetchone()
        row_b = conn.execute(f"SELECT {cols} FROM audit_entries WHERE seq = ?", (b,)).fetchone()
        update = (
            "UPDATE audit_entries SET ts_ms = ?, kind = ?, actor = ?, data = ?, "
            "prev_hash = ?, hash = ?, sig = ? WHERE seq = ?"
        )
        with conn:
            conn.execute(update, (*row_b, a))
            conn.execute(update, (*row_a, b))
    finally:
        conn.close()


@pytest.fixture
async def log_dir(tmp_path: Path) -> AsyncIterator[Path]:
    """A log of 40 entries written across three runs of the node."""
    await append_entries(tmp_path, 15, start=0)
    await append_entries(tmp_path, 1, start=15)
    await append_entries(tmp_path, 24, start=16, batch_size=7)
    yield tmp_path


def test_canonical_encoding_is_fixed() -> None:
    assert canonical_json({"b": [1, 2.5], "a": "é"}) == '{"a":"\\u00e9","b":[1,2.5]}'
    encoded = encode_entry(1, 2, "k", "ab", "{}")
    assert encoded == (
        b"\x00" * 7 + b"\x01" + b"\x00" * 7 + b"\x02" + b"\x00\x00\x00\x01k"
        b"\x00\x00\x00\x02ab" + b"\x00\x00\x00\x02{}"
    )
    # Length prefixes keep field boundaries unambiguous.
    assert entry_hash(GENESIS_PREV_HASH, 1, 2, "ab", "c", "{}") != entry_hash(
        GENESIS_PREV_HASH, 1, 2, "a", "bc", "{}"
    )


async def test_append_across_restarts_verifies(log_dir: Path) -> None:
    result = verify_audit_log(db_of(log_dir), PUBLIC_KEY)
    assert result.ok, result.reason
    assert result.entries == 40
    assert result.first_bad_seq is None
    conn = sqlite3.connect(db_of(log_dir))
    try:
        seqs = [r[0] for r in conn.execute("SELECT seq FROM audit_entries ORDER BY seq")]
        first = conn.execute("SELECT prev_hash, data FROM audit_entries WHERE seq = 1").fetchone()
    finally:
        conn.close()
    assert seqs == list(range(1, 41))
    assert first == (GENESIS_PREV_HASH, '{"i":0,"tool":"echo"}')


async def test_empty_log_verifies(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store, AuditLog(store, sign, PUBLIC_KEY):
        pass
    result = verify_audit_log(db_of(tmp_path), PUBLIC_KEY)
    assert (result.ok, result.entries) == (True, 0)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("data", '{"i":16,"tool":"rm -rf"}'),
        ("kind", "tool.denied"),
        ("actor", "someone-else"),
        ("ts_ms", 1),
        ("hash", b"\x01" * 32),
    ],
)
async def test_edit_detected(log_dir: Path, column: str, value: object) -> None:
    tamper(db_of(log_dir), (f"UPDATE audit_entries SET {column} = ? WHERE seq = 17", (value,)))
    result = verify_audit_log(db_of(log_dir), PUBLIC_KEY)
    assert not result.ok
    assert result.first_bad_seq == 17
    assert result.entries == 16
    assert result.reason == "entry 17: hash mismatch (edited)"


async def test_delete_middle_row_detected(log_dir: Path) -> None:
    tamper(db_of(log_dir), ("DELETE FROM audit_entries WHERE seq = 17", ()))
    result = verify_audit_log(db_of(log_dir), PUBLIC_KEY)
    assert (result.ok, result.first_bad_seq) == (False, 17)
    assert result.reason == "entry 17 missing (deleted)"


async def test_delete_and_renumber_detected(log_dir: Path) -> None:
    tamper(
        db_of(log_dir),
        ("DELETE FROM audit_entries WHERE seq = 17", ()),
        ("UPDATE audit_entries SET seq = seq - 1 WHERE seq > 17", ()),
    )
    result = verify_audit_log(db_of(log_dir), PUBLIC_KEY)
    assert (result.ok, result.first_bad_seq) == (False, 17)
    assert result.reason == "entry 17: chain broken (reordered or deleted)"


async def test_delete_last_row_detected(log_dir: Path) -> None:
    tamper(db_of(log_dir), ("DELETE FROM audit_entries WHERE seq = 40", ()))
    result = verify_audit_log(db_of(log_dir), PUBLIC_KEY)
    assert (result.ok, result.first_bad_seq, result.entries) == (False, 40, 39)
    assert result.reason.startswith("head: ")
    assert "truncated" in result.reason


async def test_delete_head_detected(log_dir: Path) -> None:
    tamper(db_of(log_dir), ("DELETE FROM audit_head", ()))
    result = verify_audit_log(db_of(log_dir), PUBLIC_KEY)
    assert not result.ok
    assert result.reason == "head: missing (deleted)"


async def test_head_moved_back_with_an_entry_signature_detected(log_dir: Path) -> None:
    # Truncating to entry 39 and forging the head from entry 39's own signature.
    tamper(
        db_of(log_dir),
        ("DELETE FROM audit_entries WHERE seq = 40", ()),
        (
            "UPDATE audit_head SET (seq, hash, sig) = "
            "(SELECT seq, hash, sig FROM audit_entries WHERE seq = 39)",
            (),
        ),
    )
    result = verify_audit_log(db_of(log_dir), PUBLIC_KEY)
    assert not result.ok
    assert result.reason == "head: bad signature (edited)"


async def test_reorder_detected(log_dir: Path) -> None:
    swap_rows(db_of(log_dir), 5, 9)
    result = verify_audit_log(db_of(log_dir), PUBLIC_KEY)
    assert (result.ok, result.first_bad_seq) == (False, 5)
    assert result.reason == "entry 5: chain broken (reordered or deleted)"


async def test_changed_signature_detected(log_dir: Path) -> None:
    tamper(db_of(log_dir), ("UPDATE audit_entries SET sig = ? WHERE seq = 23", (sign(b"x"),)))
    result = verify_audit_log(db_of(log_dir), PUBLIC_KEY)
    assert (result.ok, result.first_bad_seq) == (False, 23)
    assert result.reason.startswith("entry 23: bad signature")


async def test_wrong_public_key_detected(log_dir: Path) -> None:
    other = bytes(SigningKey.generate().verify_key)
    result = verify_audit_log(db_of(log_dir), other)
    assert (result.ok, result.first_bad_seq, result.entries) == (False, 1, 0)
    assert result.reason.startswith("entry 1: bad signature")


async def test_verify_non_store_file_raises(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 200)
    with pytest.raises(StoreError):
        verify_audit_log(junk, PUBLIC_KEY)
    with pytest.raises(StoreError):
        verify_audit_log(tmp_path / "absent.db", PUBLIC_KEY)


async def test_flush_makes_entries_visible_to_another_connection(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store, AuditLog(store, sign, PUBLIC_KEY) as audit:
        for i in range(100):
            await audit.append("node.start", "me", {"i": i})
        await audit.flush()
        other = sqlite3.connect(db_of(tmp_path))
        try:
            count = other.execute("SELECT COUNT(*) FROM audit_entries").fetchone()[0]
            head = other.execute("SELECT seq FROM audit_head").fetchone()[0]
        finally:
            other.close()
        assert (count, head) == (100, 100)
        assert audit.head_seq == 100
        await audit.flush()  # nothing pending: returns at once


async def test_tiny_queue_keeps_every_entry(tmp_path: Path) -> None:
    async with (
        Store.open(tmp_path) as store,
        AuditLog(store, sign, PUBLIC_KEY, queue_maxsize=1, batch_size=1) as audit,
    ):
        # Many concurrent appenders all block on the one-slot queue.
        await asyncio.gather(*(audit.append("tool.call", f"c{i}", {"i": i}) for i in range(300)))
    result = verify_audit_log(db_of(tmp_path), PUBLIC_KEY)
    assert (result.ok, result.entries) == (True, 300)
    conn = sqlite3.connect(db_of(tmp_path))
    try:
        actors = {r[0] for r in conn.execute("SELECT actor FROM audit_entries")}
    finally:
        conn.close()
    assert actors == {f"c{i}" for i in range(300)}


async def test_bad_entries_rejected_at_append(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store, AuditLog(store, sign, PUBLIC_KEY) as audit:
        with pytest.raises(AuditEntryError):
            await audit.append("k", "a", {"x": object()})
        with pytest.raises(AuditEntryError):
            await audit.append("k", "a", {"x": float("nan")})
        with pytest.raises(AuditEntryError):
            await audit.append("k" * 1000, "a", {})
        with pytest.raises(AuditEntryError):
            await audit.append("k", "\ud800", {})
        await audit.append("k", "a", {"ok": True})  # the log still works
    assert verify_audit_log(db_of(tmp_path), PUBLIC_KEY).entries == 1


async def test_close_idempotent_and_append_after_close_raises(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store:
        audit = AuditLog(store, sign, PUBLIC_KEY)
        await audit.start()
        await audit.start()
        await audit.append("k", "a", {})
        await audit.close()
        await audit.close()
        with pytest.raises(AuditError):
            await audit.append("k", "a", {})
        writers = [t for t in asyncio.all_tasks() if t.get_name() == "audit-writer"]
        assert writers == []
    assert verify_audit_log(db_of(tmp_path), PUBLIC_KEY).entries == 1


def failing_signer(after: int) -> Callable[[bytes], bytes]:
    calls = 0

    def signer(message: bytes) -> bytes:
        nonlocal calls
        calls += 1
        if calls > after:
            raise OSError("signing key unavailable")
        return sign(message)

    return signer


async def test_write_failure_is_surfaced_not_silent(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store:
        audit = AuditLog(store, failing_signer(after=5), PUBLIC_KEY, batch_size=2)
        await audit.start()
        await audit.append("k", "a", {"i": 0})
        await audit.append("k", "a", {"i": 1})
        await audit.flush()  # entries 1, 2 and their head: 3 signatures
        for i in range(2, 6):
            await audit.append("k", "a", {"i": i})
        with pytest.raises(AuditWriteError) as info:
            await audit.flush()
        assert isinstance(info.value, NodeError)
        assert isinstance(info.value.__cause__, OSError)
        with pytest.raises(AuditWriteError):
            await audit.append("k", "a", {"i": 99})
        with pytest.raises(AuditWriteError):
            await audit.close()
        await audit.close()
    # What was committed is intact and nothing half-written.
    result = verify_audit_log(db_of(tmp_path), PUBLIC_KEY)
    assert result.ok, result.reason
    assert result.entries == 2


async def test_write_failure_with_blocked_appenders_does_not_hang(tmp_path: Path) -> None:
    async with asyncio.timeout(60), Store.open(tmp_path) as store:
        audit = AuditLog(store, failing_signer(after=4), PUBLIC_KEY, queue_maxsize=1, batch_size=1)
        await audit.start()
        outcomes = await asyncio.gather(
            *(audit.append("k", f"c{i}", {}) for i in range(50)), return_exceptions=True
        )
        assert any(isinstance(o, AuditWriteError) for o in outcomes)
        assert all(o is None or isinstance(o, AuditWriteError) for o in outcomes)
        with pytest.raises(AuditWriteError):
            await audit.close()
    result = verify_audit_log(db_of(tmp_path), PUBLIC_KEY)
    assert (result.ok, result.entries) == (True, 2)  # two entries + two heads signed


async def test_database_failure_rolls_back_and_is_surfaced(tmp_path: Path) -> None:
    await append_entries(tmp_path, 3)
    tamper(
        db_of(tmp_path),
        (
            "CREATE TRIGGER no_more BEFORE INSERT ON audit_entries "
            "BEGIN SELECT RAISE(ABORT, 'disk says no'); END",
            (),
        ),
    )
    async with Store.open(tmp_path) as store:
        audit = AuditLog(store, sign, PUBLIC_KEY)
        await audit.start()
        await audit.append("k", "a", {})
        with pytest.raises(AuditWriteError, match="disk says no"):
            await audit.flush()
        with pytest.raises(AuditWriteError):
            await audit.close()
        await store.kv_set("still", b"usable")  # the shared connection is not stuck in a txn
        assert await store.kv_get("still") == b"usable"
    result = verify_audit_log(db_of(tmp_path), PUBLIC_KEY)
    assert (result.ok, result.entries) == (True, 3)


async def test_start_refuses_a_log_signed_by_another_key(tmp_path: Path) -> None:
    await append_entries(tmp_path, 2)
    other = SigningKey.generate()
    async with Store.open(tmp_path) as store:
        audit = AuditLog(store, lambda m: other.sign(m).signature, bytes(other.verify_key))
        with pytest.raises(AuditIntegrityError):
            await audit.start()


async def test_start_refuses_entries_beyond_the_head(tmp_path: Path) -> None:
    await append_entries(tmp_path, 2)
    tamper(
        db_of(tmp_path),
        (
            "INSERT INTO audit_entries SELECT seq + 1, ts_ms, kind, actor, data, prev_hash, "
            "hash, sig FROM audit_entries WHERE seq = 2",
            (),
        ),
    )
    async with Store.open(tmp_path) as store:
        with pytest.raises(AuditIntegrityError, match="verify"):
            await AuditLog(store, sign, PUBLIC_KEY).start()


# --- property: any tampering is detected, an untampered log never flagged -------------

TAMPER_COLUMNS = ("ts_ms", "kind", "actor", "data", "prev_hash", "hash", "sig")


def build_log(data_dir: Path, runs: list[list[dict[str, int]]], batch_size: int) -> None:
    async def write() -> None:
        for run in runs:
            async with (
                Store.open(data_dir) as store,
                AuditLog(store, sign, PUBLIC_KEY, batch_size=batch_size) as audit,
            ):
                for data in run:
                    await audit.append("evt", "actor", data)

    asyncio.run(write())


@st.composite
def tampering(draw: st.DrawFn, n: int) -> tuple[str, int, int]:
    op = draw(st.sampled_from(["edit", "delete", "truncate", "swap", "none"]))
    first = draw(st.integers(1, n))
    if op == "swap":
        if n < 2:
            return ("none", 0, 0)
        second = draw(st.integers(1, n).filter(lambda x: x != first))
        return (op, min(first, second), max(first, second))
    if op == "edit":
        return (op, first, draw(st.integers(0, len(TAMPER_COLUMNS) - 1)))
    # "delete": entry `first`; "truncate": entries first..n.
    return (op, first, 0)


@settings(max_examples=40)
@given(
    runs=st.lists(
        st.lists(st.fixed_dictionaries({"v": st.integers(-5, 5)}), min_size=0, max_size=12),
        min_size=1,
        max_size=4,
    ),
    batch_size=st.integers(1, 5),
    data=st.data(),
)
def test_any_tampering_detected_and_no_false_alarm(
    runs: list[list[dict[str, int]]], batch_size: int, data: st.DataObject
) -> None:
    n = sum(len(run) for run in runs)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        build_log(data_dir, runs, batch_size)
        db = db_of(data_dir)
        clean = verify_audit_log(db, PUBLIC_KEY)
        assert (clean.ok, clean.entries, clean.first_bad_seq) == (True, n, None), clean.reason
        if n == 0:
            return
        op, a, b = data.draw(tampering(n))
        if op == "none":
            return
        if op == "edit":
            column = TAMPER_COLUMNS[b]
            conn = sqlite3.connect(db)
            try:
                sql = f"SELECT {column} FROM audit_entries WHERE seq = ?"
                old = conn.execute(sql, (a,)).fetchone()[0]
            finally:
                conn.close()
            new: object
            if isinstance(old, bytes):
                new = bytes([old[0] ^ 1]) + old[1:]
            elif isinstance(old, int):
                new = old + 1
            else:
                new = old + " "
            tamper(db, (f"UPDATE audit_entries SET {column} = ? WHERE seq = ?", (new, a)))
            expected = a
        elif op == "delete":
            tamper(db, ("DELETE FROM audit_entries WHERE seq = ?", (a,)))
            expected = a
        elif op == "truncate":
            tamper(db, ("DELETE FROM audit_entries WHERE seq >= ?", (a,)))
            expected = a
        else:
            swap_rows(db, a, b)
            expected = a
        result = verify_audit_log(db, PUBLIC_KEY)
        assert not result.ok
        assert result.first_bad_seq == expected, result.reason
        assert str(expected) in result.reason
