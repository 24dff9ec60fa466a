"""The mirror's tables in PostgreSQL, created by versioned migrations.

`MIGRATIONS[i]` brings the schema to version i + 1; `schema_migrations` records each
version applied. Many nodes share one database, so every mirrored row is keyed by the
node id, and migrating takes a transaction-scoped advisory lock: nodes starting together
apply each step once, one after the other.

`audit_events` is the seeds' table (event_type, user_id, capability_name, payload, zone,
timestamp, signature) plus what verifying the chain needs: the node, the entry's seq and
ts_ms, `data` (the canonical JSON text exactly as it was hashed: `payload` is jsonb, which
does not keep the text), `prev_hash` and `hash`. `signature` is the checkpoint signature
in hex ("" for entries a later checkpoint covers). `audit_heads` holds each node's signed
head as of the last time the mirror reached it, so a tail cut from the mirror is found.
"""

from __future__ import annotations

from typing import Any, Final

# Append only: never edit a step that has shipped.
MIGRATIONS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    (
        "audit mirror, policy notes, CRDT snapshots",
        (
            """CREATE TABLE audit_nodes (
                node_id text PRIMARY KEY,
                public_key bytea NOT NULL,
                node_name text NOT NULL DEFAULT '',
                first_mirrored_at timestamptz NOT NULL DEFAULT now()
            )""",
            """CREATE TABLE audit_events (
                id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                node_id text NOT NULL,
                seq bigint NOT NULL,
                ts_ms bigint NOT NULL,
                event_type varchar(256) NOT NULL,
                user_id varchar(256),
                capability_name text,
                payload jsonb,
                zone text,
                "timestamp" timestamptz NOT NULL,
                data text NOT NULL,
                prev_hash bytea NOT NULL,
                hash bytea NOT NULL,
                signature text NOT NULL,
                UNIQUE (node_id, seq)
            )""",
            'CREATE INDEX audit_events_type_ts ON audit_events (event_type, "timestamp")',
            """CREATE TABLE audit_heads (
                node_id text PRIMARY KEY,
                seq bigint NOT NULL,
                hash bytea NOT NULL,
                sig bytea NOT NULL,
                mirrored_at timestamptz NOT NULL DEFAULT now()
            )""",
            """CREATE TABLE policy_notes (
                id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                node_id text NOT NULL,
                audit_seq bigint NOT NULL,
                type varchar(50) NOT NULL,
                title varchar(200) NOT NULL,
                content text NOT NULL,
                generated_by varchar(50),
                wasm_agent bytea,
                auto_deployed boolean NOT NULL DEFAULT false,
                zone varchar(50),
                created_at timestamptz NOT NULL DEFAULT now(),
                UNIQUE (node_id, audit_seq)
            )""",
            """CREATE TABLE crdt_snapshots (
                id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                node_id text NOT NULL,
                snapshot_hash varchar(64) NOT NULL,
                data bytea NOT NULL,
                signature text NOT NULL,
                context_graph jsonb,
                created_at timestamptz NOT NULL DEFAULT now(),
                UNIQUE (node_id, snapshot_hash)
            )""",
        ),
    ),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)
# pg_advisory_xact_lock key: "vsmcp" in ASCII, so other users of the database can tell.
MIGRATION_LOCK: Final = 0x7673_6D63_70

_CREATE_MIGRATIONS = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


class SchemaTooNew(Exception):
    """The database was migrated by a newer vsmcp than this one."""


async def migrate(conn: Any) -> int:
    """Bring the schema to `SCHEMA_VERSION` (an asyncpg connection); return the version.

    Raises `SchemaTooNew` when the database is ahead of this code.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(_CREATE_MIGRATIONS)
        version = int(
            await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
        )
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"database schema is version {version}, this vsmcp knows {SCHEMA_VERSION}"
            )
        for number, (name, statements) in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in statements:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", number, name
            )
    return SCHEMA_VERSION
