"""`vsmcp audit verify --postgres DSN --node ID`: verify a node's mirrored audit log in
PostgreSQL on its own, without the node or its files.

The rows are walked like the SQLite log (`vsmcp.node.store.audit.ChainWalk`): contiguous
seqs, prev_hash links, recomputed hashes, checkpoint signatures, and the signed head
copied into `audit_heads`. The key is the node's own, taken from its id (a PeerID holds
the Ed25519 public key), so rows or keys edited in the database cannot vouch for
themselves. Columns derived from an entry for SQL (`payload`, `capability_name`,
`zone`, `timestamp`) must agree with the hashed `data` and `ts_ms`: an edit of those is
found too.

A mirror may be behind or mid-copy: entries after the last copied head verify when
checkpoints cover them (a pass always ends at one), so a tail cut back to a checkpoint
after that head cannot be told from a mirror that is behind.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlsplit

from nacl.signing import VerifyKey

from vsmcp.node.bridges.postgres_config import check_dsn
from vsmcp.node.errors import NodeError
from vsmcp.node.store.audit import AuditVerifyResult, ChainWalk

# Rows fetched per round trip while walking: at most ≈128 MiB of entry data in memory
# (entries are up to 256 KiB), and round trips few enough not to dominate.
FETCH_ROWS: Final = 500
_ROWS: Final = """
SELECT seq, ts_ms, event_type, user_id, data, prev_hash, hash, signature,
       payload::text AS payload, capability_name, zone, "timestamp"
FROM audit_events WHERE node_id = $1 ORDER BY seq"""
_HEAD: Final = "SELECT seq, hash, sig FROM audit_heads WHERE node_id = $1"
_JSON_NUL: Final = "\\u0000"


CONNECT_TIMEOUT_S: Final = 10.0


class MirrorUnavailable(NodeError):
    """The mirror cannot be read: a bad DSN, PostgreSQL unreachable, no tables."""


async def run_verify(dsn: str, node_id: str, public_key: bytes) -> AuditVerifyResult:
    """Connect to `dsn` and verify `node_id`'s mirror; `MirrorUnavailable` when it cannot
    be read at all."""
    import asyncpg

    try:
        check_dsn(dsn)
    except ValueError as e:
        raise MirrorUnavailable(f"--postgres: {e}") from None
    where = describe_dsn(dsn)
    try:
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        raise MirrorUnavailable(f"cannot connect to PostgreSQL at {where}: {e}") from e
    try:
        if await conn.fetchval("SELECT to_regclass('audit_events')") is None:
            raise MirrorUnavailable(f"no audit_events table at {where}: nothing was mirrored")
        result = await verify_mirror(conn, node_id, public_key)
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        raise MirrorUnavailable(f"cannot read the mirror at {where}: {e}") from e
    finally:
        await conn.close()
    if result.ok and result.entries == 0:
        return AuditVerifyResult(
            ok=False, entries=0, first_bad_seq=None, reason=f"no mirrored entries for {node_id}"
        )
    return result


def describe_dsn(dsn: str) -> str:
    """host:port/database of a DSN, for messages (never its password)."""
    parts = urlsplit(dsn)
    return f"{parts.hostname or '?'}:{parts.port or 5432}{parts.path or '/'}"


async def verify_mirror(conn: Any, node_id: str, public_key: bytes) -> AuditVerifyResult:
    """Verify `node_id`'s rows in `audit_events` (an asyncpg connection)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        head_row = await conn.fetchrow(_HEAD, node_id)
        head = (
            None if head_row is None else (int(head_row[0]), bytes(head_row[1]), bytes(head_row[2]))
        )
        walk = ChainWalk(VerifyKey(public_key), head)
        async for row in conn.cursor(_ROWS, node_id, prefetch=FETCH_ROWS):
            seq = row["seq"]
            try:
                sig = bytes.fromhex(row["signature"])
            except ValueError:
                return walk.bad(seq, "signature is not hex (edited)")
            problem = _derived_problem(row)
            if problem is not None:
                return walk.bad(seq, problem)
            entry = (seq, row["ts_ms"], row["event_type"], row["user_id"], row["data"])
            stop = walk.add((*entry, bytes(row["prev_hash"]), bytes(row["hash"]), sig))
            if stop is not None:
                return stop
        return walk.finish(mirror=True)


def _derived_problem(row: Any) -> str | None:
    """What is wrong with the columns derived from the hashed entry, if anything."""
    data = row["data"]
    try:
        body = None if _JSON_NUL in data else json.loads(data)
    except (TypeError, ValueError):
        return None  # the hash check reports an edited `data`
    payload = None if row["payload"] is None else json.loads(row["payload"])
    if payload != body:
        return "payload does not match the entry's data (edited)"
    expected = body if isinstance(body, dict) else {}
    for column, key in (("capability_name", "tool"), ("zone", "zone")):
        value = expected.get(key)
        if row[column] != (None if value is None else _as_text(value)):
            return f"{column} does not match the entry's data (edited)"
    stamp = row["timestamp"]
    if not isinstance(stamp, datetime) or abs(stamp.timestamp() * 1000 - row["ts_ms"]) >= 1:
        return "timestamp does not match the entry's ts_ms (edited)"
    return None


def _as_text(value: object) -> str:
    """What `payload->>'key'` gives for a JSON value."""
    return value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))
