"""The PostgreSQL bridge in-process, against the machine's real PostgreSQL and a real
SQLite audit log: migrations, the mirror's passes, resumption without doubles, policy
notes, snapshots, a diverged mirror, an unreachable server, and the mirror's verifier.

Each test gets a fresh PostgreSQL schema (the DSN's search_path), dropped at the end.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from nacl.signing import SigningKey

from tests.polling import async_wait_for, async_wait_until
from tests.skips import POSTGRES_DSN, require_postgres
from vsmcp.mesh.identity import node_id_from_public_key
from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.app.config import load_config
from vsmcp.node.bridges.model import BridgeContext
from vsmcp.node.bridges.postgres import EVENT_UNIT, PAIN_SOURCE, PostgresBridge
from vsmcp.node.bridges.postgres_config import PostgresSection, check_dsn
from vsmcp.node.bridges.postgres_mirror import MAX_BATCH_BYTES, LocalLog, policy_note
from vsmcp.node.bridges.postgres_schema import SCHEMA_VERSION, SchemaTooNew, migrate
from vsmcp.node.bridges.postgres_verify import verify_mirror
from vsmcp.node.errors import ConfigError
from vsmcp.node.metrics import NodeMetrics
from vsmcp.node.replication.service import KV_SNAPSHOT
from vsmcp.node.store.audit import AuditLog
from vsmcp.node.store.database import Store
from vsmcp.node.vsm.events import Event, UnitStateChanged
from vsmcp.node.vsm.stream import EventStream

KEY = SigningKey.generate()
PUBLIC_KEY = bytes(KEY.verify_key)
NODE_ID = node_id_from_public_key(PUBLIC_KEY)


# -- config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres@127.0.0.1:5432/test",
        "postgres://u:secret@db.example:6543/audit?sslmode=require",
        "postgresql:///test?host=/run/postgresql",
    ],
)
def test_a_postgresql_url_is_accepted(dsn: str) -> None:
    assert check_dsn(dsn) == dsn


@pytest.mark.parametrize(
    ("dsn", "why"),
    [
        ("mysql://root@127.0.0.1/test", "scheme 'mysql'"),
        ("127.0.0.1:5432", "postgresql://"),
        ("postgresql:///test", "names no host"),
        ("postgresql://h:99999/test", "not a URL"),
        ("", "scheme '(none)'"),
    ],
)
def test_a_bad_dsn_is_a_config_error_naming_the_key(tmp_path: Path, dsn: str, why: str) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'[bridges.postgres]\ndsn = "{dsn}"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(config, environ={})
    assert caught.value.key == "bridges.postgres"
    assert "dsn" in caught.value.reason and why in caught.value.reason


@pytest.mark.parametrize("dsn", ["postgresql://u:hun#ter2@h/db", "postgresql://u:hun?ter2@h/db"])
def test_a_bad_dsn_does_not_echo_a_piece_of_its_password(dsn: str) -> None:
    with pytest.raises(ValueError, match="not a URL") as caught:
        check_dsn(dsn)
    assert "hun" not in str(caught.value) and "ter2" not in str(caught.value)


def test_batch_rows_are_bounded() -> None:
    with pytest.raises(msgspec.ValidationError, match="batch_rows"):
        msgspec.convert({"dsn": POSTGRES_DSN, "batch_rows": 0}, PostgresSection)


# -- policy notes ------------------------------------------------------------------------


def _row(seq: int, kind: str, data: dict[str, Any]) -> Any:
    return (seq, 1_700_000_000_000, kind, "actor", json.dumps(data), b"", b"", b"")


def test_policy_notes_come_from_mitigation_and_response_entries() -> None:
    note = {
        "source": "pattern:brute",
        "reason": "3 bad tokens in 60 s",
        "evidence": "origin 10.0.0.9",
        "action": "blocked caller 10.0.0.9 mesh-wide",
        "until": "2026-12-07T00:00:00Z",
    }
    mitigation = policy_note("n", _row(4, "immune.mitigation", {"note": note}))
    assert mitigation is not None
    _, seq, kind, title, content, source, auto, _ts = mitigation
    assert (seq, kind, title, source, auto) == (
        4,
        "mitigation",
        "blocked caller 10.0.0.9 mesh-wide",
        "pattern:brute",
        True,
    )
    assert "reason: 3 bad tokens in 60 s" in content and "until: 2026" in content
    response = policy_note(
        "n",
        _row(5, "vsm.response", {"rule": "shed-normal", "action": "shed", "outcome": "applied"}),
    )
    assert response is not None and response[2:6:3] == ("s5_response", "s5:shed-normal")
    assert response[3] == "shed by rule shed-normal: applied"
    assert policy_note("n", _row(6, "tool.call", {"tool": "echo"})) is None
    assert policy_note("n", _row(7, "immune.mitigation", {"note": "not an object"})) is None


# -- against PostgreSQL ------------------------------------------------------------------


@pytest.fixture
def server() -> str:
    return require_postgres()


@pytest.fixture
async def dsn(server: str) -> AsyncIterator[str]:
    """A DSN whose search_path is a fresh schema of this test's own."""
    schema = f"vsmcp_u_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(server)
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{server}?search_path={schema}"
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


async def _fetch(dsn: str, query: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def test_migrations_are_versioned_and_applied_once_by_many_nodes(dsn: str) -> None:
    conns = [await asyncpg.connect(dsn) for _ in range(3)]
    try:
        versions = await asyncio.gather(*(migrate(c) for c in conns))
        assert versions == [SCHEMA_VERSION] * 3
        assert await migrate(conns[0]) == SCHEMA_VERSION
        applied = await conns[0].fetch("SELECT version FROM schema_migrations")
        assert [r["version"] for r in applied] == list(range(1, SCHEMA_VERSION + 1))
        await conns[0].execute("INSERT INTO schema_migrations (version, name) VALUES (99, 'x')")
        with pytest.raises(SchemaTooNew, match="version 99"):
            await migrate(conns[1])
    finally:
        for c in conns:
            await c.close()


class _Node:
    """A store and audit log in a data dir, and what a bridge sees of the node."""

    def __init__(self, data_dir: Path, key: SigningKey = KEY) -> None:
        self.data_dir = data_dir
        self.key = key
        self.node_id = node_id_from_public_key(bytes(key.verify_key))
        self.pains: list[tuple[str, float, str]] = []
        self.loops = LoopSupervisor()
        self.events = EventStream()
        self.seen: list[Event] = []
        self.events.subscribe("test", self.seen.extend)

    async def __aenter__(self) -> _Node:
        await self.events.start()
        self.store = await Store.open(self.data_dir).__aenter__()
        self.audit = await AuditLog(
            self.store,
            lambda message: self.key.sign(message).signature,
            bytes(self.key.verify_key),
            batch_size=700,
        ).__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.audit.close()
        await self.store.close()
        await self.events.stop()

    def bridge(self, dsn: str, **section: Any) -> PostgresBridge:
        context = BridgeContext(
            node_id=self.node_id,
            node_name="unit",
            data_dir=self.data_dir,
            zones=("public", "ops", "restricted"),
            events=self.events,
            loops=self.loops,
            metrics=NodeMetrics(),
            tools=None,
            state=None,
            store=self.store,
            audit_log=self.audit,
            audit=lambda kind, data: None,
            pain=lambda source, intensity, reason: self.pains.append((source, intensity, reason)),
        )
        config = {"dsn": dsn, "interval_s": 0.02, "retry_s": 0.05, **section}
        return PostgresBridge(msgspec.convert(config, PostgresSection), context)

    async def append(self, count: int, *, start: int = 0) -> None:
        for i in range(start, start + count):
            await self.audit.append("tool.call", "caller", {"tool": "echo", "zone": "ops", "i": i})
        await self.audit.flush()


async def _caught_up(bridge: PostgresBridge, audit: AuditLog) -> bool:
    status = bridge.status()
    return status.connected and status.lag == 0 and audit.head_seq > 0


def _wait_caught_up(bridge: PostgresBridge, node: _Node) -> Any:
    return async_wait_for(
        lambda: _caught_up(bridge, node.audit), timeout_s=30, what="mirror caught up"
    )


async def _mirrored(dsn: str) -> tuple[int, int, int]:
    row = (await _fetch(dsn, "SELECT count(*), count(DISTINCT seq), max(seq) FROM audit_events"))[0]
    return int(row[0]), int(row[1]), int(row[2] or 0)


async def _verify(dsn: str, key: bytes = PUBLIC_KEY, node_id: str = NODE_ID) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await verify_mirror(conn, node_id, key)
    finally:
        await conn.close()


async def test_the_mirror_copies_notes_and_snapshots_and_resumes_without_doubles(
    tmp_path: Path, dsn: str
) -> None:
    async with _Node(tmp_path) as node:
        await node.append(2_500)
        note = {"source": "s5:guard", "reason": "r", "action": "blocked node X", "until": "u"}
        await node.audit.append("immune.mitigation", NODE_ID, {"note": note}, durable=True)
        snapshot = b"signed-crdt-state" + bytes(range(64))
        await node.store.kv_set(KV_SNAPSHOT, snapshot)
        async with node.bridge(dsn, batch_rows=1_000) as bridge:
            await _wait_caught_up(bridge, node)
            assert bridge.status().counters["batches"] >= 3  # 2,501 rows, 1,000 a pass
        assert await _mirrored(dsn) == (2_501, 2_501, 2_501)
        notes = await _fetch(dsn, "SELECT audit_seq, type, title, generated_by FROM policy_notes")
        assert [tuple(r) for r in notes] == [(2_501, "mitigation", "blocked node X", "s5:guard")]
        snaps = await _fetch(dsn, "SELECT data, signature FROM crdt_snapshots")
        assert [(bytes(r[0]), r[1]) for r in snaps] == [(snapshot, snapshot[-64:].hex())]
        assert (await _verify(dsn)).ok

        # A new bridge (a restart) resumes from PostgreSQL's position: only new rows.
        await node.append(300, start=2_500)
        async with node.bridge(dsn) as again:
            await _wait_caught_up(again, node)
            assert again.status().counters["mirrored"] == 300
        assert await _mirrored(dsn) == (2_801, 2_801, 2_801)
        result = await _verify(dsn)
        assert result.ok and result.entries == 2_801
        assert not (await _verify(dsn, bytes(SigningKey.generate().verify_key))).ok


async def test_a_mirror_mid_copy_verifies_and_edits_are_found(tmp_path: Path, dsn: str) -> None:
    async with _Node(tmp_path) as node:
        await node.append(1_500)
        async with node.bridge(dsn) as bridge:
            await _wait_caught_up(bridge, node)
    # No head copied yet (a first pass still running): the checkpoints cover every row.
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DELETE FROM audit_heads")
        checkpoint = await conn.fetchval(
            "SELECT max(seq) FROM audit_events WHERE signature <> '' AND seq < 1000"
        )
        await conn.execute("DELETE FROM audit_events WHERE seq > $1", checkpoint)
        result = await verify_mirror(conn, NODE_ID, PUBLIC_KEY)
        assert result.ok and result.entries == checkpoint, result
        # Cut back to an entry no checkpoint covers: found.
        unsigned = await conn.fetchval(
            "SELECT max(seq) FROM audit_events WHERE signature = '' AND seq < $1", checkpoint
        )
        await conn.execute("DELETE FROM audit_events WHERE seq > $1", unsigned)
        result = await verify_mirror(conn, NODE_ID, PUBLIC_KEY)
        assert not result.ok and f"..{unsigned} not authenticated" in result.reason, result
        await conn.execute("UPDATE audit_events SET zone = 'public' WHERE seq = 3")
        result = await verify_mirror(conn, NODE_ID, PUBLIC_KEY)
        assert result.first_bad_seq == 1 and "entry 3: zone does not match" in result.reason
    finally:
        await conn.close()


async def test_a_mirror_of_another_history_is_refused_not_mixed(tmp_path: Path, dsn: str) -> None:
    async with _Node(tmp_path / "a") as node:
        await node.append(100)
        async with node.bridge(dsn) as bridge:
            await _wait_caught_up(bridge, node)
    # Same key, another log (a data dir restored from elsewhere): its entries differ.
    async with _Node(tmp_path / "b") as other:
        await other.append(150, start=1_000)
        async with other.bridge(dsn) as bridge:
            await async_wait_until(
                lambda: bridge.status().state == "down", timeout_s=30, what="refused"
            )
            assert "another history" in bridge.status().last_error
            assert bridge.status().lag == 150
    assert await _mirrored(dsn) == (100, 100, 100)
    assert other.pains and other.pains[0][0] == PAIN_SOURCE


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_server_is_pain_and_lag_never_a_crash(
    tmp_path: Path, server: str
) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{_closed_port()}/test"
    async with _Node(tmp_path) as node:
        await node.append(40)
        async with node.bridge(dead) as bridge:
            await async_wait_until(
                lambda: bridge.status().errors >= 3, timeout_s=30, what="retries"
            )
            status = bridge.status()
            assert status.state == "down" and status.lag == 40 and status.outbox_depth == 40
            assert "Connect" in status.last_error or "refused" in status.last_error
        assert bridge.status().state == "stopped"
    # One pain per outage (not one per retry), naming the bridge and why.
    assert len(node.pains) == 1
    source, intensity, reason = node.pains[0]
    assert source == PAIN_SOURCE and 0 < intensity <= 1 and "PostgreSQL mirror down" in reason
    # Each change of state is a unit_state event (not one per retry).
    changes = [e for e in node.seen if isinstance(e, UnitStateChanged)]
    assert [(e.unit, e.previous, e.state) for e in changes] == [
        (EVENT_UNIT, "connecting", "down"),
        (EVENT_UNIT, "down", "stopped"),
    ]
    assert changes[0].reason is not None and "Error" in changes[0].reason  # why it is down
    assert changes[1].reason is None


async def test_a_bridge_stopped_mid_copy_is_resumed_by_the_next(tmp_path: Path, dsn: str) -> None:
    async with _Node(tmp_path) as node:
        await node.append(12_000)
        async with node.bridge(dsn, batch_rows=100) as bridge:
            await async_wait_until(
                lambda: bridge.status().counters["batches"] >= 2, timeout_s=30, what="copying"
            )
        # Stopped with reads (and maybe a write) in flight: the loop is gone, the file closed.
        assert bridge.status().state == "stopped" and not bridge._reads
        copied = (await _mirrored(dsn))[0]
        assert 0 < copied < 12_000
        async with node.bridge(dsn) as again:
            await _wait_caught_up(again, node)
            assert again.status().counters["mirrored"] == 12_000 - copied
        assert await _mirrored(dsn) == (12_000, 12_000, 12_000)
        assert (await _verify(dsn)).ok


async def test_a_pass_holds_a_bounded_amount_of_entry_data(tmp_path: Path) -> None:
    big = "x" * 200_000  # near the audit log's 256 KiB per entry
    async with _Node(tmp_path) as node:
        for i in range(200):  # 40 MB of entry data
            await node.audit.append("tool.call", "caller", {"i": i, "blob": big})
        await node.audit.flush()
        local = LocalLog(tmp_path / "vsmcp.db", NODE_ID)
        try:
            batch = await asyncio.to_thread(local.read, 0, 5_000)
        finally:
            local.close()
    seqs = [row[0] for row in batch.rows]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) < 200
    assert sum(len(row[4]) for row in batch.rows[:-1]) < MAX_BATCH_BYTES
    assert len(batch.records) == len(seqs)


async def test_many_nodes_mirror_into_one_database_side_by_side(tmp_path: Path, dsn: str) -> None:
    nodes = [_Node(tmp_path / str(i), SigningKey.generate()) for i in range(3)]
    for i, node in enumerate(nodes):
        await node.__aenter__()
        await node.append(400 + 100 * i)
    try:
        bridges = [node.bridge(dsn) for node in nodes]
        for bridge in bridges:
            await bridge.start()
        for bridge, node in zip(bridges, nodes, strict=True):
            await _wait_caught_up(bridge, node)
        for bridge in bridges:
            await bridge.stop()
    finally:
        for node in nodes:
            await node.__aexit__(None, None, None)
    counts = await _fetch(dsn, "SELECT node_id, count(*), max(seq) FROM audit_events GROUP BY 1")
    assert {r[0]: (r[1], r[2]) for r in counts} == {
        node.node_id: (node.audit.head_seq, node.audit.head_seq) for node in nodes
    }
    for node in nodes:
        result = await _verify(dsn, bytes(node.key.verify_key), node.node_id)
        assert result.ok and result.entries == node.audit.head_seq
    registered = await _fetch(dsn, "SELECT node_id, public_key FROM audit_nodes")
    assert {r[0]: bytes(r[1]) for r in registered} == {
        node.node_id: bytes(node.key.verify_key) for node in nodes
    }
