"""Audit log throughput: entries appended, signed and durably committed per second.

    python benchmarks/bench_audit.py [--quick]

Appends N entries (100,000; 20,000 with --quick) through `AuditLog` with a real PyNaCl
signer into a temp dir, flushes, and reports entries/s durable, then verifies the log.
For reference it also measures, in the same run, raw aiosqlite inserts of the same rows
with one `executemany` versus one `await execute` per row, and the bare signing rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import aiosqlite
from nacl.signing import SigningKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import cpu_model

from vsmcp.node.store.audit import AuditLog, verify_audit_log
from vsmcp.node.store.database import Store

TARGET_ENTRIES_PER_S = 20_000


async def bench_audit_log(n: int, data_dir: Path, key: SigningKey) -> float:
    def sign(message: bytes) -> bytes:
        return key.sign(message).signature

    async with Store.open(data_dir) as store, AuditLog(store, sign, bytes(key.verify_key)) as audit:
        start = time.perf_counter()
        for i in range(n):
            await audit.append(
                "tool.call", "node-7f3a", {"i": i, "tool": "fs.read", "ok": True, "ms": 12}
            )
        await audit.flush()
        elapsed = time.perf_counter() - start
    return n / elapsed


async def bench_raw_inserts(n: int, db: Path) -> tuple[float, float]:
    row = (0, 1_700_000_000_000, "tool.call", "node-7f3a", '{"i":0}', b"\0" * 32, b"\1" * 32)
    rows = [(i, *row[1:], b"\2" * 64) for i in range(1, n + 1)]
    async with aiosqlite.connect(db, isolation_level=None) as conn:
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=FULL")
        await conn.execute(
            "CREATE TABLE t (seq INTEGER PRIMARY KEY, ts_ms INTEGER, kind TEXT, actor TEXT, "
            "data TEXT, prev_hash BLOB, hash BLOB, sig BLOB)"
        )
        insert = "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?)"

        start = time.perf_counter()
        await conn.execute("BEGIN")
        await conn.executemany(insert, rows)
        await conn.execute("COMMIT")
        many = n / (time.perf_counter() - start)

        await conn.execute("DELETE FROM t")
        start = time.perf_counter()
        await conn.execute("BEGIN")
        for r in rows:
            await conn.execute(insert, r)
        await conn.execute("COMMIT")
        per_row = n / (time.perf_counter() - start)
    return many, per_row


def bench_sign(n: int, key: SigningKey) -> float:
    message = b"\x42" * 32
    start = time.perf_counter()
    for _ in range(n):
        key.sign(message)
    return (time.perf_counter() - start) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 entries instead of 100,000")
    args = parser.parse_args()
    n = 20_000 if args.quick else 100_000
    key = SigningKey.generate()

    print(f"machine: nproc={os.cpu_count()}, CPU {cpu_model()}, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        rate = asyncio.run(bench_audit_log(n, Path(tmp) / "node", key))
        print(f"AuditLog: {n} entries appended+signed+committed (durable): {rate:,.0f} entries/s")
        start = time.perf_counter()
        result = verify_audit_log(Path(tmp) / "node" / "vsmcp.db", bytes(key.verify_key))
        verify_rate = result.entries / (time.perf_counter() - start)
        print(f"verify_audit_log: ok={result.ok} entries={result.entries}: {verify_rate:,.0f}/s")
        many, per_row = asyncio.run(bench_raw_inserts(n, Path(tmp) / "raw.db"))
        print(f"raw aiosqlite executemany: {many:,.0f} rows/s")
        print(f"raw aiosqlite one await per row: {per_row:,.0f} rows/s")
    print(f"PyNaCl sign (32-byte message): {bench_sign(10_000, key):.1f} us each")
    verdict = "meets" if rate >= TARGET_ENTRIES_PER_S else "MISSES"
    print(f"target {TARGET_ENTRIES_PER_S:,} entries/s: {verdict}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
