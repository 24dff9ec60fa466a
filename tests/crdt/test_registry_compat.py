"""A mixed mesh: nodes that predate tool metadata replicate the registry with this one.

`OldRegistry` is the registry as it was before metadata existed (crdt/registry.py at
0c2d6e2^, its records, decoder, canonical check and `_check` copied unchanged; the
`VerifiedDoc` base and the sync protocol have not changed since): the node nobody here
changed. It holds the documents registry, policies and graph, not `registry-meta`, and
refuses every message for that one (`UnknownDocument`: a counter and a debug line in
the node). It must take every tool a newer node announces, metadata or not, never hold
the metadata, and so never compact over and over (the metadata it cannot verify used to
be dropped by each of its compactions and written back by every newer node at once).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import pytest

from tests.crdt.harness import Clock
from vsmcp.crdt.errors import CrdtError, InvalidValue, NotAuthorized, UnknownDocument
from vsmcp.crdt.registry import CapabilityRegistry, entry_key
from vsmcp.crdt.replica import Checked, VerifiedDoc, WallClockMs
from vsmcp.crdt.signing import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Ed25519Signer
from vsmcp.crdt.state import COMPACTION_GROWTH_FACTOR, ReplicatedState
from vsmcp.crdt.sync import SyncEndpoint
from vsmcp.crdt.tool_metadata import ToolMetadata, ToolMetadataDoc
from vsmcp.crdt.values import MAX_SAFE_INT, load_json_object

# ---- crdt/registry.py at 0c2d6e2^ (before tool metadata), copied ---------------------------

MAX_TOOL_NAME_CHARS = 256
MAX_ZONE_CHARS = 64
MAX_DESCRIPTION_CHARS = 4096

_Key = Annotated[bytes, msgspec.Meta(min_length=PUBLIC_KEY_BYTES, max_length=PUBLIC_KEY_BYTES)]
_Ms = Annotated[int, msgspec.Meta(ge=0, le=MAX_SAFE_INT)]
_ToolName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOOL_NAME_CHARS)]


class Announcement(msgspec.Struct, frozen=True, array_like=True, tag=1):
    provider: _Key
    name: _ToolName
    zone: Annotated[str, msgspec.Meta(max_length=MAX_ZONE_CHARS)]
    description: Annotated[str, msgspec.Meta(max_length=MAX_DESCRIPTION_CHARS)]
    input_schema: str
    version: _Ms
    announced_at_ms: _Ms
    expires_at_ms: _Ms


class Retirement(msgspec.Struct, frozen=True, array_like=True, tag=2):
    provider: _Key
    name: _ToolName
    retired_version: _Ms
    signer: _Key
    retired_at_ms: _Ms
    expires_at_ms: _Ms


RegistryRecord = Announcement | Retirement
_decoder: msgspec.msgpack.Decoder[RegistryRecord] = msgspec.msgpack.Decoder(RegistryRecord)
_encoder = msgspec.msgpack.Encoder()


@dataclass(frozen=True, slots=True)
class OldEntry:
    name: str
    provider: bytes
    zone: str
    description: str
    input_schema: dict[str, Any]
    version: int
    announced_at_ms: int
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class _Retired:
    provider: bytes
    name: str
    retired_version: int


class OldRegistry(VerifiedDoc["OldEntry | _Retired", OldEntry]):
    domain = b"vsmcp/crdt/v1/registry\n"

    def __init__(
        self,
        *,
        replica_id: bytes,
        authority_keys: Collection[bytes] = (),
        clock: WallClockMs,
        name: str = "registry",
    ) -> None:
        self._authority_keys = frozenset(authority_keys)
        super().__init__(name, replica_id=replica_id, clock=clock)

    def _check(self, payload: bytes) -> Checked[OldEntry | _Retired]:
        record = _decoder.decode(payload)
        if _encoder.encode(record) != payload:
            raise InvalidValue("registry payload is not canonical")
        key = entry_key(record.provider, record.name)
        if isinstance(record, Announcement):
            entry = OldEntry(
                name=record.name,
                provider=record.provider,
                zone=record.zone,
                description=record.description,
                input_schema=load_json_object(record.input_schema, what="input_schema"),
                version=record.version,
                announced_at_ms=record.announced_at_ms,
                expires_at_ms=record.expires_at_ms,
            )
            rank = (record.version, 0)
            return Checked(key, record.provider, entry, rank, record.expires_at_ms, True)
        if record.signer != record.provider and record.signer not in self._authority_keys:
            raise NotAuthorized("retirement signed by neither the provider nor an authority")
        retired = _Retired(record.provider, record.name, record.retired_version)
        return Checked(
            key, record.signer, retired, (record.retired_version, 1), record.expires_at_ms, False
        )

    def _view_of(self, record: OldEntry | _Retired) -> OldEntry:
        assert isinstance(record, OldEntry)
        return record

    def view(self) -> list[OldEntry]:
        entries = [e for e in self._visible_records() if isinstance(e, OldEntry)]
        entries.sort(key=lambda e: (e.provider, e.name))
        return entries


# ---- the tests ----------------------------------------------------------------------------

OWNER = Ed25519Signer(b"\x0a" * 32)
METADATA = {
    "title": "Echo",
    "annotations": {"readOnlyHint": True},
    "outputSchema": {"type": "object", "properties": {"text": {"type": "string"}}},
    "execution": {"taskSupport": "optional"},
}
SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}}


def _announce(registry: CapabilityRegistry, name: str = "echo", **kwargs: Any) -> None:
    registry.announce(
        OWNER, name, zone="public", description="says it back", input_schema=SCHEMA, **kwargs
    )


def test_an_old_node_takes_the_entry_of_a_tool_with_metadata_and_refuses_the_metadata() -> None:
    clock = Clock()
    new = CapabilityRegistry(replica_id=b"new", clock=clock)
    _announce(new, metadata=METADATA)
    _announce(new, "plain")
    old = OldRegistry(replica_id=b"old", clock=clock)
    # the registry document holds the two announcements and nothing else
    assert old.offer(new.raw_items()) == 2
    assert dict(old.raw_items()) == dict(new.raw_items())
    assert [(e.name, e.zone, e.description, e.input_schema) for e in old.view()] == [
        ("echo", "public", "says it back", SCHEMA),
        ("plain", "public", "says it back", SCHEMA),
    ]
    # the metadata travels in a document the old node does not hold: refused whole
    (request,) = SyncEndpoint([new.metadata]).make_sync_request()
    with pytest.raises(UnknownDocument):
        SyncEndpoint([old]).handle(request)


def test_in_a_mixed_mesh_every_node_lists_every_tool_and_new_nodes_get_the_metadata() -> None:
    """new A, old B, new C, all linked: B lists A's tools, C gets their metadata from A;
    B refuses the metadata document's messages and writes nothing."""
    clock = Clock()
    a = CapabilityRegistry(replica_id=b"A", clock=clock)
    b = OldRegistry(replica_id=b"B", clock=clock)
    c = CapabilityRegistry(replica_id=b"C", clock=clock)
    mesh = _Mesh([a.documents(), (b,), c.documents()])
    _announce(a, metadata=METADATA)
    mesh.settle()
    assert [e.name for e in b.view()] == ["echo"]
    (entry,) = c.view()
    assert (entry.name, entry.input_schema, entry.metadata) == ("echo", SCHEMA, METADATA)
    assert dict(b.raw_items()) == dict(a.raw_items()) and mesh.writes_by[1] == 0
    assert mesh.refused[1] > 0 and mesh.refused[0] == mesh.refused[2] == 0
    # a changed title reaches C, with the new version
    _announce(a, metadata={**METADATA, "title": "Echo 2"})
    mesh.settle()
    (entry,) = c.view()
    assert entry.metadata["title"] == "Echo 2" and entry.version == a.view()[0].version
    assert [e.version for e in b.view()] == [entry.version]


def test_a_new_node_reached_only_through_an_old_one_gets_the_tools_without_metadata() -> None:
    """new A -- old B -- new C, no link from A to C: the old node relays the registry,
    not the document it does not hold."""
    clock = Clock()
    a = CapabilityRegistry(replica_id=b"A", clock=clock)
    b = OldRegistry(replica_id=b"B", clock=clock)
    c = CapabilityRegistry(replica_id=b"C", clock=clock)
    mesh = _Mesh([a.documents(), (b,), c.documents()], links=[(0, 1), (1, 2)])
    _announce(a, metadata=METADATA)
    mesh.settle()
    assert [(e.name, e.metadata) for e in c.view()] == [("echo", {})]


def test_an_old_node_compacts_once_and_never_again_in_a_mesh_of_new_ones() -> None:
    """1 old + k new nodes (k = 2, 3), 400 tools with an output schema. The old node's
    compaction trigger is max(threshold, 2 x its size after its last compaction): its
    registry document carries exactly the announcements, so after one compaction (and
    every new node switching to its epoch) the document does not grow and the trigger
    is not crossed again; the new nodes keep every tool's metadata."""
    for k in (2, 3):
        clock = Clock()
        new = [ReplicatedState(replica_id=bytes([65 + i]), clock=clock) for i in range(k)]
        old = _old_state(b"O", clock, compact_threshold_bytes=1)
        states = [new[0], old, *new[1:]]
        mesh = _Mesh([state.docs for state in states])
        for i in range(400):
            new[0].registry.announce(
                OWNER,
                f"tool{i}",
                zone="public",
                input_schema=SCHEMA,
                metadata={"title": f"Tool {i}", "outputSchema": METADATA["outputSchema"]},
            )
        mesh.settle()
        compactions: list[int] = []
        size_after = 0
        for _round in range(5):
            compactions.append(old.tick().count("registry"))
            if compactions[-1]:
                size_after = old.registry.encoded_size()
            for state in new:
                state.tick()
            mesh.settle()
            assert old.registry.encoded_size() < COMPACTION_GROWTH_FACTOR * size_after
        assert compactions == [1, 0, 0, 0, 0], k
        assert {state.registry.epoch for state in states} == {old.registry.epoch}
        assert len(old.registry.view()) == 400
        for state in new:
            entries = state.registry.view()
            assert len(entries) == 400
            assert all(e.metadata["outputSchema"] == METADATA["outputSchema"] for e in entries)


def _old_state(replica_id: bytes, clock: Clock, **kwargs: Any) -> ReplicatedState:
    """`ReplicatedState` of a node predating metadata: its documents were registry (the
    old one), policies and graph; `tick` and the compaction trigger are unchanged."""
    state = ReplicatedState(replica_id=replica_id, clock=clock, **kwargs)
    registry = OldRegistry(replica_id=replica_id, clock=clock)
    state.registry = registry  # type: ignore[assignment]
    state.docs = (registry, state.policies, state.graph)
    state.sync = SyncEndpoint(state.docs)
    return state


def test_a_new_node_tells_its_listeners_when_the_metadata_comes_after_the_entry() -> None:
    clock = Clock()
    a = CapabilityRegistry(replica_id=b"A", clock=clock)
    _announce(a, metadata=METADATA)
    c = CapabilityRegistry(replica_id=b"C", clock=clock)
    seen: list[tuple[str, str, dict[str, Any]]] = []

    def listen(change: Any) -> None:
        for what in ("added", "changed", "removed"):
            seen.extend((what, e.name, e.metadata) for e in getattr(change, what))

    c.on_change(listen)
    assert c.offer(a.raw_items()) == 1
    assert c.metadata.offer(a.metadata.raw_items()) == 1
    assert seen == [("added", "echo", {}), ("changed", "echo", METADATA)]
    assert c.view()[0].metadata == METADATA


def test_a_new_node_tells_its_listeners_once_of_its_own_tool_with_metadata() -> None:
    a = CapabilityRegistry(replica_id=b"A", clock=Clock())
    seen: list[tuple[str, dict[str, Any]]] = []
    a.on_change(lambda change: seen.extend(("added", e.metadata) for e in change.added))
    a.on_change(lambda change: seen.extend(("changed", e.metadata) for e in change.changed))
    _announce(a, metadata=METADATA)
    _announce(a, metadata={"title": "Echo 2"})
    assert seen == [("added", METADATA), ("changed", {"title": "Echo 2"})]


def test_metadata_of_another_version_is_not_joined_to_the_entry() -> None:
    clock = Clock()
    a = CapabilityRegistry(replica_id=b"A", clock=clock)
    _announce(a, metadata=METADATA, version=5)
    stale = list(a.metadata.raw_items())
    _announce(a, version=6)  # the tool lost its metadata
    assert a.view()[0].metadata == {}
    c = CapabilityRegistry(replica_id=b"C", clock=clock)
    c.offer(a.raw_items())
    c.metadata.offer(stale)
    assert [(e.version, e.metadata) for e in c.view()] == [(6, {})]


def test_only_the_provider_signs_its_tools_metadata() -> None:
    clock = Clock()
    a = CapabilityRegistry(replica_id=b"A", clock=clock)
    _announce(a)
    entry = a.view()[0]
    mallory = Ed25519Signer(b"\x0b" * 32)
    forged = msgspec.msgpack.encode(
        ToolMetadata(OWNER.public_key, "echo", entry.version, entry.expires_at_ms, '{"title":"x"}')
    )
    blob = forged + mallory.sign_detached(ToolMetadataDoc.domain + forged)
    assert len(blob) - len(forged) == SIGNATURE_BYTES
    assert a.metadata.offer([(entry_key(OWNER.public_key, "echo"), blob)]) == 0
    assert a.view()[0].metadata == {}


@dataclass
class _Mesh:
    """Nodes, each a set of documents behind one sync endpoint, linked in pairs (all
    pairs unless `links` says which), delivering pushes and anti-entropy until nothing
    is left to send. A message a node refuses (a document it does not hold) is counted
    and dropped, as the node's replication service does."""

    nodes: list[Sequence[Any]]
    links: list[tuple[int, int]] | None = None

    def __post_init__(self) -> None:
        count = len(self.nodes)
        if self.links is None:
            self.links = [(i, j) for i in range(count) for j in range(i + 1, count)]
        self.endpoints = [SyncEndpoint(docs) for docs in self.nodes]
        self.pool: list[tuple[int, int, bytes]] = []
        self.writes_by = [0] * count
        self.refused = [0] * count
        for i, endpoint in enumerate(self.endpoints):
            endpoint.on_update(self._pusher(i))

    def _neighbours(self, i: int) -> list[int]:
        assert self.links is not None
        return [b if a == i else a for a, b in self.links if i in (a, b)]

    def _pusher(self, i: int) -> Any:
        def push(message: bytes) -> None:
            self.writes_by[i] += 1
            self.pool.extend((i, j, message) for j in self._neighbours(i))

        return push

    def settle(self, rounds: int = 4) -> None:
        for _ in range(rounds):
            for i, endpoint in enumerate(self.endpoints):
                for j in self._neighbours(i):
                    self.pool.extend((i, j, m) for m in endpoint.make_sync_request())
            steps = 0
            while self.pool:
                steps += 1
                assert steps < 100_000, "sync did not quiesce"
                src, dst, message = self.pool.pop(0)
                try:
                    replies = self.endpoints[dst].handle(message, peer=bytes([src]))
                except CrdtError:
                    self.refused[dst] += 1
                    continue
                self.pool.extend((dst, src, reply) for reply in replies)
