"""`ReplicatedState`: the replicated documents (registry, its tools' metadata, policies,
graph) behind one sync endpoint, plus signed snapshots for the node's store.

Snapshot format: msgpack `[version, signer, taken_at_ms, [[doc, epoch, state], ...]]`
followed by a 64-byte Ed25519 signature over `domain || body`. It is addressed by the
hex SHA-256 of its bytes (`snapshot_id`). Restoring verifies the signature and the
signer first; the records inside are then verified one by one like any remote update
(a snapshot is a cache, not a source of trust).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection
from typing import Annotated, Any

import msgspec

from vsmcp.crdt.context_graph import DEFAULT_MAX_EVENT_AGE_MS, DEFAULT_MAX_EVENTS, ContextGraph
from vsmcp.crdt.errors import CrdtError, MessageTooLarge, SnapshotInvalid
from vsmcp.crdt.policies import (
    DEFAULT_MAX_PER_ISSUER,
    AllowedIssuers,
    PolicyStore,
    _no_other_issuers,
)
from vsmcp.crdt.registry import CapabilityRegistry
from vsmcp.crdt.replica import Epoch, VerifiedDoc, WallClockMs, wall_clock_ms
from vsmcp.crdt.signing import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Signer, verify_detached
from vsmcp.crdt.sync import MAX_SYNC_MESSAGE_BYTES, SyncEndpoint

SNAPSHOT_DOMAIN = b"vsmcp/crdt/v1/snapshot\n"
SNAPSHOT_VERSION = 1
MAX_SNAPSHOT_BYTES = 64 * 1024 * 1024
DEFAULT_COMPACT_THRESHOLD_BYTES = 1024 * 1024
COMPACTION_GROWTH_FACTOR = 2


class _DocState(msgspec.Struct, frozen=True, array_like=True):
    doc: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    epoch: Epoch
    state: bytes


class _SnapshotBody(msgspec.Struct, frozen=True, array_like=True):
    version: int
    signer: Annotated[bytes, msgspec.Meta(min_length=PUBLIC_KEY_BYTES, max_length=PUBLIC_KEY_BYTES)]
    taken_at_ms: int
    docs: list[_DocState]


_snapshot_decoder: msgspec.msgpack.Decoder[_SnapshotBody] = msgspec.msgpack.Decoder(_SnapshotBody)
_snapshot_encoder = msgspec.msgpack.Encoder()


def snapshot_id(snapshot: bytes) -> str:
    """Content address of a snapshot: hex SHA-256 of its bytes."""
    return hashlib.sha256(snapshot).hexdigest()


def make_snapshot(docs: Collection[VerifiedDoc[Any, Any]], signer: Signer, now_ms: int) -> bytes:
    body = _SnapshotBody(
        SNAPSHOT_VERSION,
        signer.public_key,
        now_ms,
        [_DocState(doc.name, doc.epoch, doc.full_state()) for doc in docs],
    )
    encoded = _snapshot_encoder.encode(body)
    return encoded + signer.sign_detached(SNAPSHOT_DOMAIN + encoded)


def open_snapshot(
    snapshot: bytes, *, trusted_signers: Collection[bytes], max_bytes: int = MAX_SNAPSHOT_BYTES
) -> list[tuple[str, Epoch, bytes]]:
    """Verify a snapshot (size, signature, signer) and return its (doc, epoch, state)."""
    if len(snapshot) > max_bytes:
        raise MessageTooLarge(f"snapshot of {len(snapshot)} bytes exceeds {max_bytes}")
    if len(snapshot) <= SIGNATURE_BYTES:
        raise SnapshotInvalid("snapshot too short")
    encoded, signature = snapshot[:-SIGNATURE_BYTES], snapshot[-SIGNATURE_BYTES:]
    try:
        body = _snapshot_decoder.decode(encoded)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise SnapshotInvalid(f"snapshot does not decode: {exc}") from exc
    if body.version != SNAPSHOT_VERSION:
        raise SnapshotInvalid(f"snapshot version {body.version} unsupported")
    if body.signer not in trusted_signers:
        raise SnapshotInvalid("snapshot signer is not trusted")
    if not verify_detached(body.signer, SNAPSHOT_DOMAIN + encoded, signature):
        raise SnapshotInvalid("snapshot signature does not verify")
    return [(d.doc, d.epoch, d.state) for d in body.docs]


class ReplicatedState:
    """Capability registry (and its tools' metadata), policies and context graph with
    one sync endpoint.

    The node calls `handle(peer, message)` for every sync message a peer sent and sends
    back the replies; sends `outgoing()` (or uses `on_update` to push at once) to its
    peers; calls `tick()` every few seconds (prune expiries, compact big docs) and
    `make_sync_request()` to each peer for anti-entropy.
    """

    def __init__(
        self,
        *,
        replica_id: bytes,
        authority_keys: Collection[bytes] = (),
        allowed_issuers: AllowedIssuers = _no_other_issuers,
        clock: WallClockMs = wall_clock_ms,
        max_events: int = DEFAULT_MAX_EVENTS,
        max_event_age_ms: int = DEFAULT_MAX_EVENT_AGE_MS,
        compact_threshold_bytes: int = DEFAULT_COMPACT_THRESHOLD_BYTES,
        max_message_bytes: int = MAX_SYNC_MESSAGE_BYTES,
        max_policies_per_issuer: int = DEFAULT_MAX_PER_ISSUER,
        client_ids: Callable[[], int] | None = None,
    ) -> None:
        self._clock = clock
        self._compact_threshold_bytes = compact_threshold_bytes
        self._compacted_size: dict[str, int] = {}
        common: dict[str, Any] = {"replica_id": replica_id, "clock": clock}
        if client_ids is not None:
            common["client_ids"] = client_ids
        self.registry = CapabilityRegistry(authority_keys=authority_keys, **common)
        self.policies = PolicyStore(
            authority_keys=authority_keys,
            allowed_issuers=allowed_issuers,
            max_per_issuer=max_policies_per_issuer,
            **common,
        )
        self.graph = ContextGraph(max_events=max_events, max_age_ms=max_event_age_ms, **common)
        self.docs: tuple[VerifiedDoc[Any, Any], ...] = (
            *self.registry.documents(),
            self.policies,
            self.graph,
        )
        self.sync = SyncEndpoint(self.docs, max_message_bytes=max_message_bytes)

    def handle(self, peer: bytes, message: bytes) -> list[bytes]:
        """Process a sync message from `peer`; returns replies for that peer. Raises a
        CrdtError subclass (with `.reason`) for messages to count and drop."""
        return self.sync.handle(message, peer)

    def outgoing(self) -> list[bytes]:
        return self.sync.outgoing()

    def on_update(self, callback: Callable[[bytes], None]) -> None:
        self.sync.on_update(callback)

    def make_sync_request(self) -> list[bytes]:
        return self.sync.make_sync_request()

    def tick(self) -> list[str]:
        """Periodic upkeep: report and drop expired records; compact each doc whose
        encoded state exceeds the threshold. Returns the names of compacted docs."""
        compacted: list[str] = []
        for doc in self.docs:
            doc.prune()
            if doc.encoded_size() > self._compaction_trigger(doc.name):
                doc.compact()
                # Live content alone may exceed the threshold: compact again only once
                # the doc has doubled since, or every tick would start a new epoch.
                self._compacted_size[doc.name] = doc.encoded_size()
                compacted.append(doc.name)
        return compacted

    def _compaction_trigger(self, name: str) -> int:
        after_last = self._compacted_size.get(name, 0)
        return max(self._compact_threshold_bytes, COMPACTION_GROWTH_FACTOR * after_last)

    def snapshot(self, signer: Signer) -> bytes:
        """Signed snapshot of all docs; store it under `snapshot_id(snapshot)`."""
        return make_snapshot(self.docs, signer, self._clock())

    def restore(self, snapshot: bytes, *, trusted_signers: Collection[bytes]) -> None:
        """Merge a snapshot taken by a trusted signer (this node's key, normally).
        Raises SnapshotInvalid / MessageTooLarge before touching any doc."""
        states = open_snapshot(snapshot, trusted_signers=trusted_signers)
        by_name = {doc.name: doc for doc in self.docs}
        unknown = [name for name, _, _ in states if name not in by_name]
        if unknown:
            raise SnapshotInvalid(f"snapshot holds unknown documents {unknown}")
        for name, epoch, state in states:
            try:
                by_name[name].load_state(epoch, state)
            except CrdtError as exc:
                raise SnapshotInvalid(f"snapshot state of {name!r}: {exc}") from exc
