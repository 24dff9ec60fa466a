"""Replicated state in the node: the capability registry, policies and context graph,
synced over the mesh as signed SYNC envelopes.

- Local updates are pushed to every alive peer as they happen (batched by a pusher
  task); every `ANTI_ENTROPY_INTERVAL_S` we exchange state vectors with one random
  peer, and at once with every newly admitted one, so cut links heal by themselves.
- This node announces each tool of its running units, signed by its key, and
  re-announces before the entries expire; on graceful stop it retires them (signed
  tombstones), so they leave every registry instead of waiting for expiry.
- A signed snapshot (SHA-256 addressed) is kept in the store and restored at start, so
  a restarted node knows the registry before its peers reconnect.
- Liveness never enters these documents: whether a provider is alive comes from
  membership at read time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vsmcp.crdt.errors import CrdtError, InvalidValue, ValueOutOfRange
from vsmcp.crdt.policies import (
    DEFAULT_MAX_PER_ISSUER,
    AllowedIssuers,
    Policy,
    _no_other_issuers,
)
from vsmcp.crdt.registry import CapabilityEntry
from vsmcp.crdt.replica import Change
from vsmcp.crdt.state import ReplicatedState, snapshot_id
from vsmcp.mesh.envelope import Envelope, MsgType, wall_clock_ms
from vsmcp.mesh.identity import NodeKey, node_id_from_public_key
from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.mesh.service import Service
from vsmcp.mesh.transport import Priority
from vsmcp.node.peers.service import MeshService, Peer
from vsmcp.node.store.database import Store
from vsmcp.node.tools.model import ToolSpec
from vsmcp.node.vsm.events import EventSink, PolicyChanged, RegistryChanged

log = logging.getLogger(__name__)

ANTI_ENTROPY_INTERVAL_S = 2.0
NEW_PEER_CHECK_INTERVAL_S = 0.25
UPKEEP_INTERVAL_S = 5.0
SNAPSHOT_INTERVAL_S = 30.0
ANNOUNCE_TTL_MS = 60 * 60 * 1000
REANNOUNCE_AFTER_MS = ANNOUNCE_TTL_MS // 3
COMPACT_THRESHOLD_BYTES = 256 * 1024
# A sync message must fit in one envelope, with room for the envelope's own fields.
ENVELOPE_OVERHEAD_BYTES = 4096
KV_SNAPSHOT = "crdt_snapshot"


@dataclass(frozen=True)
class RemoteTool:
    """A registry entry as routing sees it: which node offers which tool."""

    name: str
    provider: str
    zone: str
    description: str
    input_schema: dict[str, Any]
    version: int
    # MCP `title`, `annotations`, `outputSchema`, `execution` (those it has).
    metadata: dict[str, Any] = field(default_factory=dict)


class ReplicationService(Service):
    """Owns the replicated documents and their sync over the mesh. Async context manager."""

    def __init__(
        self,
        *,
        key: NodeKey,
        authority_public_key: bytes,
        mesh: MeshService,
        store: Store,
        local_tools: Callable[[], list[ToolSpec]],
        max_envelope_bytes: int,
        loops: LoopSupervisor | None = None,
        events: EventSink | None = None,
        allowed_issuers: AllowedIssuers | None = None,
        max_policies_per_issuer: int = DEFAULT_MAX_PER_ISSUER,
    ) -> None:
        self._loops = loops or LoopSupervisor()
        self._events = events
        self._key = key
        self._mesh = mesh
        self._store = store
        self._local_tools = local_tools
        self.state = ReplicatedState(
            replica_id=key.public_key,
            authority_keys=[authority_public_key],
            compact_threshold_bytes=COMPACT_THRESHOLD_BYTES,
            max_message_bytes=max_envelope_bytes - ENVELOPE_OVERHEAD_BYTES,
            # Which non-authority keys may issue which policy kinds (the immune system's).
            allowed_issuers=allowed_issuers or _no_other_issuers,
            max_policies_per_issuer=max_policies_per_issuer,
        )
        self.stats: Counter[str] = Counter()
        if events is not None:
            self.state.registry.on_change(self._registry_changed)
            self.state.policies.on_change(self._policies_changed)
        self._push_wanted = asyncio.Event()
        # A policy written here (an immune block, a revocation) goes out at once, not
        # with the next announcement or received sync.
        self.state.policies.on_update(lambda _update: self._push_now())
        self._synced_peers: set[str] = set()
        # name -> (zone, description, schema, metadata)
        self._announced: dict[str, tuple[str, str, str, str]] = {}
        self._announced_at_ms = 0
        self._last_snapshot_id: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._stopped = False
        self._restored = False

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self.restore_snapshot()
        self._mesh.handle_oneway(MsgType.SYNC, self._on_sync)
        self.announce_local_tools()
        for run, name in (
            (self._push_loop, "replication-push"),
            (self._anti_entropy_loop, "replication-anti-entropy"),
            (self._upkeep_loop, "replication-upkeep"),
        ):
            task = self._loops.spawn(name, run)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        if not self._started or self._stopped:
            return
        self._stopped = True
        # Graceful leave: retire our entries, so peers drop them now, not at expiry.
        with contextlib.suppress(CrdtError):
            self.state.registry.retire(self._key.public_key, by=self._key)
        self._flush()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.save_snapshot()

    # -- events --------------------------------------------------------------------------

    def _registry_changed(self, change: Change[CapabilityEntry]) -> None:
        assert self._events is not None
        now = time.time()
        publish = self._events.publish
        for entries, what in ((change.added, "added"), (change.changed, "updated")):
            for entry in entries:
                provider = node_id_from_public_key(entry.provider)
                publish(RegistryChanged(ts=now, tool=entry.name, provider=provider, change=what))
        for entry in change.removed:
            provider = node_id_from_public_key(entry.provider)
            publish(RegistryChanged(ts=now, tool=entry.name, provider=provider, change="removed"))

    def _policies_changed(self, change: Change[Policy]) -> None:
        assert self._events is not None
        now = time.time()
        publish = self._events.publish
        for policies, what in (
            (change.added, "added"),
            (change.changed, "updated"),
            (change.removed, "removed"),
        ):
            for policy in policies:
                publish(
                    PolicyChanged(
                        ts=now,
                        policy=policy.id,
                        change=what,
                        origin=node_id_from_public_key(policy.issuer),
                    )
                )

    # -- views ---------------------------------------------------------------------------

    def tools(self) -> list[RemoteTool]:
        return [_remote_tool(entry) for entry in self.state.registry.view()]

    def providers(self, name: str) -> list[RemoteTool]:
        return [t for t in self.tools() if t.name == name]

    # -- announcing ----------------------------------------------------------------------

    def announce_local_tools(self) -> None:
        """Announce new or changed local tools; retire the ones that went away."""
        current = {spec.name: spec for spec in self._local_tools()}
        now_ms = wall_clock_ms()
        refresh = now_ms - self._announced_at_ms >= REANNOUNCE_AFTER_MS
        registry = self.state.registry
        for name, spec in current.items():
            metadata = spec.metadata()
            schema, metadata_text = _json_text(spec.input_schema), _json_text(metadata)
            signature = (spec.zone, spec.description, schema, metadata_text)
            if not refresh and self._announced.get(name) == signature:
                continue
            try:
                try:
                    self._announce(spec, metadata)
                except (InvalidValue, ValueOutOfRange) as e:
                    # Too large, or a value the registry cannot hold (an outputSchema's
                    # `maximum` of 2**64, nesting too deep): the tool goes without it.
                    if not metadata:
                        raise
                    self.stats["metadata_dropped"] += 1
                    log.warning("tool %s announced without its metadata: %s", name, e)
                    self._announce(spec, {})
            except CrdtError as e:
                self.stats["announce_failed"] += 1
                log.warning("cannot announce tool %s: %s", name, e)
                continue
            self._announced[name] = signature
        gone = [name for name in self._announced if name not in current]
        if gone:
            registry.retire(self._key.public_key, by=self._key, names=gone)
            for name in gone:
                del self._announced[name]
        if refresh:
            self._announced_at_ms = now_ms
        self._push_now()

    def _announce(self, spec: ToolSpec, metadata: dict[str, Any]) -> None:
        self.state.registry.announce(
            self._key,
            spec.name,
            zone=spec.zone,
            description=spec.description,
            input_schema=dict(spec.input_schema),
            ttl_ms=ANNOUNCE_TTL_MS,
            metadata=metadata,
        )

    # -- sync ----------------------------------------------------------------------------

    def _on_sync(self, peer: Peer, envelope: Envelope) -> None:
        try:
            replies = self.state.handle(peer.public_key, envelope.payload)
        except CrdtError as e:
            self.stats[f"rejected_{e.reason}"] += 1
            log.debug("sync message from %s rejected: %s", peer.node_id, e)
            return
        self.stats["received"] += 1
        for reply in replies:
            self._send(peer.node_id, reply)
        # Applying an update can queue local writes (a repaired entry): push them too.
        self._push_now()

    def _send(self, node_id: str, message: bytes) -> None:
        if self._mesh.send(node_id, MsgType.SYNC, message, priority=Priority.BULK):
            self.stats["sent"] += 1
        else:
            self.stats["send_dropped"] += 1

    def _push_now(self) -> None:
        self._push_wanted.set()

    async def _push_loop(self) -> None:
        while True:
            await self._push_wanted.wait()
            self._push_wanted.clear()
            self._flush()

    def _flush(self) -> None:
        """Send queued local updates to every alive peer (the transport queues them)."""
        messages = self.state.outgoing()
        if not messages:
            return
        for node_id in self._mesh.alive_peers():
            for message in messages:
                self._send(node_id, message)

    async def _anti_entropy_loop(self) -> None:
        since_random = 0.0
        while True:
            await asyncio.sleep(NEW_PEER_CHECK_INTERVAL_S)
            since_random += NEW_PEER_CHECK_INTERVAL_S
            alive = self._mesh.alive_peers()
            fresh = [p for p in alive if p not in self._synced_peers]
            targets = fresh
            if since_random >= ANTI_ENTROPY_INTERVAL_S and alive:
                since_random = 0.0
                targets = [*fresh, random.choice(alive)]
                self.stats["anti_entropy_rounds"] += 1
            # Forget peers that left, so they are synced afresh when they come back.
            self._synced_peers.intersection_update(alive)
            for node_id in targets:
                self._synced_peers.add(node_id)
                for message in self.state.make_sync_request():
                    self._send(node_id, message)

    async def _upkeep_loop(self) -> None:
        since_snapshot = 0.0
        while True:
            await asyncio.sleep(UPKEEP_INTERVAL_S)
            compacted = self.state.tick()
            if compacted:
                log.info("compacted %s", ", ".join(compacted))
            self.announce_local_tools()
            since_snapshot += UPKEEP_INTERVAL_S
            if since_snapshot >= SNAPSHOT_INTERVAL_S:
                since_snapshot = 0.0
                await self.save_snapshot()

    # -- snapshots -----------------------------------------------------------------------

    async def save_snapshot(self) -> str:
        snapshot = self.state.snapshot(self._key)
        ident = snapshot_id(snapshot)
        if ident != self._last_snapshot_id:
            await self._store.kv_set(KV_SNAPSHOT, snapshot)
            self._last_snapshot_id = ident
        return ident

    async def restore_snapshot(self) -> None:
        """Load the stored snapshot (once; `start` does if it was not done before): the
        node restores it before the mesh starts, so the node blocks it holds are known
        before any peer is admitted."""
        if self._restored:
            return
        self._restored = True
        snapshot = await self._store.kv_get(KV_SNAPSHOT)
        if snapshot is None:
            return
        try:
            self.state.restore(snapshot, trusted_signers=[self._key.public_key])
        except CrdtError as e:
            log.warning("stored registry snapshot unusable, starting empty: %s", e)
            return
        self._last_snapshot_id = snapshot_id(snapshot)
        log.info(
            "restored registry snapshot %s: %d tools",
            self._last_snapshot_id[:12],
            len(self.state.registry.view()),
        )


def _remote_tool(entry: CapabilityEntry) -> RemoteTool:
    return RemoteTool(
        name=entry.name,
        provider=node_id_from_public_key(entry.provider),
        zone=entry.zone,
        description=entry.description,
        input_schema=entry.input_schema,
        version=entry.version,
        metadata=entry.metadata,
    )


def _json_text(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, default=str)
