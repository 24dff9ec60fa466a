"""The child VSMs of one node: spawn (guarded, certified), supervise, list, stop.

Each child is a `ChildProcess` unit of a `Supervisor` of its own (restart with backoff,
quarantine of a crash loop, exactly as S1 units), in `<data_dir>/children/<name>` with
its own key, and a certificate this node delegates to it at every start: zone at or
below ours, depth + 1, roles ours, expiry within ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from vsmcp.mesh.certs import (
    Certificate,
    SignedCertificate,
    ZoneOrder,
    certificate_to_pem,
    issue_certificate,
    peek_certificate,
)
from vsmcp.mesh.errors import CertificateError, MeshError
from vsmcp.mesh.identity import NodeKey, load_or_create_key_file
from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.children.config import CHILD_NAME, ChildEntry, RecursionSection
from vsmcp.node.children.errors import ChildError, SpawnRefused, UnknownChild
from vsmcp.node.children.stale import clean_up_stale
from vsmcp.node.tools.supervisor import Supervisor, UnitPolicy
from vsmcp.node.vsm.events import ChildSpawnRefused, EventSink

if TYPE_CHECKING:
    from vsmcp.node.children.process import ChildProcess

log = logging.getLogger(__name__)

CHILDREN_DIR_NAME: Final = "children"
KEY_FILE_NAME: Final = "node.key"
CERT_FILE_NAME: Final = "node.cert"
# Short-lived (`recursion.child_certificate_s`, never past our own expiry): issued at
# every (re)start of the child and renewed at half its lifetime while it runs; the child
# takes the new file without a restart (`node/app/cert_reload.py`).
RENEW_AT_FRACTION: Final = 0.5
RENEW_CHECK_MAX_S: Final = 60.0
RENEW_CHECK_MIN_S: Final = 0.5
RENEWAL_LOOP: Final = "children-cert-renewal"
# As S1 units, with a stop that fits SIGTERM + grace + SIGKILL (process.STOP_GRACE_S).
CHILD_POLICY: Final = UnitPolicy(
    backoff_initial_s=0.5,
    backoff_max_s=30.0,
    crash_loop_failures=3,
    crash_loop_window_s=60.0,
    quarantine_s=60.0,
    stop_timeout_s=3.0,
)

AuditSink = Callable[[str, dict[str, Any]], None]
ToolsOf = Callable[[str], list[str]]


@dataclass(frozen=True, slots=True)
class ParentTrust:
    """What this node needs to certify its children."""

    key: NodeKey
    signed_certificate: SignedCertificate
    certificate: Certificate
    zones: ZoneOrder
    authority_public_key: bytes


@dataclass(frozen=True, slots=True)
class ChildSpec:
    name: str
    zone: str
    config: Path | None


class ChildManager:
    """Async context manager: ends children of a previous life at start, stops all
    children (in parallel) at stop."""

    def __init__(
        self,
        *,
        data_dir: Path,
        trust: ParentTrust,
        limits: RecursionSection,
        seed: Callable[[], str],
        mesh_preset: str,
        mesh_name: str,
        events: EventSink,
        audit: AuditSink,
        tools_of: ToolsOf,
        configured: Sequence[ChildEntry] = (),
        capacity: Callable[[], float] = lambda: 1.0,
        loops: LoopSupervisor | None = None,
    ) -> None:
        self.root = data_dir / CHILDREN_DIR_NAME
        self._trust = trust
        self._limits = limits
        self._seed = seed
        self._mesh_preset = mesh_preset
        self._mesh_name = mesh_name
        self._events = events
        self._audit = audit
        self._tools_of = tools_of
        self._supervisor = Supervisor()
        self._supervisor.events = events
        self._children: dict[str, ChildProcess] = {}
        self._configured = tuple(configured)
        # < 1 while the node is short of capacity (System 5 tightening, System 3's bound).
        self._capacity = capacity
        self._zones: dict[str, str] = {}  # child -> the zone it is certified in
        # child -> when its certificate is due for renewal (monotonic): RENEW_AT_FRACTION
        # of the lifetime it was issued with (clamped to our own certificate's expiry)
        self._renew_at: dict[str, float] = {}
        self._loops = loops or LoopSupervisor()
        self._renewal: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return self._trust.certificate.depth

    async def __aenter__(self) -> ChildManager:
        killed = clean_up_stale(self.root)
        if killed:
            self._audit("child.stale_killed", {"pids": killed})
        await self._supervisor.start()
        # Supervised: a failure it did not expect restarts it (renewals must not stop).
        self._renewal = self._loops.spawn(RENEWAL_LOOP, self._renew)
        for entry in self._configured:
            # A refusal is logged, published and audited; the node runs on without it.
            with contextlib.suppress(SpawnRefused):
                self.spawn(entry.name, zone=entry.zone, config=entry.config, caller="config")
        return self

    async def __aexit__(self, *exc: object) -> None:
        renewal, self._renewal = self._renewal, None
        if renewal is not None:
            renewal.cancel()
            await asyncio.gather(renewal, return_exceptions=True)
        await self._supervisor.stop()

    # -- spawn and stop -----------------------------------------------------------------

    def spawn(
        self, name: str, *, zone: str = "", config: str = "", caller: str = ""
    ) -> dict[str, Any]:
        """Start a child (it is then supervised); its view. Raises `SpawnRefused`."""
        try:
            spec = self._check(name, zone, config)
        except SpawnRefused as e:
            self._refused(name, str(e), caller)
            raise
        # Imported by the first spawn: a node that starts no child never loads it.
        from vsmcp.node.children.process import ChildLaunch, ChildProcess

        data_dir = self.root / spec.name
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        launch = ChildLaunch(spec.name, data_dir, spec.config, self._seed(), self._child_env())
        child = ChildProcess(launch, lambda: self._certify(data_dir, spec.zone))
        self._children[spec.name] = child
        self._zones[spec.name] = spec.zone
        self._supervisor.add(child, CHILD_POLICY)
        self._audit(
            "child.spawn",
            {"name": spec.name, "zone": spec.zone, "depth": self.depth + 1, "caller": caller},
        )
        return self._view(spec.name, child)

    async def stop_child(self, name: str, *, caller: str = "", remove_data: bool = False) -> None:
        """Stop the child; `remove_data`: delete its data dir too (a child that will not
        come back, e.g. System 3's scale children)."""
        if name not in self._children:
            raise UnknownChild(f"no child named {name!r}")
        child = self._children[name]
        await self._supervisor.remove(child.name)
        if remove_data:
            shutil.rmtree(child.launch.data_dir, ignore_errors=True)
        del self._children[name]
        self._zones.pop(name, None)
        self._renew_at.pop(name, None)
        self._audit("child.stop", {"name": name, "caller": caller})

    def _check(self, name: str, zone: str, config: str) -> ChildSpec:
        if not isinstance(name, str) or not CHILD_NAME.fullmatch(name):
            raise SpawnRefused(
                f"bad child name {name!r}: letters, digits, - and _ (at most 63); the "
                f"child's data dir is always {self.root}/<name>"
            )
        if name in self._children:
            raise SpawnRefused(f"a child named {name!r} already runs")
        own_zone = self._trust.certificate.zone
        zone = zone or own_zone
        if zone not in self._trust.zones:
            raise SpawnRefused(f"unknown zone {zone!r} (trust.zones: {self._trust.zones.zones})")
        if self._trust.zones.rank(zone) > self._trust.zones.rank(own_zone):
            raise SpawnRefused(f"zone {zone!r} is above this node's zone {own_zone!r}")
        path = Path(config).expanduser() if config else None
        if path is not None and not path.is_file():
            raise SpawnRefused(f"child config {config!r} is not a file")
        from vsmcp.node.children.guard import check_spawn  # with the first spawn asked

        check_spawn(self.depth, self._limits, len(self._children), self._capacity())
        return ChildSpec(name, zone, path)

    def _refused(self, name: str, reason: str, caller: str) -> None:
        log.warning("spawn of child %r refused: %s", name, reason)
        self._events.publish(
            ChildSpawnRefused(ts=time.time(), child=str(name)[:64], reason=reason, caller=caller)
        )
        self._audit("child.refused", {"name": str(name)[:64], "reason": reason, "caller": caller})

    def _certify(self, data_dir: Path, zone: str) -> None:
        """Issue (or renew) the child's delegated certificate, before each start."""
        key, _ = load_or_create_key_file(data_dir / KEY_FILE_NAME)
        trust = self._trust
        try:
            signed = issue_certificate(
                trust.key,
                key.public_key,
                zone,
                trust.certificate.roles,
                self._limits.child_certificate_s,
                parent=trust.signed_certificate,
                zones=trust.zones,
            )
        except CertificateError as e:
            raise ChildError(f"cannot certify child {data_dir.name}: {e}") from e
        # Whole or not at all: a running child may read it at any moment.
        path = data_dir / CERT_FILE_NAME
        partial = path.with_suffix(".cert.new")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(certificate_to_pem(signed))
        os.replace(partial, path)
        cert = peek_certificate(signed)
        lifetime_s = cert.expires_at_s - cert.issued_at_s
        self._renew_at[data_dir.name] = time.monotonic() + lifetime_s * RENEW_AT_FRACTION

    async def _renew(self) -> None:
        """Renew each running child's certificate at `RENEW_AT_FRACTION` of the lifetime
        it was issued with."""
        while True:
            await asyncio.sleep(self._next_check_s())
            now = time.monotonic()
            for name, child in list(self._children.items()):
                due = self._renew_at.get(name)
                if child.pid is not None and due is not None and now >= due:
                    self._recertify(name, child)

    def _next_check_s(self) -> float:
        """Until the next renewal is due (a child that starts meanwhile is certified as it
        starts, with a lifetime of at least what the checks below allow for)."""
        fallback = self._limits.child_certificate_s * RENEW_AT_FRACTION / 2
        running = (
            self._renew_at[name]
            for name, child in self._children.items()
            if child.pid is not None and name in self._renew_at
        )
        due = min(running, default=time.monotonic() + fallback)
        wait = min(due - time.monotonic(), fallback, RENEW_CHECK_MAX_S)
        return max(RENEW_CHECK_MIN_S, wait)

    def _recertify(self, name: str, child: ChildProcess) -> None:
        try:
            self._certify(child.launch.data_dir, self._zones[name])
        except (ChildError, MeshError, OSError) as e:
            log.error("could not renew the certificate of child %s: %s", name, e)

    def renew_trust(self, trust: ParentTrust) -> None:
        """Our own certificate was renewed: delegate from the new one, and re-certify the
        running children at once (theirs expire no later than our previous one)."""
        self._trust = trust
        for name, child in list(self._children.items()):
            if child.pid is not None:
                self._recertify(name, child)

    def _child_env(self) -> dict[str, str]:
        """What the parent imposes on the child's config (`VSMCP_*` beats its file)."""
        from vsmcp.node.children.guard import child_limits  # with the first spawn

        limits = child_limits(self._limits)
        zones = ", ".join(f'"{z}"' for z in self._trust.zones.zones)
        return {
            "VSMCP_NODE_DEV": "false",
            "VSMCP_TRUST_AUTHORITY_PUBLIC_KEY": self._trust.authority_public_key.hex(),
            "VSMCP_TRUST_CERTIFICATE_FILE": "",
            "VSMCP_TRUST_ZONES": f"[{zones}]",
            "VSMCP_MESH_HOST": "127.0.0.1",
            "VSMCP_MESH_PRESET": self._mesh_preset,
            "VSMCP_MESH_NAME": json.dumps(self._mesh_name),  # a TOML string, whatever it reads
            "VSMCP_RECURSION_MAX_DEPTH": str(limits.max_depth),
            "VSMCP_RECURSION_MAX_CHILDREN": str(limits.max_children),
            "VSMCP_RECURSION_MAX_DESCENDANTS": str(limits.max_descendants),
            "VSMCP_RECURSION_SPAWN_ZONE": limits.spawn_zone,
            "VSMCP_RECURSION_CHILD_CERTIFICATE_S": str(limits.child_certificate_s),
        }

    # -- views --------------------------------------------------------------------------

    def view(self) -> list[dict[str, Any]]:
        """`GET /api/children`, `vsmcp children`."""
        return [self._view(name, child) for name, child in sorted(self._children.items())]

    def _view(self, name: str, child: ChildProcess) -> dict[str, Any]:
        unit = self._supervisor.units.get(child.name)
        runtime = child.runtime or {}
        node_id = runtime.get("node_id")
        return {
            "name": name,
            "node_id": node_id,
            "pid": child.pid,
            "state": unit.state.value if unit is not None else "stopped",
            "depth": self.depth + 1,
            "restarts": unit.restarts if unit is not None else 0,
            "url": runtime.get("http_url"),
            "data_dir": str(child.launch.data_dir),
            "tools": self._tools_of(node_id) if isinstance(node_id, str) else [],
            "last_error": unit.last_error if unit is not None else None,
        }
