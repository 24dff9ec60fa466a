"""One pass of the PostgreSQL mirror: read committed audit entries from the node's SQLite
file, write them (and the policy notes among them, and the signed head when the pass
reaches it) to PostgreSQL in one transaction.

The SQLite log is the source of truth. The mirror's position is PostgreSQL's own
`max(seq)` for the node, read at every connection, so a pass that committed is never
copied again and one that did not is copied again whole: nothing lost, and (rows are
inserted `ON CONFLICT (node_id, seq) DO NOTHING`) nothing doubled. Entries are read
through a read-only connection of the mirror's own (the node's writer is never waited
for, and uncommitted entries are never seen), and a pass ends at a checkpoint when it
can, so the mirror's tail is signed at every moment.

Rows go by COPY into a per-connection temporary stage table, then one INSERT ... SELECT
moves them into `audit_events`, deriving `payload` (jsonb), `capability_name` and `zone`.
Parsing the JSON is most of PostgreSQL's work: the subquery's `OFFSET 0` keeps the
planner from inlining it, which would parse each entry three times (measured: 37 → 27 µs
of backend CPU per row).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from vsmcp.crdt.signing import SIGNATURE_BYTES
from vsmcp.crdt.state import snapshot_id
from vsmcp.node.replication.service import KV_SNAPSHOT
from vsmcp.node.store.audit import UNSIGNED

# Audit kinds that carry a policy note (the immune system's mitigations, including those
# S5 asks for, and S5's own responses).
MITIGATION_KIND: Final = "immune.mitigation"
RESPONSE_KIND: Final = "vsm.response"
NOTE_KINDS: Final = frozenset({MITIGATION_KIND, RESPONSE_KIND})
MAX_TITLE_CHARS: Final = 200
MAX_SHORT_CHARS: Final = 50
# A pass holds at most this much entry data in memory (entries may be 256 KiB each).
MAX_BATCH_BYTES: Final = 16 * 1024 * 1024
# jsonb refuses the NUL character, which canonical JSON may carry escaped; such an entry
# is mirrored with a NULL payload (its `data` text is kept, and verifies).
_JSON_NUL: Final = "\\u0000"

STAGE_TABLE: Final = "vsmcp_audit_stage"
# An entry's `id` is a UUIDv8 of its own: 8 bytes from the node id, then the seq (with
# the RFC 9562 variant bit). The same entry has the same id in every mirror, and one
# node's rows go to the index in order, where random UUIDs would scatter (measured: a
# random-UUID primary key cost about a third of the mirror's insert rate).
_UUID_VARIANT_BIT: Final = "x'8000000000000000'::bigint"  # "10": bit 63, and seq's 0 bit 62
_STAGE_COLUMNS: Final = (
    "seq",
    "ts_ms",
    "kind",
    "actor",
    "data",
    "prev_hash",
    "hash",
    "signature",
    "jsonable",
)
CREATE_STAGE: Final = f"""CREATE TEMPORARY TABLE IF NOT EXISTS {STAGE_TABLE} (
    seq bigint, ts_ms bigint, kind text, actor text, data text,
    prev_hash bytea, hash bytea, signature text, jsonable boolean
) ON COMMIT DELETE ROWS"""
_MOVE_STAGE: Final = f"""
INSERT INTO audit_events (id, node_id, seq, ts_ms, event_type, user_id, capability_name,
                          payload, zone, "timestamp", data, prev_hash, hash, signature)
SELECT ($2 || to_hex(seq | {_UUID_VARIANT_BIT}))::uuid, $1, seq, ts_ms, kind, actor,
       payload->>'tool', payload, payload->>'zone', to_timestamp(ts_ms / 1000.0), data,
       prev_hash, hash, signature
FROM (SELECT *, CASE WHEN jsonable THEN data::jsonb END AS payload FROM {STAGE_TABLE}
      OFFSET 0) s
ON CONFLICT (node_id, seq) DO NOTHING"""
_INSERT_NOTE: Final = """
INSERT INTO policy_notes (node_id, audit_seq, type, title, content, generated_by,
                          auto_deployed, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, to_timestamp($8 / 1000.0))
ON CONFLICT (node_id, audit_seq) DO NOTHING"""
_UPSERT_HEAD: Final = """
INSERT INTO audit_heads (node_id, seq, hash, sig) VALUES ($1, $2, $3, $4)
ON CONFLICT (node_id) DO UPDATE
SET seq = excluded.seq, hash = excluded.hash, sig = excluded.sig, mirrored_at = now()
WHERE audit_heads.seq <= excluded.seq"""
REGISTER_NODE: Final = """
INSERT INTO audit_nodes (node_id, public_key, node_name) VALUES ($1, $2, $3)
ON CONFLICT (node_id) DO UPDATE SET node_name = excluded.node_name"""
MIRRORED_POSITION: Final = """
SELECT seq, hash FROM audit_events WHERE node_id = $1 ORDER BY seq DESC LIMIT 1"""
_INSERT_SNAPSHOT: Final = """
INSERT INTO crdt_snapshots (node_id, snapshot_hash, data, signature) VALUES ($1, $2, $3, $4)
ON CONFLICT (node_id, snapshot_hash) DO NOTHING"""

# (seq, ts_ms, kind, actor, data, prev_hash, hash, sig): audit_entries' column order.
Row = tuple[int, int, str, str, str, bytes, bytes, bytes]


@dataclass(frozen=True, slots=True)
class Batch:
    """Committed entries after the mirror's position, and the signed head when the batch
    ends at it."""

    rows: list[Row]
    head: tuple[int, bytes, bytes] | None
    # Built with the read (in its worker thread): the COPY records and the policy notes.
    records: list[tuple[Any, ...]]
    notes: list[tuple[Any, ...]]

    @property
    def last_seq(self) -> int:
        return self.rows[-1][0]


class LocalLog:
    """A read-only view of the node's audit log file (the mirror's own connection).

    Synchronous: call its methods in a worker thread. They take turns (a lock), as a read
    left running by a lost PostgreSQL connection may overlap the next connection's.
    """

    def __init__(self, db_path: Path, node_id: str) -> None:
        self._node_id = node_id
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            f"{db_path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def read(self, after: int, limit: int) -> Batch:
        """Up to `limit` entries (and about `MAX_BATCH_BYTES` of data) after seq `after`,
        cut back to the last checkpoint in them when there is one (so the mirror's tail
        is always signed)."""
        conn = self._conn
        with self._lock:
            conn.execute("BEGIN")  # entries and head from one snapshot
            try:
                cursor = conn.execute(
                    "SELECT seq, ts_ms, kind, actor, data, prev_hash, hash, sig "
                    "FROM audit_entries WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, limit),
                )
                rows: list[Row] = []
                size = 0
                for row in cursor:  # at least one row, then up to MAX_BATCH_BYTES of data
                    rows.append(row)
                    size += len(row[4])
                    if size >= MAX_BATCH_BYTES:
                        break
                cursor.close()
                head = conn.execute("SELECT seq, hash, sig FROM audit_head WHERE id = 1").fetchone()
            finally:
                conn.execute("COMMIT")
        rows = _to_checkpoint(rows)
        ends_at_head = bool(rows) and head is not None and head[0] == rows[-1][0]
        return Batch(
            rows,
            (int(head[0]), bytes(head[1]), bytes(head[2])) if ends_at_head else None,
            [_stage_record(r) for r in rows],
            [note for r in rows if (note := policy_note(self._node_id, r)) is not None],
        )

    def hash_at(self, seq: int) -> bytes | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT hash FROM audit_entries WHERE seq = ?", (seq,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def snapshot(self) -> bytes | None:
        """The node's latest signed CRDT snapshot (the replication service keeps one)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT value FROM kv WHERE key = ?", (KV_SNAPSHOT,)
            ).fetchone()
        return None if row is None else bytes(row[0])


def _to_checkpoint(rows: list[Row]) -> list[Row]:
    for end in range(len(rows), 0, -1):
        if rows[end - 1][7] != UNSIGNED:
            return rows[:end]
    return rows  # no checkpoint among them: the next pass brings one


def _stage_record(row: Row) -> tuple[Any, ...]:
    seq, ts_ms, kind, actor, data, prev_hash, hash_, sig = row
    return (seq, ts_ms, kind, actor, data, prev_hash, hash_, sig.hex(), _JSON_NUL not in data)


def id_prefix(node_id: str) -> str:
    """The first 16 hex digits of every audit row id of `node_id` (version 8 set)."""
    prefix = bytearray(hashlib.sha256(node_id.encode()).digest()[:8])
    prefix[6] = 0x80 | (prefix[6] & 0x0F)
    return prefix.hex()


async def write_batch(conn: Any, node_id: str, batch: Batch) -> int:
    """Copy `batch` into PostgreSQL in one transaction (an asyncpg connection); return the
    number of audit rows that were new."""
    async with conn.transaction():
        await conn.copy_records_to_table(STAGE_TABLE, records=batch.records, columns=_STAGE_COLUMNS)
        status = await conn.execute(_MOVE_STAGE, node_id, id_prefix(node_id))
        if batch.notes:
            await conn.executemany(_INSERT_NOTE, batch.notes)
        if batch.head is not None:
            await conn.execute(_UPSERT_HEAD, node_id, *batch.head)
    # "INSERT 0 <rows>"
    return int(str(status).rsplit(" ", 1)[-1])


async def write_snapshot(conn: Any, node_id: str, snapshot: bytes) -> str:
    """Store a signed CRDT snapshot (once per content); return its id."""
    ident = snapshot_id(snapshot)
    signature = snapshot[-SIGNATURE_BYTES:].hex()
    await conn.execute(_INSERT_SNAPSHOT, node_id, ident, snapshot, signature)
    return ident


def policy_note(node_id: str, row: Row) -> tuple[Any, ...] | None:
    """The `policy_notes` row of an audit entry that carries one, else None."""
    seq, ts_ms, kind, _actor, data, *_ = row
    if kind not in NOTE_KINDS:
        return None
    try:
        body = json.loads(data)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    if kind == MITIGATION_KIND:
        note = body.get("note")
        if not isinstance(note, dict):
            return None
        title = str(note.get("action", ""))
        content = "\n".join(
            f"{field}: {note[field]}"
            for field in ("reason", "evidence", "until")
            if note.get(field) not in (None, "")
        )
        source = str(note.get("source", "immune"))
        kind_label = "mitigation"
    else:
        title = f"{body.get('action')} by rule {body.get('rule')}: {body.get('outcome')}"
        content = json.dumps(body, sort_keys=True)
        source = f"s5:{body.get('rule')}"
        kind_label = "s5_response"
    return (
        node_id,
        seq,
        kind_label,
        _cut(title or kind_label, MAX_TITLE_CHARS),
        content,
        _cut(source, MAX_SHORT_CHARS),
        True,  # applied by the node on its own (no operator in the loop)
        ts_ms,
    )


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
