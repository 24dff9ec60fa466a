"""The node: one service that composes identity, store, audit, envelope pipeline and HTTP.

Start order: identity → store → audit → replay guard → HTTP; stop runs in reverse, so
the HTTP server stops taking work before the audit log is flushed and the store closed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from mesh.envelope import Opener
from mesh.errors import MeshError
from mesh.replay import ReplayGuard
from node import __version__
from node.audit import AuditLog
from node.config import Config
from node.errors import NodeError, StartupError
from node.http import HttpServer
from node.metrics import NodeMetrics
from node.store import Store
from node.trust import NodeIdentity, ensure_data_dir, load_identity

log = logging.getLogger(__name__)

LOCK_FILE_NAME = "vsmcpd.lock"
RUNTIME_FILE_NAME = "runtime.json"
KV_REPLAY_GUARD = "replay_guard"
KV_CLEAN_SHUTDOWN = "clean_shutdown"
ENVELOPE_REJECT_REASONS = (
    "oversize",
    "malformed",
    "bad_version",
    "bad_signature",
    "stale",
    "future",
    "replay",
    "too_old",
    "recipient",
)


class Node:
    """A running vsmcp node. `async with Node(config) as node:` starts and stops it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = NodeMetrics()
        self._stack: contextlib.AsyncExitStack | None = None
        self._started_monotonic = 0.0
        self._identity: NodeIdentity | None = None
        self._audit: AuditLog | None = None
        self._store: Store | None = None
        self._opener: Opener | None = None
        self._http: HttpServer | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._stack is not None:
            return
        stack = contextlib.AsyncExitStack()
        try:
            await self._start_parts(stack)
        except BaseException as e:
            await stack.aclose()
            if isinstance(e, NodeError) and not isinstance(e, StartupError):
                # A damaged store or audit log: the operator must look before we go on.
                raise StartupError(str(e)) from e
            raise
        self._stack = stack

    async def _start_parts(self, stack: contextlib.AsyncExitStack) -> None:
        data_dir = self.config.data_dir
        ensure_data_dir(data_dir)
        stack.enter_context(_exclusive_lock(data_dir / LOCK_FILE_NAME))
        identity = load_identity(self.config)
        self._identity = identity
        store = await stack.enter_async_context(Store.open(data_dir))
        self._store = store
        audit_cfg = self.config.audit
        audit = AuditLog(
            store,
            sign=identity.key.sign_detached,
            public_key=identity.key.public_key,
            batch_size=audit_cfg.batch_size,
            queue_maxsize=audit_cfg.queue_size,
        )
        await stack.enter_async_context(audit)
        self._audit = audit
        stack.push_async_callback(self._audit_stop)
        guard = await self._restore_replay_guard(store)
        stack.push_async_callback(self._save_replay_guard, store, guard)
        self._opener = Opener(guard, max_size=self.config.envelope.max_bytes)
        self._register_metrics()
        http = HttpServer(self, self.config.http.host, self.config.http.port)
        await http.start()
        stack.push_async_callback(http.stop)
        self._http = http
        self._started_monotonic = time.monotonic()
        self.metrics.start_time.set(time.time())
        self.metrics.up.set(1)
        _write_runtime_file(data_dir / RUNTIME_FILE_NAME, self.runtime_info())
        stack.callback(_remove, data_dir / RUNTIME_FILE_NAME)
        await audit.append("node.start", identity.node_id, self.runtime_info())

    async def stop(self) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        self.metrics.up.set(0)
        await stack.aclose()
        log.info("node stopped")

    async def _audit_stop(self) -> None:
        if self._audit is not None and self._identity is not None:
            await self._audit.append("node.stop", self._identity.node_id, {})

    # -- replay guard persistence ------------------------------------------------------

    async def _restore_replay_guard(self, store: Store) -> ReplayGuard:
        env = self.config.envelope
        saved = await store.kv_get(KV_REPLAY_GUARD)
        clean = await store.kv_get(KV_CLEAN_SHUTDOWN) == b"1"
        await store.kv_delete(KV_CLEAN_SHUTDOWN)
        kwargs: dict[str, Any] = {
            "window": env.replay_window,
            "max_senders": env.replay_max_senders,
            "max_skew_ms": env.max_skew_s * 1000,
        }
        if saved is not None and clean:
            try:
                return ReplayGuard.restore(saved, **kwargs)
            except MeshError:
                log.warning("saved replay state unreadable; treating restart as a crash")
        return ReplayGuard.after_crash(saved, int(time.time() * 1000), **kwargs)

    async def _save_replay_guard(self, store: Store, guard: ReplayGuard) -> None:
        await store.kv_set(KV_REPLAY_GUARD, guard.dump())
        await store.kv_set(KV_CLEAN_SHUTDOWN, b"1")

    # -- views -------------------------------------------------------------------------

    @property
    def identity(self) -> NodeIdentity:
        if self._identity is None:
            raise StartupError("node not started")
        return self._identity

    @property
    def audit(self) -> AuditLog:
        if self._audit is None:
            raise StartupError("node not started")
        return self._audit

    @property
    def opener(self) -> Opener:
        if self._opener is None:
            raise StartupError("node not started")
        return self._opener

    @property
    def http_port(self) -> int | None:
        return self._http.port if self._http else None

    def runtime_info(self) -> dict[str, Any]:
        port = self.http_port
        return {
            "pid": os.getpid(),
            "node_id": self.identity.node_id,
            "http_port": port,
            "http_url": f"http://{self.config.http.host}:{port}" if port else None,
            "mesh_port": None,
            "version": __version__,
        }

    def status(self) -> dict[str, Any]:
        identity = self.identity
        return {
            "node_id": identity.node_id,
            "name": self.config.node.name or identity.node_id[-8:],
            "zone": identity.zone,
            "roles": list(identity.certificate.roles),
            "version": __version__,
            "uptime_s": round(time.monotonic() - self._started_monotonic, 3),
            "dev": identity.dev,
            "http_port": self.http_port,
            "mesh_port": None,
            "certificate_fingerprint": identity.fingerprint,
            "certificate_expires_at_s": identity.certificate.expires_at_s,
        }

    def healthy(self) -> bool:
        return self._stack is not None

    def render_metrics(self) -> bytes:
        return self.metrics.render()

    def _register_metrics(self) -> None:
        def accepted() -> dict[str, int]:
            return {"accepted": self.opener.accepted}

        self.metrics.add_counters(
            "vsmcp_envelopes",
            "Inbound envelopes by outcome",
            "outcome",
            accepted,
            known=("accepted",),
        )
        self.metrics.add_counters(
            "vsmcp_envelopes_rejected",
            "Inbound envelopes rejected, by reason",
            "reason",
            lambda: dict(self.opener.rejected),
            known=ENVELOPE_REJECT_REASONS,
        )


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Any:
    """One daemon per data dir: a second one would corrupt the replay and audit state."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StartupError(
                f"another vsmcpd is already running with data dir {path.parent}"
            ) from None
        yield
    finally:
        os.close(fd)


def _write_runtime_file(path: Path, info: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info) + "\n", encoding="utf-8")
    tmp.replace(path)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
