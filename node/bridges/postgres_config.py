"""`[bridges.postgres]`: the audit mirror into a shared PostgreSQL database."""

from __future__ import annotations

from typing import Annotated, Final
from urllib.parse import urlsplit

import msgspec

from vsmcp.node.tools.config import doc

DSN_SCHEMES: Final = frozenset({"postgresql", "postgres"})
MAX_BATCH_ROWS: Final = 50_000


def check_dsn(dsn: str) -> str:
    """`dsn` when it is a PostgreSQL URL; else ValueError saying what is wrong (without
    echoing a password)."""
    try:
        parts = urlsplit(dsn)
        port = parts.port  # parses it: a bad port raises here
    except ValueError:
        # Not urlsplit's message: it may quote a piece of the password (`as 'pa'`).
        raise ValueError(
            "dsn is not a URL (a bad port, or a password holding an unencoded '/', '#' or "
            "'?': percent-encode it)"
        ) from None
    if parts.scheme not in DSN_SCHEMES:
        raise ValueError(
            f"dsn must be a postgresql://user@host:port/database URL, not scheme "
            f"{parts.scheme or '(none)'!r}"
        )
    if not parts.hostname and "host=" not in parts.query:
        raise ValueError("dsn names no host (postgresql://user@host:port/database)")
    if port == 0:
        raise ValueError("dsn port must be 1..65535")
    return dsn


class PostgresSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    dsn: Annotated[
        str,
        doc(
            "postgresql://user[:password]@host:port/database the audit log, policy notes "
            "and CRDT snapshots are mirrored into (docs/bridges.md)"
        ),
    ]
    batch_rows: Annotated[
        int,
        msgspec.Meta(ge=1, le=MAX_BATCH_ROWS),
        doc("audit entries copied per PostgreSQL transaction, at most"),
    ] = 5_000
    interval_s: Annotated[
        float,
        msgspec.Meta(gt=0, le=3600),
        doc("s between mirror passes once caught up (new entries wait at most this long)"),
    ] = 0.5
    retry_s: Annotated[
        float,
        msgspec.Meta(gt=0, le=3600),
        doc("s between reconnection attempts while PostgreSQL is unreachable"),
    ] = 2.0
    connect_timeout_s: Annotated[
        float,
        msgspec.Meta(gt=0, le=600),
        doc("s a connection attempt (or one statement) may take before it counts as down"),
    ] = 10.0
    snapshot_interval_s: Annotated[
        float,
        msgspec.Meta(ge=0, le=86_400),
        doc("s between copies of the node's latest signed CRDT snapshot (0: never)"),
    ] = 60.0

    def __post_init__(self) -> None:
        check_dsn(self.dsn)
