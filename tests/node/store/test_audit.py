from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from tests.polling import async_wait_until
from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.errors import NodeError
from vsmcp.node.store.audit import (
    GENESIS_PREV_HASH,
    AuditEntryError,
    AuditError,
    AuditIntegrityError,
    AuditLog,
    AuditRollbackError,
    AuditWriteError,
    canonical_json,
    encode_entry,
    entry_hash,
    head_message,
    verify_audit_log,
)
from vsmcp.node.store.audit_head import head_file_for, read_head_file
from vsmcp.node.store.database import Store, StoreError

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


def signed_seqs(db: Path) -> list[int]:
    """The checkpoints: entries whose sig is not empty."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT seq FROM audit_entries WHERE sig != x'' ORDER BY seq")
        return [r[0] for r in rows]
    finally:
        conn.close()


def read_head(db: Path) -> tuple[int, bytes, bytes]:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT seq, hash, sig FROM audit_head").fetchone()
    finally:
        conn.close()
    return (row[0], row[1], row[2])


def rehash_from(db: Path, first: int, sig_of: Callable[[int, bytes, bytes], bytes]) -> bytes:
    """Recompute prev_hash and hash of entries first.. as an attacker would after an edit,
    setting each sig to `sig_of(seq, hash, old_sig)`. Returns the new last hash."""
    conn = sqlite3.connect(db)
    try:
        cols = "seq, ts_ms, kind, actor, data, sig"
        rows = conn.execute(
            f"SELECT {cols} FROM audit_entries WHERE seq >= ? ORDER BY seq", (first,)
        )
        (prev,) = conn.execute(
            "SELECT hash FROM audit_entries WHERE seq = ?", (first - 1,)
        ).fetchone()
        with conn:
            for seq, ts_ms, kind, actor, data, old_sig in rows.fetchall():
                new = entry_hash(prev, seq, ts_ms, kind, actor, data)
                conn.execute(
                    "UPDATE audit_entries SET prev_hash = ?, hash = ?, sig = ? WHERE seq = ?",
                    (prev, new, sig_of(seq, new, old_sig), seq),
                )
                prev = new
    finally:
        conn.close()
    return prev


@pytest.fixture
async def log_dir(tmp_path: Path) -> AsyncIterator[Path]:
    """A log of 40 entries written across three runs of the node, in batches 1..15, 16,
    17..23, 24..30, 31..37 and 38..40 (appends queue without yielding, so each run's
    batches are full); the last entry of each is a checkpoint (see LOG_DIR_CHECKPOINTS)."""
    await append_entries(tmp_path, 15, start=0)
    await append_entries(tmp_path, 1, start=15)
    await append_entries(tmp_path, 24, start=16, batch_size=7)
    yield tmp_path


LOG_DIR_CHECKPOINTS = [15, 16, 23, 30, 37, 40]


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


async def test_only_the_last_entry_of_each_batch_is_signed(log_dir: Path) -> None:
    db = db_of(log_dir)
    assert signed_seqs(db) == LOG_DIR_CHECKPOINTS
    conn = sqlite3.connect(db)
    try:
        sigs = {r[0] for r in conn.execute("SELECT sig FROM audit_entries WHERE sig = x''")}
        checkpoint = conn.execute("SELECT hash, sig FROM audit_entries WHERE seq = 40").fetchone()
    finally:
        conn.close()
    assert sigs == {b""}  # empty blobs, not NULL or text
    KEY.verify_key.verify(checkpoint[0], checkpoint[1])
    head_seq, head_hash, _ = read_head(db)
    assert (head_seq, head_hash) == (40, checkpoint[0])


async def test_log_with_every_entry_signed_still_verifies(log_dir: Path) -> None:
    # The format before checkpoints: every entry is one, and damage is found where it is.
    db = db_of(log_dir)
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT seq, hash FROM audit_entries").fetchall()
    finally:
        conn.close()
    tamper(db, *(("UPDATE audit_entries SET sig = ? WHERE seq = ?", (sign(h), q)) for q, h in rows))
    assert signed_seqs(db) == list(range(1, 41))
    result = verify_audit_log(db, PUBLIC_KEY)
    assert (result.ok, result.entries) == (True, 40), result.reason
    rehash_from(db, 20, lambda _seq, hash_, _old: sign(hash_))  # re-signed, key unchanged
    assert verify_audit_log(db, PUBLIC_KEY).ok
    tamper(db, ("UPDATE audit_entries SET data = '{}' WHERE seq = 33", ()))
    result = verify_audit_log(db, PUBLIC_KEY)
    assert (result.ok, result.first_bad_seq, result.entries) == (False, 33, 32)
    assert result.reason == "entry 33: hash mismatch (edited)"


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
    # Entry 40 was the checkpoint of batch 38..40: with it gone, 38 and 39 are not
    # authenticated any more (they could have been edited and re-hashed).
    tamper(db_of(log_dir), ("DELETE FROM audit_entries WHERE seq = 40", ()))
    result = verify_audit_log(db_of(log_dir), PUBLIC_KEY)
    assert (result.ok, result.first_bad_seq, result.entries) == (False, 38, 37)
    assert result.reason.startswith("head: ")
    assert "truncated" in result.reason
    assert result.reason.endswith(
        "; entries 38..39 not authenticated (last valid checkpoint: entry 37)"
    )


async def test_delete_last_batch_detected(log_dir: Path) -> None:
    tamper(db_of(log_dir), ("DELETE FROM audit_entries WHERE seq >= 38", ()))
    result = verify_audit_log(db_of(log_dir), PUBLIC_KEY)
    assert (result.ok, result.first_bad_seq, result.entries) == (False, 38, 37)
    assert result.reason == (
        "head: signed head is entry 40 but the log ends at entry 37 "
        "(entries 38..40 deleted: tail truncated)"
    )


async def test_delete_head_detected(log_dir: Path) -> None:
    tamper(db_of(log_dir), ("DELETE FROM audit_head", ()))
    result = verify_audit_log(db_of(log_dir), PUBLIC_KEY)
    assert not result.ok
    assert result.reason == "head: missing (deleted)"


async def test_head_moved_back_with_a_checkpoint_signature_detected(log_dir: Path) -> None:
    # Truncating to checkpoint 37 and forging the head from entry 37's own signature.
    tamper(
        db_of(log_dir),
        ("DELETE FROM audit_entries WHERE seq > 37", ()),
        (
            "UPDATE audit_head SET (seq, hash, sig) = "
            "(SELECT seq, hash, sig FROM audit_entries WHERE seq = 37)",
            (),
        ),
    )
    result = verify_audit_log(db_of(log_dir), PUBLIC_KEY)
    assert (result.ok, result.first_bad_seq, result.entries) == (False, 38, 37)
    assert result.reason == "head: bad signature (edited)"


async def test_head_rolled_back_detected(tmp_path: Path) -> None:
    await append_entries(tmp_path, 15)
    old_head = read_head(db_of(tmp_path))
    await append_entries(tmp_path, 5, start=15)
    tamper(db_of(tmp_path), ("UPDATE audit_head SET seq = ?, hash = ?, sig = ?", old_head))
    result = verify_audit_log(db_of(tmp_path), PUBLIC_KEY)
    assert (result.ok, result.first_bad_seq, result.entries) == (False, 16, 15)
    assert result.reason == (
        "head: entries 16..20 are not covered by the signed head "
        "(head rolled back or entries inserted)"
    )


async def test_reorder_detected(log_dir: Path) -> None:
    # 1..15 are one batch: its checkpoint is beyond the break, so 1..4 are not
    # authenticated either.
    swap_rows(db_of(log_dir), 5, 9)
    result = verify_audit_log(db_of(log_dir), PUBLIC_KEY)
    assert (result.ok, result.first_bad_seq, result.entries) == (False, 1, 0)
    assert result.reason == (
        "entry 5: chain broken (reordered or deleted); "
        "entries 1..4 not authenticated (last valid checkpoint: none)"
    )


@pytest.mark.parametrize(
    ("seq", "sig"),
    [
        (23, sign(b"x")),  # a checkpoint signed over something else
        (23, SigningKey.generate().sign(b"x" * 32).signature[:63]),  # wrong length
        (23, "a" * 64),  # wrong type
        (20, sign(b"x")),  # a signature where there should be none
    ],
)
async def test_changed_signature_detected(log_dir: Path, seq: int, sig: object) -> None:
    # 17..23 are one batch: nothing authenticates them once a signature there is bad.
    tamper(db_of(log_dir), ("UPDATE audit_entries SET sig = ? WHERE seq = ?", (sig, seq)))
    result = verify_audit_log(db_of(log_dir), PUBLIC_KEY)
    assert (result.ok, result.first_bad_seq, result.entries) == (False, 17, 16)
    assert result.reason == (
        f"entry {seq}: bad signature (re-signed, edited or wrong key); "
        f"entries 17..{seq - 1} not authenticated (last valid checkpoint: entry 16)"
    )


async def test_wrong_public_key_detected(log_dir: Path) -> None:
    other = bytes(SigningKey.generate().verify_key)
    result = verify_audit_log(db_of(log_dir), other)
    assert (result.ok, result.first_bad_seq, result.entries) == (False, 1, 0)
    assert result.reason.startswith("entry 15: bad signature")  # the first checkpoint
    assert result.reason.endswith("; entries 1..14 not authenticated (last valid checkpoint: none)")


def strip(db: Path, *seqs: int) -> None:
    tamper(db, *(("UPDATE audit_entries SET sig = x'' WHERE seq = ?", (seq,)) for seq in seqs))


@pytest.mark.parametrize("seqs", [(23,), (15, 16, 23, 30, 37), (40,), (37, 40)])
async def test_stripped_checkpoint_still_covered_is_not_reported(
    log_dir: Path, seqs: tuple[int, ...]
) -> None:
    # Not an integrity loss: a later checkpoint, or the head, still authenticates every
    # entry through the chain. Documented in the module docstring.
    strip(db_of(log_dir), *seqs)
    result = verify_audit_log(db_of(log_dir), PUBLIC_KEY)
    assert (result.ok, result.entries, result.first_bad_seq) == (True, 40, None), result.reason


async def test_last_entries_covered_by_nothing_detected(log_dir: Path) -> None:
    db = db_of(log_dir)
    strip(db, 40)
    tamper(db, ("DELETE FROM audit_head", ()))
    result = verify_audit_log(db, PUBLIC_KEY)
    assert (result.ok, result.first_bad_seq, result.entries) == (False, 38, 37)
    assert result.reason == (
        "head: missing (deleted); "
        "entries 38..40 not authenticated (last valid checkpoint: entry 37)"
    )


async def test_inserted_unsigned_entries_detected(log_dir: Path) -> None:
    # Appended with a correct chain and no signature: not covered by the head.
    db = db_of(log_dir)
    prev = read_head(db)[1]
    inserts = []
    for seq in (41, 42):
        hash_ = entry_hash(prev, seq, 1, "tool.call", "me", "{}")
        inserts.append(
            (
                "INSERT INTO audit_entries VALUES (?, 1, 'tool.call', 'me', '{}', ?, ?, x'')",
                (seq, prev, hash_),
            )
        )
        prev = hash_
    tamper(db, *inserts)
    result = verify_audit_log(db, PUBLIC_KEY)
    assert (result.ok, result.first_bad_seq, result.entries) == (False, 41, 40)
    assert result.reason == (
        "head: entries 41..42 are not covered by the signed head "
        "(head rolled back or entries inserted)"
    )


OTHER_KEY = SigningKey.generate()


@pytest.mark.parametrize(
    ("sig_of", "head_sig_of", "reason"),
    [
        # Signatures kept as they were: the first checkpoint after the edit fails.
        (lambda _s, _h, old: old, None, "entry 23: bad signature"),
        # Checkpoints re-signed with another key.
        (
            lambda _s, h, old: OTHER_KEY.sign(h).signature if old else old,
            lambda m: OTHER_KEY.sign(m).signature,
            "entry 23: bad signature",
        ),
        # Every signature stripped, the head left alone: it no longer matches.
        (lambda _s, _h, _old: b"", None, "head: hash does not match entry 40 (edited)"),
        # Every signature stripped, the head re-signed with another key.
        (lambda _s, _h, _old: b"", lambda m: OTHER_KEY.sign(m).signature, "head: bad signature"),
    ],
)
async def test_edit_with_recomputed_chain_detected(
    log_dir: Path,
    sig_of: Callable[[int, bytes, bytes], bytes],
    head_sig_of: Callable[[bytes], bytes] | None,
    reason: str,
) -> None:
    # Entry 18 edited and every later hash recomputed: nothing is wrong until a signature
    # is checked, so everything after the last checkpoint before the edit (16) is suspect.
    db = db_of(log_dir)
    tamper(db, ('UPDATE audit_entries SET data = \'{"i":17,"tool":"rm"}\' WHERE seq = 18', ()))
    last_hash = rehash_from(db, 18, sig_of)
    if head_sig_of is not None:
        message = head_message(40, last_hash)
        tamper(db, ("UPDATE audit_head SET hash = ?, sig = ?", (last_hash, head_sig_of(message))))
    result = verify_audit_log(db, PUBLIC_KEY)
    assert (result.ok, result.first_bad_seq, result.entries) == (False, 17, 16)
    assert result.reason.startswith(reason), result.reason
    assert "entries 17.." in result.reason
    assert result.reason.endswith("not authenticated (last valid checkpoint: entry 16)")


async def test_verify_reports_a_non_store_file_as_broken_and_raises_for_an_absent_one(
    tmp_path: Path,
) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 200)
    result = verify_audit_log(junk, PUBLIC_KEY)
    assert (result.ok, result.first_bad_seq) == (False, 1)
    assert "file is not a database" in result.reason
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
        audit = AuditLog(store, failing_signer(after=2), PUBLIC_KEY, batch_size=2)
        await audit.start()
        await audit.append("k", "a", {"i": 0})
        await audit.append("k", "a", {"i": 1})
        await audit.flush()  # checkpoint entry 2 and the head: 2 signatures
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
    assert (result.ok, result.entries) == (True, 2)  # two one-entry batches: 4 signatures


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
        # Whatever the damage at `a`, every entry after the last checkpoint before it is
        # no longer authenticated.
        expected = max((s for s in signed_seqs(db) if s < a), default=0) + 1
        if op == "edit":
            column = TAMPER_COLUMNS[b]
            conn = sqlite3.connect(db)
            try:
                sql = f"SELECT {column} FROM audit_entries WHERE seq = ?"
                old = conn.execute(sql, (a,)).fetchone()[0]
            finally:
                conn.close()
            new: object
            if old == b"":
                new = bytes(64)  # a signature where there was none
            elif isinstance(old, bytes):
                new = bytes([old[0] ^ 1]) + old[1:]
            elif isinstance(old, int):
                new = old + 1
            else:
                new = old + " "
            tamper(db, (f"UPDATE audit_entries SET {column} = ? WHERE seq = ?", (new, a)))
        elif op == "delete":
            tamper(db, ("DELETE FROM audit_entries WHERE seq = ?", (a,)))
        elif op == "truncate":
            tamper(db, ("DELETE FROM audit_entries WHERE seq >= ?", (a,)))
        else:
            swap_rows(db, a, b)
        result = verify_audit_log(db, PUBLIC_KEY)
        assert not result.ok
        assert (result.first_bad_seq, result.entries) == (expected, expected - 1), result.reason
        assert str(expected) in result.reason


@settings(max_examples=25, deadline=None)
@given(batches=st.lists(st.integers(1, 30), min_size=1, max_size=6))
def test_random_batches_verify_with_one_checkpoint_each(batches: list[int]) -> None:
    async def write(data_dir: Path) -> None:
        async with (
            Store.open(data_dir) as store,
            AuditLog(store, sign, PUBLIC_KEY) as audit,
        ):
            for size in batches:
                # Appends queue without yielding and the flush waits for their commit:
                # one batch per group.
                for i in range(size):
                    await audit.append("evt", "actor", {"i": i})
                await audit.flush()

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        asyncio.run(write(data_dir))
        result = verify_audit_log(db_of(data_dir), PUBLIC_KEY)
        assert (result.ok, result.entries) == (True, sum(batches)), result.reason
        assert signed_seqs(db_of(data_dir)) == list(itertools.accumulate(batches))


# -- damage and rollback ----------------------------------------------------------------


def flip_bytes_of(db: Path, needle: bytes, count: int = 40) -> None:
    """Flip `count` bytes of the file where `needle` (text of one entry) is stored."""
    data = bytearray(db.read_bytes())
    at = data.index(needle)
    for i in range(at, at + count):
        data[i] ^= 0xFF
    db.write_bytes(bytes(data))


async def test_verify_reports_undecodable_rows_as_broken_at_the_first_bad_entry(
    tmp_path: Path,
) -> None:
    # Data long enough for 40 flipped bytes to stay inside one entry's text.
    async with Store.open(tmp_path) as store, AuditLog(store, sign, PUBLIC_KEY) as audit:
        for i in range(1, 301):
            await audit.append("tool.call", "node", {"i": i, "pad": f"<{i:04}>" + "x" * 60})
            if i % 100 == 0:
                await audit.flush()  # checkpoints at 100, 200, 300
    flip_bytes_of(db_of(tmp_path), b'"pad":"<0150>')
    result = verify_audit_log(db_of(tmp_path), PUBLIC_KEY)
    assert (result.ok, result.first_bad_seq, result.entries) == (False, 101, 100)
    assert result.reason.startswith("entry 150: unreadable (Could not decode to UTF-8")
    assert "(damaged file)" in result.reason and "\n" not in result.reason


async def test_verify_reports_a_file_that_fails_the_integrity_check(tmp_path: Path) -> None:
    await append_entries(tmp_path, 50)
    async with Store.open(tmp_path) as store:
        for i in range(200):
            await store.kv_set(f"k{i}", bytes(100))
    db = db_of(tmp_path)
    page_size = 4096
    conn = sqlite3.connect(db)
    try:
        kv_root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'kv'").fetchone()[0]
    finally:
        conn.close()
    at = (kv_root - 1) * page_size + 8  # the cell pointers after a leaf page's header
    data = bytearray(db.read_bytes())
    for i in range(at, at + 40):
        data[i] ^= 0xFF
    db.write_bytes(bytes(data))
    result = verify_audit_log(db, PUBLIC_KEY)
    assert not result.ok
    assert "fails SQLite's integrity check" in result.reason


def restore(src: Path, dst: Path) -> None:
    dst.write_bytes(src.read_bytes())


async def test_a_log_that_went_backwards_is_refused_at_start(tmp_path: Path) -> None:
    head_file = head_file_for(tmp_path)
    await append_entries(tmp_path, 5, head_file=head_file)
    backup = tmp_path / "backup.db"
    restore(db_of(tmp_path), backup)
    await append_entries(tmp_path, 5, start=5, head_file=head_file)
    restore(backup, db_of(tmp_path))
    with pytest.raises(AuditRollbackError) as caught:
        await append_entries(tmp_path, 1, start=10, head_file=head_file)
    message = str(caught.value)
    assert str(head_file) in message and "records entry 10" in message
    assert "log ends at entry 5" in message and "--accept-audit-rollback" in message
    # Nothing was appended to the refused log.
    assert verify_audit_log(db_of(tmp_path), PUBLIC_KEY).entries == 5
    verified = verify_audit_log(db_of(tmp_path), PUBLIC_KEY, head_file=head_file)
    assert (verified.ok, verified.first_bad_seq) == (False, 6)
    assert "log went backwards" in verified.reason


async def test_an_emptied_database_is_refused_at_start(tmp_path: Path) -> None:
    head_file = head_file_for(tmp_path)
    await append_entries(tmp_path, 7, head_file=head_file)
    db_of(tmp_path).write_bytes(b"")
    with pytest.raises(AuditRollbackError, match=r"records entry 7 .* log ends at entry 0"):
        await append_entries(tmp_path, 1, head_file=head_file)


async def test_a_replaced_log_of_the_same_length_is_refused(tmp_path: Path) -> None:
    head_file = head_file_for(tmp_path)
    await append_entries(tmp_path, 4, head_file=head_file)
    recorded = head_file.read_bytes()
    db_of(tmp_path).unlink()
    await append_entries(tmp_path, 6, start=100, head_file=None)  # another log, longer
    head_file.write_bytes(recorded)
    with pytest.raises(AuditRollbackError, match="entry 4 differs: the database was replaced"):
        await append_entries(tmp_path, 1, head_file=head_file)


async def test_a_head_file_not_signed_by_this_key_is_refused(tmp_path: Path) -> None:
    head_file = head_file_for(tmp_path)
    await append_entries(tmp_path, 3, head_file=head_file)
    text = head_file.read_text()
    head_file.write_text(text.replace('"seq":3', '"seq":2'))
    with pytest.raises(AuditRollbackError, match="does not verify with this node's key"):
        await append_entries(tmp_path, 1, head_file=head_file)


async def test_accepting_a_rollback_records_it_and_moves_the_head(tmp_path: Path) -> None:
    head_file = head_file_for(tmp_path)
    await append_entries(tmp_path, 3, head_file=head_file)
    backup = tmp_path / "backup.db"
    restore(db_of(tmp_path), backup)
    await append_entries(tmp_path, 3, start=3, head_file=head_file)
    restore(backup, db_of(tmp_path))
    await append_entries(tmp_path, 1, start=6, head_file=head_file, accept_rollback=True)
    conn = sqlite3.connect(db_of(tmp_path))
    try:
        kinds = [r[0] for r in conn.execute("SELECT kind FROM audit_entries ORDER BY seq")]
    finally:
        conn.close()
    assert kinds == ["tool.call"] * 3 + ["audit.rollback_accepted", "tool.call"]
    head = read_head_file(head_file, KEY.verify_key)
    assert head is not None and head.seq == 5
    # Accepted once: the next start is a plain one.
    await append_entries(tmp_path, 1, start=7, head_file=head_file)
    assert verify_audit_log(db_of(tmp_path), PUBLIC_KEY, head_file=head_file).entries == 6


async def test_a_missing_head_file_is_written_for_an_existing_log(tmp_path: Path) -> None:
    await append_entries(tmp_path, 4)  # a data dir from before the head file
    head_file = head_file_for(tmp_path)
    assert not head_file.exists()
    async with (
        Store.open(tmp_path) as store,
        AuditLog(store, sign, PUBLIC_KEY, head_file=head_file),
    ):
        head = read_head_file(head_file, KEY.verify_key)
        assert head is not None and head.seq == 4


# -- durability ------------------------------------------------------------------------


def committed_column(db: Path, column: str) -> list[Any]:
    """What another process sees in the file now: `column` of each entry, in seq order."""
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute(f"SELECT {column} FROM audit_entries ORDER BY seq")]
    finally:
        conn.close()


def committed_seqs(db: Path) -> list[int]:
    return committed_column(db, "seq")


async def test_a_durable_append_returns_with_its_entry_committed(tmp_path: Path) -> None:
    # A linger far longer than the test: only a durable append can get an entry in early.
    async with (
        Store.open(tmp_path) as store,
        AuditLog(store, sign, PUBLIC_KEY, linger_s=3600) as audit,
    ):
        await audit.append("tool.call", "node", {"i": 1}, durable=True)
        assert committed_seqs(db_of(tmp_path)) == [1]
        assert audit.pending == 0


async def test_a_plain_append_returns_before_its_entry_is_committed(tmp_path: Path) -> None:
    """The window `audit.commit_before_answer` closes; `pending` counts it."""
    async with (
        Store.open(tmp_path) as store,
        AuditLog(store, sign, PUBLIC_KEY, linger_s=3600) as audit,
    ):
        await audit.append("tool.call", "node", {"i": 1})
        assert committed_seqs(db_of(tmp_path)) == []
        assert audit.pending == 1
    # Closing cuts the linger short and commits it.
    assert committed_seqs(db_of(tmp_path)) == [1]


async def test_durable_appends_wait_for_earlier_plain_ones(tmp_path: Path) -> None:
    async with (
        Store.open(tmp_path) as store,
        AuditLog(store, sign, PUBLIC_KEY, linger_s=3600, batch_size=2) as audit,
    ):
        for i in range(5):
            await audit.append("tool.call", "node", {"i": i})
        await audit.append("tool.call", "node", {"i": 5}, durable=True)
        assert committed_seqs(db_of(tmp_path)) == [1, 2, 3, 4, 5, 6]


def committed_actors(db: Path) -> list[str]:
    return committed_column(db, "actor")


async def overtaken_by_a_newcomer(data_dir: Path, hops: int) -> tuple[list[str], list[str]]:
    """Durable append A waits for room in a full queue (maxsize 1: entry e1 being sealed,
    e2 queued); `hops` event-loop steps after e1 is committed, plain append B comes. When
    the writer takes e2, asyncio wakes A but does not hold the room for it: B, arriving
    first, takes it. Returns (what was committed when A's append returned, at the end)."""
    release = threading.Event()

    def held_signer(message: bytes) -> bytes:
        release.wait(HANG_GUARD_S)
        return sign(message)

    async with asyncio.timeout(HANG_GUARD_S), Store.open(data_dir) as store:
        audit = AuditLog(store, held_signer, PUBLIC_KEY, queue_maxsize=1, batch_size=1, linger_s=0)
        await audit.start()

        async def first_then_newcomer() -> None:
            await audit.append("k", "e1", {}, durable=True)
            for _ in range(hops):
                await asyncio.sleep(0)
            await audit.append("k", "B", {})

        async def durable_a() -> list[str]:
            await audit.append("k", "A", {}, durable=True)
            return committed_actors(db_of(data_dir))

        first = asyncio.create_task(first_then_newcomer())
        await async_wait_until(lambda: audit.pending == 1, what="e1 accepted")
        await audit.append("k", "e2", {})  # queued once the writer took e1 (and holds it)
        a = asyncio.create_task(durable_a())
        await async_wait_until(lambda: audit.pending == 3, what="A waiting for room")
        release.set()
        await first
        seen_by_a = await a
        await audit.close()
    return seen_by_a, committed_actors(db_of(data_dir))


async def test_a_durable_append_overtaken_in_the_queue_still_waits_for_its_entry(
    tmp_path: Path,
) -> None:
    """Regression: the position a durable append waits for was counted before it queued,
    so when a newcomer took the room it was woken for, it returned on the newcomer's
    commit, before its own. Swept over when B arrives, to cross the one where it overtakes."""
    overtaken = 0
    for hops in range(40):
        seen_by_a, final = await overtaken_by_a_newcomer(tmp_path / str(hops), hops)
        assert sorted(final) == ["A", "B", "e1", "e2"]
        assert "A" in seen_by_a, (hops, seen_by_a, final)
        if final.index("B") < final.index("A"):
            overtaken += 1
        elif overtaken:
            break  # B now comes after A has its room: every point before was covered
    assert overtaken >= 1  # the sweep hit the interleaving it is about


async def test_a_flush_does_not_wait_for_an_append_cancelled_while_waiting_for_room(
    tmp_path: Path,
) -> None:
    """Regression: flush counted an append still waiting for room in a full queue, and
    kept waiting for it after it was cancelled (never to be written)."""
    signing, release = threading.Event(), threading.Event()

    def held_signer(message: bytes) -> bytes:
        signing.set()
        release.wait(HANG_GUARD_S)
        return sign(message)

    async with asyncio.timeout(HANG_GUARD_S), Store.open(tmp_path) as store:
        audit = AuditLog(store, held_signer, PUBLIC_KEY, queue_maxsize=1, batch_size=1)
        await audit.start()
        await audit.append("k", "a", {"i": 1})
        await async_wait_until(signing.is_set, what="entry 1 being sealed")
        await audit.append("k", "a", {"i": 2})  # queued: the queue is full
        waiting = asyncio.create_task(audit.append("k", "a", {"i": 3}))
        await async_wait_until(lambda: audit.pending == 3, what="entry 3 waiting for room")
        flushing = asyncio.create_task(audit.flush())
        await asyncio.sleep(0)  # the flush counts what was appended so far
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        release.set()
        await flushing
        assert committed_seqs(db_of(tmp_path)) == [1, 2]
        await audit.close()
    assert committed_seqs(db_of(tmp_path)) == [1, 2]


# -- the writer loop cancelled and restarted by its supervisor --------------------------

WRITER = "audit-writer"
HANG_GUARD_S = 30  # a deadline against hangs, far beyond any run: not a timing assertion
MAX_STEPS = 400


def quick_restarts(**kwargs: Any) -> LoopSupervisor:
    return LoopSupervisor(backoff_min_s=0.001, backoff_max_s=0.002, **kwargs)


async def fault_after(tmp_path: Path, steps: int, *, durable_in_flight: bool) -> int:
    """Cancel the writer `steps` loop iterations into the batch of entry 2, as the debug
    API's loop-fault does, and check what follows. Returns entries uncommitted at the
    fault (0: the batch was done, the fault hit the idle writer)."""
    loops = quick_restarts()
    async with asyncio.timeout(HANG_GUARD_S), Store.open(tmp_path) as store:
        audit = AuditLog(store, sign, PUBLIC_KEY, loops=loops, linger_s=0)
        await audit.start()
        await audit.append("k", "a", {"i": 1}, durable=True)
        second = asyncio.create_task(audit.append("k", "a", {"i": 2}, durable=durable_in_flight))
        await asyncio.sleep(0)  # the append runs to its first await: queued, not committed
        assert audit.pending == 1
        for _ in range(steps):
            await asyncio.sleep(0)
        uncommitted = audit.pending
        assert loops.inject_fault(WRITER)
        await second  # a durable append cut at any point still returns once committed
        await audit.append("k", "a", {"i": 3}, durable=True)  # the restarted writer
        assert loops.restarts[WRITER] == 1
        assert audit.head_seq == 3
        await audit.close()
        assert audit.pending == 0
    assert committed_seqs(db_of(tmp_path)) == [1, 2, 3]
    result = verify_audit_log(db_of(tmp_path), PUBLIC_KEY, head_file=None)
    assert (result.ok, result.entries) == (True, 3), result.reason
    return uncommitted


@pytest.mark.parametrize("durable_in_flight", [False, True])
async def test_the_writer_cancelled_at_any_await_of_a_batch_loses_and_hangs_nothing(
    tmp_path: Path, durable_in_flight: bool
) -> None:
    """At every point from before the writer takes entry 2 to after its batch is
    committed: the batch is committed once (no duplicate seq), its waiters wake, the
    next durable append and close return, and the log verifies."""
    mid_batch = 0
    for steps in range(MAX_STEPS):
        uncommitted = await fault_after(
            tmp_path / str(steps), steps, durable_in_flight=durable_in_flight
        )
        if uncommitted == 0:
            break  # the fault now comes after the batch: every point before was covered
        mid_batch += 1
    else:
        pytest.fail(f"the batch of entry 2 was still uncommitted after {MAX_STEPS} steps")
    # The sweep crossed the batch's awaits (seal thread, BEGIN, INSERT, head, COMMIT, anchor
    # file), not just the idle writer.
    assert mid_batch >= 5


async def test_a_writer_faulted_while_lingering_keeps_the_entries_it_took(tmp_path: Path) -> None:
    loops = quick_restarts()
    async with asyncio.timeout(HANG_GUARD_S), Store.open(tmp_path) as store:
        # The batch waits an hour for company: the fault lands in that wait.
        audit = AuditLog(store, sign, PUBLIC_KEY, loops=loops, linger_s=3600, queue_maxsize=1)
        await audit.start()
        await audit.append("k", "a", {"i": 1})
        # Room for entry 2 only once the writer took entry 1 and went lingering with it.
        await audit.append("k", "a", {"i": 2})
        assert loops.inject_fault(WRITER)
        await async_wait_until(lambda: loops.restarts[WRITER] == 1, what="writer restarted")
        assert audit.pending == 2
        await audit.close()  # cuts the linger of the restarted writer short
    assert committed_seqs(db_of(tmp_path)) == [1, 2]


async def test_a_writer_given_up_stops_the_log_and_close_reports_what_was_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="vsmcp.node.store.audit")
    loops = quick_restarts(max_restarts=0)  # the first failure gives the loop up
    async with asyncio.timeout(HANG_GUARD_S), Store.open(tmp_path) as store:
        audit = AuditLog(store, sign, PUBLIC_KEY, loops=loops, linger_s=3600)
        await audit.start()
        await audit.append("k", "a", {"i": 1}, durable=True)
        await audit.append("k", "a", {"i": 2})  # in the writer's hand, lingering
        assert loops.inject_fault(WRITER)
        with pytest.raises(AuditWriteError, match=r"audit writer stopped.*gave the writer loop up"):
            await audit.append("k", "a", {"i": 3}, durable=True)
        assert WRITER in loops.failures
        with pytest.raises(AuditWriteError):
            await audit.close()
        assert audit.pending == 0
    assert committed_seqs(db_of(tmp_path)) == [1]
    assert verify_audit_log(db_of(tmp_path), PUBLIC_KEY).ok
    lost = [r.getMessage() for r in caplog.records if "not committed" in r.getMessage()]
    assert lost and "closed with 2 entries not committed (entries after 1)" in lost[0]


async def test_a_writer_given_up_while_close_waits_ends_the_close(tmp_path: Path) -> None:
    """Regression: a give-up during close's wait was ignored (the log was closing), so
    close waited forever for an entry nothing would write."""
    signing, release = threading.Event(), threading.Event()

    def held_signer(message: bytes) -> bytes:
        signing.set()
        release.wait(HANG_GUARD_S)
        return sign(message)

    loops = quick_restarts(max_restarts=0)
    async with asyncio.timeout(HANG_GUARD_S), Store.open(tmp_path) as store:
        audit = AuditLog(store, held_signer, PUBLIC_KEY, loops=loops, linger_s=0, batch_size=1)
        await audit.start()
        await audit.append("k", "a", {"i": 1})
        await async_wait_until(signing.is_set, what="entry 1 being sealed")
        await audit.append("k", "a", {"i": 2})  # queued behind it
        closing = asyncio.create_task(audit.close())
        await asyncio.sleep(0)  # close runs to its wait
        assert not closing.done()
        assert loops.inject_fault(WRITER)
        await async_wait_until(lambda: WRITER in loops.failures, what="writer given up")
        release.set()
        with pytest.raises(AuditWriteError, match="gave the writer loop up"):
            await closing
        assert audit.pending == 0
    # The batch in hand at the give-up runs to its end; the entry behind it is lost.
    assert committed_seqs(db_of(tmp_path)) == [1]
    assert verify_audit_log(db_of(tmp_path), PUBLIC_KEY).ok


async def test_close_after_a_failure_releases_appends_blocked_on_a_full_queue(
    tmp_path: Path,
) -> None:
    release = threading.Event()

    def stalled_then_failing(message: bytes) -> bytes:
        release.wait(HANG_GUARD_S)
        raise OSError("signing key unavailable")

    async with asyncio.timeout(HANG_GUARD_S), Store.open(tmp_path) as store:
        audit = AuditLog(
            store, stalled_then_failing, PUBLIC_KEY, queue_maxsize=1, batch_size=1, linger_s=0
        )
        await audit.start()
        appends = [asyncio.create_task(audit.append("k", f"c{i}", {})) for i in range(20)]
        # One being signed, one queued, 18 waiting for room.
        await async_wait_until(lambda: audit.pending == 20, what="all 20 appends accepted")
        closing = asyncio.create_task(audit.close())
        release.set()
        with pytest.raises(AuditWriteError):
            await closing
        outcomes = await asyncio.gather(*appends, return_exceptions=True)
        assert all(o is None or isinstance(o, AuditWriteError) for o in outcomes), outcomes
        assert any(isinstance(o, AuditWriteError) for o in outcomes)
        assert audit.pending == 0
    assert committed_seqs(db_of(tmp_path)) == []
