"""PostgreSQL audit mirror: rows/s into PostgreSQL, catch-up time for a backlog, and
the mirror while the log grows.

    python benchmarks/bench_pg_mirror.py [--quick] [--dsn postgresql://postgres@127.0.0.1:5432/test]

Writes N audit entries (100,000; 20,000 with --quick) through a real `AuditLog` into a
temp data dir, then starts the real `PostgresBridge` on them against a fresh schema of
the local PostgreSQL (dropped at the end) and times the catch-up from 0 (the backlog an
outage leaves). Then appends another N/2 entries while the bridge runs and reports how
long after the last append the mirror held them all. Finally verifies the mirror
(`verify_mirror`, what `vsmcp audit verify --postgres` runs) and reports its rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
from nacl.signing import SigningKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import machine

from vsmcp.mesh.identity import node_id_from_public_key
from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.bridges.model import BridgeContext
from vsmcp.node.bridges.postgres import PostgresBridge, application_name
from vsmcp.node.bridges.postgres_config import PostgresSection
from vsmcp.node.bridges.postgres_verify import verify_mirror
from vsmcp.node.metrics import NodeMetrics
from vsmcp.node.store.audit import AuditLog
from vsmcp.node.store.database import Store
from vsmcp.node.vsm.stream import EventStream

TARGET_ROWS_PER_S = 20_000
POLL_S = 0.01
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def _entry(i: int) -> dict[str, Any]:
    # What a tool.call entry holds (node/routing/catalog.py).
    return {
        "tool": "fs.read",
        "provider": "12D3KooWQ9n2wVbJd8fXq",
        "attempts": 1,
        "origin": "127.0.0.1",
        "zone": "ops",
        "trace_id": f"{i:032x}",
        "causality": [],
        "outcome": "ok",
        "latency_ms": 1.25,
    }


async def _append(audit: AuditLog, start: int, n: int) -> None:
    for i in range(start, start + n):
        await audit.append("tool.call", "node-7f3a", _entry(i))
    await audit.flush()


async def _caught_up(bridge: PostgresBridge, audit: AuditLog, timeout_s: float) -> float:
    """Wait until the mirror holds every committed entry; return when (perf_counter)."""
    deadline = time.perf_counter() + timeout_s
    while True:
        status = bridge.status()
        if status.connected and status.lag == 0 and audit.head_seq > 0:
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"mirror not caught up after {timeout_s} s: {status}")
        await asyncio.sleep(POLL_S)


def _cpu_s(pid: int) -> float:
    """utime + stime of a process (PostgreSQL's backend runs on this machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def _backend_pid(admin: Any, node_id: str) -> int:
    while True:
        pid = await admin.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            application_name(node_id),
        )
        if pid is not None:
            return int(pid)
        await asyncio.sleep(POLL_S)


async def run(n: int, server: str, batch_rows: int) -> bool:
    key = SigningKey.generate()
    public_key = bytes(key.verify_key)
    node_id = node_id_from_public_key(public_key)
    schema = f"vsmcp_bench_{secrets.token_hex(4)}"
    dsn = f"{server}?search_path={schema}"
    try:
        admin = await asyncpg.connect(server, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as e:
        raise SystemExit(f"bench_pg_mirror: PostgreSQL is not reachable at {server}: {e}") from e
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data_dir = Path(tmp)
            async with (
                Store.open(data_dir) as store,
                AuditLog(store, lambda m: key.sign(m).signature, public_key) as audit,
            ):
                await _append(audit, 0, n)
                context = BridgeContext(
                    node_id=node_id,
                    node_name="bench",
                    data_dir=data_dir,
                    zones=("public", "ops", "restricted"),
                    events=EventStream(),
                    loops=LoopSupervisor(),
                    metrics=NodeMetrics(),
                    tools=None,
                    state=None,
                    store=store,
                    audit_log=audit,
                    audit=lambda kind, data: None,
                    pain=lambda source, intensity, reason: None,
                )
                section = msgspec.convert(
                    {"dsn": dsn, "batch_rows": batch_rows, "interval_s": POLL_S}, PostgresSection
                )
                started = time.perf_counter()
                cpu_started = time.process_time()
                async with PostgresBridge(section, context) as bridge:
                    backend = await _backend_pid(admin, node_id)
                    backend_cpu = _cpu_s(backend)
                    done = await _caught_up(bridge, audit, timeout_s=600)
                    catch_up = done - started
                    ours = time.process_time() - cpu_started
                    theirs = _cpu_s(backend) - backend_cpu
                    print(
                        f"catch-up of {n:,} entries (connect, migrate, copy): {catch_up:.2f} s "
                        f"= {n / catch_up:,.0f} rows/s (batch_rows {batch_rows:,})"
                    )
                    print(
                        f"  CPU per row: {ours / n * 1e6:.1f} us in the node, "
                        f"{theirs / n * 1e6:.1f} us in PostgreSQL's backend (from after its "
                        f"connect) = {n / (ours + theirs):,.0f} rows per CPU-second"
                    )
                    live = n // 2
                    t0 = time.perf_counter()
                    await _append(audit, n, live)
                    appended = time.perf_counter()
                    done = await _caught_up(bridge, audit, timeout_s=600)
                    print(
                        f"live: {live:,} entries appended in {appended - t0:.2f} s "
                        f"({live / (appended - t0):,.0f}/s); mirror complete "
                        f"{(done - appended) * 1000:.0f} ms after the last append"
                    )
        conn = await asyncpg.connect(dsn)
        try:
            start = time.perf_counter()
            result = await verify_mirror(conn, node_id, public_key)
            elapsed = time.perf_counter() - start
        finally:
            await conn.close()
        print(
            f"verify_mirror: ok={result.ok} entries={result.entries:,}: "
            f"{result.entries / elapsed:,.0f} rows/s"
        )
        rate = n / catch_up
        verdict = "meets" if rate >= TARGET_ROWS_PER_S else "MISSES"
        print(f"target {TARGET_ROWS_PER_S:,} rows/s: {verdict}")
        return result.ok and result.entries == n + live
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 entries, not 100,000")
    parser.add_argument("--dsn", default=DEFAULT_DSN, help=f"PostgreSQL (default {DEFAULT_DSN})")
    parser.add_argument("--batch-rows", type=int, default=5_000)
    args = parser.parse_args()
    n = 20_000 if args.quick else 100_000
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {machine('PostgreSQL on loopback', f'load average {load} (shared)')}")
    ok = asyncio.run(run(n, args.dsn, args.batch_rows))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
