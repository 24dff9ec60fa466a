"""A mixed mesh: nodes that predate tool metadata replicate the registry with this one.

`OldRegistry` is the registry as it was before metadata existed (crdt/registry.py at
0c2d6e2^, its records, decoder, canonical check and `_check` copied unchanged; the
`VerifiedDoc` base and the sync protocol have not changed since): the node nobody here
changed. It must take every tool a newer node announces, metadata or not, and relay the
metadata it cannot read to newer nodes unharmed.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from tests.crdt.harness import Clock
from vsmcp.crdt.errors import InvalidValue, NotAuthorized
from vsmcp.crdt.registry import CapabilityRegistry, ToolMetadata, entry_key, metadata_key
from vsmcp.crdt.replica import Checked, VerifiedDoc, WallClockMs
from vsmcp.crdt.signing import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Ed25519Signer
from vsmcp.crdt.sync import SyncEndpoint
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


def test_an_old_node_takes_the_entry_of_a_tool_with_metadata_and_ignores_the_metadata() -> None:
    clock = Clock()
    new = CapabilityRegistry(replica_id=b"new", clock=clock)
    _announce(new, metadata=METADATA)
    _announce(new, "plain")
    old = OldRegistry(replica_id=b"old", clock=clock)
    # the announcements verify (the metadata record does not: it is not taken)
    assert old.offer(new.raw_items()) == 2
    assert [(e.name, e.zone, e.description, e.input_schema) for e in old.view()] == [
        ("echo", "public", "says it back", SCHEMA),
        ("plain", "public", "says it back", SCHEMA),
    ]
    meta_key = metadata_key(OWNER.public_key, "echo")
    assert meta_key in dict(new.raw_items())
    assert old.held(meta_key) is None


def _mixed_chain() -> tuple[CapabilityRegistry, OldRegistry, CapabilityRegistry, _Chain]:
    """New A -- old B -- new C, after A announced a tool with metadata."""
    clock = Clock()
    a = CapabilityRegistry(replica_id=b"A", clock=clock)
    b = OldRegistry(replica_id=b"B", clock=clock)
    c = CapabilityRegistry(replica_id=b"C", clock=clock)
    chain = _Chain([a, b, c])
    _announce(a, metadata=METADATA)
    chain.settle()
    return a, b, c, chain


def test_over_sync_an_old_node_serves_every_tool_and_relays_the_metadata() -> None:
    """new A -- old B -- new C, no link from A to C: B lists A's tools, and C gets their
    metadata through B's document, although B cannot read it."""
    a, b, c, chain = _mixed_chain()
    assert [e.name for e in b.view()] == ["echo"]
    (entry,) = c.view()
    assert (entry.name, entry.input_schema, entry.metadata) == ("echo", SCHEMA, METADATA)
    # B wrote nothing back over what it cannot read (no repair fights over the key)
    assert dict(b.raw_items()) == dict(a.raw_items()) and chain.writes_by["B"] == 0
    # a changed title reaches C the same way, with the new version
    _announce(a, metadata={**METADATA, "title": "Echo 2"})
    chain.settle()
    (entry,) = c.view()
    assert entry.metadata["title"] == "Echo 2" and entry.version == a.view()[0].version
    assert [e.version for e in b.view()] == [entry.version]


def test_metadata_survives_an_old_node_compacting_it_away() -> None:
    """B (old) compacts: its new epoch keeps only what it verified, the announcement.
    A and C switch to B's epoch and write their own records back into it, so the metadata
    is in the mesh again; C still has it, and a newer node D joining through B gets it."""
    a, b, c, chain = _mixed_chain()
    b.compact()
    assert metadata_key(OWNER.public_key, "echo") not in dict(b.raw_items())
    chain.settle()
    assert a.epoch == b.epoch == c.epoch
    assert metadata_key(OWNER.public_key, "echo") in dict(b.raw_items())
    d = CapabilityRegistry(replica_id=b"D", clock=Clock())
    _Chain([b, d]).settle()
    assert [e.metadata for e in d.view()] == [METADATA] == [e.metadata for e in c.view()]


def test_a_new_node_tells_its_listeners_when_the_metadata_comes_after_the_entry() -> None:
    clock = Clock()
    a = CapabilityRegistry(replica_id=b"A", clock=clock)
    _announce(a, metadata=METADATA)
    items = dict(a.raw_items())
    key, meta = entry_key(OWNER.public_key, "echo"), metadata_key(OWNER.public_key, "echo")
    c = CapabilityRegistry(replica_id=b"C", clock=clock)
    seen: list[tuple[str, str, dict[str, Any]]] = []

    def listen(change: Any) -> None:
        for what in ("added", "changed", "removed"):
            seen.extend((what, e.name, e.metadata) for e in getattr(change, what))

    c.on_change(listen)
    assert c.offer([(key, items[key])]) == 1
    assert c.offer([(meta, items[meta])]) == 1
    assert seen == [("added", "echo", {}), ("changed", "echo", METADATA)]
    assert c.view()[0].metadata == METADATA


def test_metadata_of_another_version_is_not_joined_to_the_entry() -> None:
    clock = Clock()
    a = CapabilityRegistry(replica_id=b"A", clock=clock)
    _announce(a, metadata=METADATA, version=5)
    stale = dict(a.raw_items())[metadata_key(OWNER.public_key, "echo")]
    _announce(a, version=6)  # the tool lost its metadata
    assert a.view()[0].metadata == {}
    c = CapabilityRegistry(replica_id=b"C", clock=clock)
    c.offer(a.raw_items())
    c.offer([(metadata_key(OWNER.public_key, "echo"), stale)])
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
    blob = forged + mallory.sign_detached(CapabilityRegistry.domain + forged)
    assert len(blob) - len(forged) == SIGNATURE_BYTES
    assert a.offer([(metadata_key(OWNER.public_key, "echo"), blob)]) == 0
    assert a.view()[0].metadata == {}


@dataclass
class _Chain:
    """Registries linked in a line (each syncs only with its neighbours), delivering
    pushes and anti-entropy until nothing is left to send."""

    docs: list[Any]

    def __post_init__(self) -> None:
        self.endpoints = [SyncEndpoint([doc]) for doc in self.docs]
        self.pool: list[tuple[int, int, bytes]] = []
        self.writes_by: dict[str, int] = {doc.replica_id.decode(): 0 for doc in self.docs}
        for i, endpoint in enumerate(self.endpoints):
            endpoint.on_update(self._pusher(i))

    def _neighbours(self, i: int) -> list[int]:
        return [j for j in (i - 1, i + 1) if 0 <= j < len(self.docs)]

    def _pusher(self, i: int) -> Any:
        def push(message: bytes) -> None:
            self.writes_by[self.docs[i].replica_id.decode()] += 1
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
                assert steps < 10_000, "sync did not quiesce"
                src, dst, message = self.pool.pop(0)
                replies = self.endpoints[dst].handle(message, peer=bytes([src]))
                self.pool.extend((dst, src, reply) for reply in replies)
