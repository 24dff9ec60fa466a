"""The PostgreSQL bridge against the machine's real PostgreSQL: a real `vsmcpd` mirrors
its audit log into `audit_events`, SQL (asyncpg and psql) finds the rows, an outage
through a proxy we cut loses and doubles nothing, `vsmcp audit verify --postgres` checks
the mirror on its own and finds a tampered row, and a bad DSN is a clear error.

Each test gets its own PostgreSQL schema (the DSN's search_path), dropped at the end.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from nacl.signing import SigningKey

from tests.integration.harness import (
    NodeProcess,
    run_cli,
    tool_call_message,
)
from tests.integration.tcp_proxy import TcpProxy
from tests.polling import wait_for
from tests.skips import POSTGRES_HOST, POSTGRES_PORT, require_postgres
from vsmcp.mesh.identity import node_id_from_public_key

pytestmark = pytest.mark.integration

TOKEN = "pg-bridge-token-0123456789"
OUTAGE_ENTRIES = 10_000
CALLERS = 16


def _config(dsn: str) -> str:
    return f"""
[tools]
entry_points = false
[[mcp.tokens]]
name = "ops"
token = "{TOKEN}"
zone = "restricted"
[bridges.postgres]
dsn = "{dsn}"
interval_s = 0.05
retry_s = 0.2
connect_timeout_s = 5
"""


def _sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.fixture
def schema() -> Iterator[str]:
    """A fresh schema of our own in the `test` database: its name."""
    dsn = require_postgres()
    name = f"vsmcp_t_{secrets.token_hex(6)}"
    _sql(dsn, f"CREATE SCHEMA {name}")
    try:
        yield name
    finally:
        _sql(dsn, f"DROP SCHEMA {name} CASCADE")


def _dsn(schema: str, port: int = POSTGRES_PORT) -> str:
    return f"postgresql://postgres@{POSTGRES_HOST}:{port}/test?search_path={schema}"


def _start(tmp_path: Path, dsn: str, nodes: list[NodeProcess]) -> NodeProcess:
    config = tmp_path / "node.toml"
    config.write_text(_config(dsn))
    node = NodeProcess(tmp_path / "data", "--config", str(config))
    nodes.append(node)
    return node.start()


def _bridge(node: NodeProcess) -> dict[str, Any]:
    status: dict[str, Any] = node.get_json("/api/vsm")["bridges"]["postgres"]
    return status


def _pain_total(node: NodeProcess) -> int:
    aggregate = node.get_json("/api/vsm")["s3"]["algedonic"]["aggregate"]
    return int(aggregate["pain_total"])


def _local_head(node: NodeProcess) -> int:
    conn = sqlite3.connect(f"file:{node.data_dir / 'vsmcp.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM audit_entries").fetchone()[0])
    finally:
        conn.close()


def _mirrored(dsn: str, node_id: str) -> tuple[int, int, int, int]:
    """(rows, distinct seqs, min seq, max seq) of the node in audit_events."""
    row = _sql(
        dsn,
        "SELECT count(*), count(DISTINCT seq), coalesce(min(seq), 0), coalesce(max(seq), 0) "
        "FROM audit_events WHERE node_id = $1",
        node_id,
    )[0]
    return (int(row[0]), int(row[1]), int(row[2]), int(row[3]))


def _caught_up(node: NodeProcess, dsn: str) -> bool:
    head = _local_head(node)
    bridge = _bridge(node)  # connected: the tables exist
    if not (bridge["connected"] and bridge["lag"] == 0):
        return False
    return _mirrored(dsn, node.node_id)[3] == head > 0


def _drive_calls(node: NodeProcess, until: Any, *, limit: int) -> int:
    """`echo` calls from CALLERS concurrent clients until `until()` holds (checked every
    few hundred calls) or `limit` calls were made; returns the calls made."""
    body, headers = tool_call_message(TOKEN, "echo", {"text": "pg"})
    made = 0

    async def caller(session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        nonlocal made
        while not stop.is_set() and made < limit:
            made += 1
            async with session.post(node.url + "/mcp", json=body, headers=headers) as r:
                assert r.status == 200, await r.text()
                await r.read()

    async def run() -> None:
        stop = asyncio.Event()
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(caller(session, stop)) for _ in range(CALLERS)]
            while not stop.is_set() and made < limit:
                await asyncio.sleep(0.05)
                if await asyncio.to_thread(until):
                    stop.set()
            await asyncio.gather(*tasks)

    asyncio.run(run())
    return made


def _mirrored_node(
    tmp_path: Path, dsn: str, nodes: list[NodeProcess], *, calls: int, via: str | None = None
) -> NodeProcess:
    """A node mirroring into `dsn` (reached through `via` when given) that made `calls`
    tool calls, once the mirror holds every entry."""
    node = _start(tmp_path, via or dsn, nodes)
    _drive_calls(node, lambda: False, limit=calls)
    wait_for(lambda: _caught_up(node, dsn), timeout_s=30, what="mirror caught up")
    return node


def _verify(dsn: str, node_id: str) -> subprocess.CompletedProcess[str]:
    return run_cli("audit", "verify", "--postgres", dsn, "--node", node_id)


def test_audit_rows_are_found_by_sql_and_a_tampered_row_by_verify(
    tmp_path: Path, schema: str, nodes: list[NodeProcess]
) -> None:
    dsn = _dsn(schema)
    node = _mirrored_node(tmp_path, dsn, nodes, calls=200)
    assert _bridge(node)["state"] == "connected"

    # The node keeps writing entries of its own (S3* audits, anchors): poll until the
    # mirror and the local log agree at one moment.
    def consistent() -> tuple[int, int, int, int] | None:
        mirrored = _mirrored(dsn, node.node_id)
        rows, distinct, low, high = mirrored
        return mirrored if rows == distinct == high == _local_head(node) and low == 1 else None

    wait_for(consistent, timeout_s=30, what="every local entry mirrored once, from 1")
    # The seeds' columns answer fleet questions in plain SQL (psql, not our code).
    psql = subprocess.run(
        [
            "psql",
            "-h",
            POSTGRES_HOST,
            "-U",
            "postgres",
            "-d",
            "test",
            "-Atc",
            f"SET search_path = {schema}; SELECT count(*) FROM audit_events "
            f"WHERE node_id = '{node.node_id}' AND event_type = 'tool.call' "
            "AND capability_name = 'echo' AND zone = 'restricted' "
            "AND payload->>'outcome' = 'ok'",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert int(psql.stdout.split()[-1]) == 200, psql.stdout + psql.stderr
    applied = _sql(dsn, "SELECT version FROM schema_migrations ORDER BY version")
    assert [r[0] for r in applied] == [1]
    key = _sql(dsn, "SELECT public_key FROM audit_nodes WHERE node_id = $1", node.node_id)
    assert len(key) == 1 and len(key[0][0]) == 32

    node.stop()  # no more entries: the mirror stays as it is, the tampering below the only change
    high = _mirrored(dsn, node.node_id)[3]
    verified = _verify(dsn, node.node_id)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"{high} entries" in verified.stdout
    _sql(
        dsn,
        "UPDATE audit_events SET user_id = 'mallory' WHERE node_id = $1 AND seq = 7",
        node.node_id,
    )
    tampered = _verify(dsn, node.node_id)
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr
    assert "BROKEN" in tampered.stdout and "entry 7: hash mismatch" in tampered.stdout


def test_a_payload_edit_and_a_cut_tail_are_found(
    tmp_path: Path, schema: str, nodes: list[NodeProcess]
) -> None:
    dsn = _dsn(schema)
    node = _mirrored_node(tmp_path, dsn, nodes, calls=50)
    node_id = node.node_id
    # The jsonb column is derived from the hashed text: editing it alone is found.
    seq = _sql(
        dsn,
        "SELECT min(seq) FROM audit_events WHERE node_id = $1 AND event_type = 'tool.call'",
        node_id,
    )[0][0]
    _sql(
        dsn,
        'UPDATE audit_events SET payload = payload || \'{"outcome": "denied"}\' '
        "WHERE node_id = $1 AND seq = $2",
        node_id,
        seq,
    )
    edited = _verify(dsn, node_id)
    assert edited.returncode == 1 and f"entry {seq}: payload does not match" in edited.stdout
    _sql(
        dsn,
        "UPDATE audit_events SET payload = data::jsonb WHERE node_id = $1 AND seq = $2",
        node_id,
        seq,
    )
    assert _verify(dsn, node_id).returncode == 0
    # Cutting the tail below the copied signed head is found.
    _sql(dsn, "DELETE FROM audit_events WHERE node_id = $1 AND seq > $2", node_id, seq)
    cut = _verify(dsn, node_id)
    assert cut.returncode == 1 and "tail truncated" in cut.stdout, cut.stdout
    # Another node, never mirrored here: not "intact".
    stranger = node_id_from_public_key(bytes(SigningKey.generate().verify_key))
    unknown = _verify(dsn, stranger)
    assert unknown.returncode == 1 and f"no mirrored entries for {stranger}" in unknown.stdout
    node.stop()


def test_an_outage_of_10000_entries_is_mirrored_exactly_once_after_it(
    tmp_path: Path, schema: str, nodes: list[NodeProcess]
) -> None:
    with TcpProxy(POSTGRES_HOST, POSTGRES_PORT) as proxy:
        dsn = _dsn(schema)  # the test's own queries go straight to PostgreSQL
        node = _mirrored_node(tmp_path, dsn, nodes, calls=20, via=_dsn(schema, proxy.port))
        proxy.cut()
        wait_for(lambda: _bridge(node)["state"] == "down", timeout_s=30, what="bridge down")
        # Taken once the mirror is down: the node writes entries of its own (bridge state
        # changes, S3*) that the mirror may still have carried up to the cut.
        before = _mirrored(dsn, node.node_id)
        # The outage is pain on the algedonic channel (aggregated by S3).
        wait_for(lambda: _pain_total(node) >= 1, timeout_s=30, what="pain from the bridge")
        _drive_calls(node, lambda: _bridge(node)["lag"] >= OUTAGE_ENTRIES, limit=4 * OUTAGE_ENTRIES)
        during = _bridge(node)
        assert during["lag"] >= OUTAGE_ENTRIES and during["errors"] >= 1, during
        assert during["last_error"], during
        assert _mirrored(dsn, node.node_id) == before  # nothing reached PostgreSQL
        metrics = node.get("/metrics")[1].decode()
        assert 'vsmcp_bridge_connected{bridge="postgres"} 0.0' in metrics
        lag = re.search(r'^vsmcp_bridge_lag\{bridge="postgres"\} (\S+)$', metrics, re.MULTILINE)
        assert lag is not None and float(lag.group(1)) >= OUTAGE_ENTRIES

        proxy.restore()
        wait_for(lambda: _caught_up(node, dsn), timeout_s=120, what="mirror caught up again")
        assert _bridge(node)["state"] == "connected"

    # Every entry exactly once: as many rows as seqs, contiguous from 1 (the node may
    # write an entry of its own meanwhile: the mirror then has it too, still once).
    rows, distinct, low, high = _mirrored(dsn, node.node_id)
    assert rows == distinct == high >= before[3] + OUTAGE_ENTRIES and low == 1
    verified = _verify(dsn, node.node_id)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_bad_dsn_is_a_clear_error(tmp_path: Path, schema: str, nodes: list[NodeProcess]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(_config("mysql://root@127.0.0.1/test"))
    command = NodeProcess(tmp_path / "bad", "--no-mdns", "--config", str(config)).command()
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "bridges.postgres" in refused.stderr and "postgresql://" in refused.stderr
    assert "Traceback" not in refused.stderr

    # A well-formed DSN naming a database that does not exist: the node runs, the bridge
    # is down and says why.
    missing = f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/no_such_db_{schema}"
    node = _start(tmp_path, missing, nodes)
    wait_for(lambda: _bridge(node)["state"] == "down", timeout_s=30, what="bridge down")
    assert "does not exist" in _bridge(node)["last_error"]
    assert node.get("/api/status")[0] == 200

    cli = _verify(missing, node.node_id)
    assert cli.returncode == 2 and "cannot connect to PostgreSQL" in cli.stderr, cli.stderr
    assert "does not exist" in cli.stderr
    bad = run_cli("audit", "verify", "--postgres", "http://x", "--node", node.node_id)
    assert bad.returncode == 2 and "--postgres: dsn must be a postgresql://" in bad.stderr
    no_node = run_cli("audit", "verify", "--postgres", _dsn(schema))
    assert no_node.returncode == 2 and "--postgres needs --node" in no_node.stderr
    not_an_id = run_cli("audit", "verify", "--postgres", _dsn(schema), "--node", "mallory")
    assert not_an_id.returncode == 2 and "--node:" in not_an_id.stderr
    # Nothing mirrored for this node in this schema: said, and not "intact".
    empty = _sql(_dsn(schema), "SELECT to_regclass('audit_events')")[0][0]
    assert empty is None
    nothing = _verify(_dsn(schema), node.node_id)
    assert nothing.returncode == 2 and "no audit_events table" in nothing.stderr
