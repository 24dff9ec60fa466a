"""Capability registry: the tools of the mesh, each entry announced and signed by its
provider, retired by a tombstone signed by the provider (leave) or an authority (evict).

Ranking per key `provider_hex/name`: announcement version v ranks (v, 0); a tombstone
retiring up to version v ranks (v, 1), so it beats every announcement <= v and loses to
a newer one. A tombstone expires no earlier than the announcement it retires. See
`crdt.replica` for verification, repair, expiry and epochs.

Tool metadata (MCP `title`, `annotations`, `outputSchema`, `execution`) is a record of
its own in a document of its own (`crdt.tool_metadata`, `registry.metadata`); an entry's
view carries the metadata of its own version. The announcement is byte for byte what
nodes that predate metadata accept, and they never see the metadata
(`tests/crdt/test_registry_compat.py`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

import msgspec

from vsmcp.crdt.errors import InvalidValue, NotAuthorized
from vsmcp.crdt.replica import Change, Checked, VerifiedDoc, WallClockMs, wall_clock_ms
from vsmcp.crdt.signing import PUBLIC_KEY_BYTES, Signer
from vsmcp.crdt.tool_metadata import (
    DescribedTool,
    MetadataText,
    ToolMetadata,
    ToolMetadataDoc,
    ToolName,
    dump_metadata,
    entry_key,
    load_metadata,
)
from vsmcp.crdt.values import MAX_SAFE_INT, check_int, dump_json, load_json_object

DEFAULT_ANNOUNCE_TTL_MS = 24 * 3600 * 1000
DEFAULT_TOMBSTONE_TTL_MS = 24 * 3600 * 1000
MAX_ZONE_CHARS = 64
MAX_DESCRIPTION_CHARS = 4096

_Key = Annotated[bytes, msgspec.Meta(min_length=PUBLIC_KEY_BYTES, max_length=PUBLIC_KEY_BYTES)]
_Ms = Annotated[int, msgspec.Meta(ge=0, le=MAX_SAFE_INT)]


class Announcement(msgspec.Struct, frozen=True, array_like=True, tag=1):
    """Signed by `provider`."""

    provider: _Key
    name: ToolName
    zone: Annotated[str, msgspec.Meta(max_length=MAX_ZONE_CHARS)]
    description: Annotated[str, msgspec.Meta(max_length=MAX_DESCRIPTION_CHARS)]
    input_schema: str  # canonical JSON text of an object
    version: _Ms
    announced_at_ms: _Ms
    expires_at_ms: _Ms
    # Read, no longer written: for a while (from commit 0c2d6e2) nodes appended the
    # metadata here, which older nodes refuse (their re-encoding leaves it out, so the
    # signed bytes are not canonical to them); it goes as a `ToolMetadata` record now.
    # "" is left out of the encoding (`_canonical`).
    metadata: MetadataText = ""


class Retirement(msgspec.Struct, frozen=True, array_like=True, tag=2):
    """Signed by `signer`: the provider itself or an authority key."""

    provider: _Key
    name: ToolName
    retired_version: _Ms
    signer: _Key
    retired_at_ms: _Ms
    expires_at_ms: _Ms


RegistryRecord = Announcement | Retirement
_decoder: msgspec.msgpack.Decoder[RegistryRecord] = msgspec.msgpack.Decoder(RegistryRecord)
_encoder = msgspec.msgpack.Encoder()


def _canonical(record: RegistryRecord) -> bytes:
    """The one encoding of `record` that is signed and accepted."""
    if isinstance(record, Announcement) and not record.metadata:
        # As before `metadata` was appended (msgspec encodes a trailing default of an
        # array-like struct): what every node takes as canonical.
        fields = msgspec.structs.astuple(record)[:-1]
        return _encoder.encode((Announcement.__struct_config__.tag, *fields))
    return _encoder.encode(record)


@dataclass(frozen=True, slots=True)
class CapabilityEntry:
    """A verified, live registry entry."""

    name: str
    provider: bytes
    zone: str
    description: str
    input_schema: dict[str, Any]
    version: int
    announced_at_ms: int
    expires_at_ms: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Retired:
    provider: bytes
    name: str
    retired_version: int


_Record = CapabilityEntry | _Retired


class CapabilityRegistry(VerifiedDoc[_Record, CapabilityEntry]):
    """Verified view over the replicated registry document."""

    domain = b"vsmcp/crdt/v1/registry\n"

    def __init__(
        self,
        *,
        replica_id: bytes,
        authority_keys: Collection[bytes] = (),
        clock: WallClockMs = wall_clock_ms,
        announce_ttl_ms: int = DEFAULT_ANNOUNCE_TTL_MS,
        tombstone_ttl_ms: int = DEFAULT_TOMBSTONE_TTL_MS,
        name: str = "registry",
        **kwargs: Any,
    ) -> None:
        self._authority_keys = frozenset(authority_keys)
        self._announce_ttl_ms = announce_ttl_ms
        self._tombstone_ttl_ms = tombstone_ttl_ms
        super().__init__(name, replica_id=replica_id, clock=clock, **kwargs)
        # The tools' metadata: a document of its own, synced beside this one (module doc).
        self.metadata = ToolMetadataDoc(
            f"{name}-meta", replica_id=replica_id, clock=clock, **kwargs
        )
        self.metadata.on_change(self._metadata_changed)

    def documents(self) -> tuple[VerifiedDoc[Any, Any], ...]:
        """The documents to sync: the registry and its tools' metadata."""
        return (self, self.metadata)

    def _check(self, payload: bytes) -> Checked[_Record]:
        record = _decoder.decode(payload)
        if _canonical(record) != payload:
            raise InvalidValue("registry payload is not canonical")
        key = entry_key(record.provider, record.name)
        if isinstance(record, Announcement):
            entry = CapabilityEntry(
                name=record.name,
                provider=record.provider,
                zone=record.zone,
                description=record.description,
                input_schema=load_json_object(record.input_schema, what="input_schema"),
                version=record.version,
                announced_at_ms=record.announced_at_ms,
                expires_at_ms=record.expires_at_ms,
                metadata=load_metadata(record.metadata),
            )
            rank = (record.version, 0)
            return Checked(key, record.provider, entry, rank, record.expires_at_ms, True)
        if record.signer != record.provider and record.signer not in self._authority_keys:
            raise NotAuthorized("retirement signed by neither the provider nor an authority")
        retired = _Retired(record.provider, record.name, record.retired_version)
        return Checked(
            key, record.signer, retired, (record.retired_version, 1), record.expires_at_ms, False
        )

    def _view_of(self, record: _Record) -> CapabilityEntry:
        assert isinstance(record, CapabilityEntry)
        return self._joined(entry_key(record.provider, record.name), record)

    def _joined(self, key: str, entry: CapabilityEntry) -> CapabilityEntry:
        """`entry` with the metadata of its version, if the metadata doc holds it."""
        held = self.metadata.held(key)
        if held is None or entry.metadata or held.checked.record.version != entry.version:
            return entry
        return replace(entry, metadata=held.checked.record.metadata)

    def _metadata_changed(self, change: Change[DescribedTool]) -> None:
        """Metadata that joins (or joined) the entry of its version changes its view."""
        touched = []
        for described in (*change.added, *change.changed, *change.removed):
            key = entry_key(described.provider, described.name)
            held = self.held(key)
            if held is not None and held.checked.rank == (described.version, 0):
                touched.append(key)
        if touched:
            self._touch(touched)

    def _sign(self, signer: Signer, record: RegistryRecord) -> bytes:
        payload = _canonical(record)
        return payload + signer.sign_detached(self.domain + payload)

    def _sign_metadata(self, signer: Signer, record: ToolMetadata) -> bytes:
        payload = self.metadata.payload(record)
        return payload + signer.sign_detached(self.metadata.domain + payload)

    # ---- public API -----------------------------------------------------------------

    def announce(
        self,
        signer: Signer,
        name: str,
        *,
        zone: str,
        description: str = "",
        input_schema: Mapping[str, Any] | None = None,
        version: int | None = None,
        ttl_ms: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> CapabilityEntry:
        """Announce (or re-announce) `signer`'s tool `name`; returns the signed entry.

        `version` defaults to max(previous + 1, now_ms), monotonic across restarts as
        long as the clock is. Raises StaleRecord if an explicit version does not beat
        what the replica holds (a newer announcement or a tombstone). Raises
        MetadataTooLarge if `metadata` exceeds MAX_TOOL_METADATA_BYTES as JSON. The
        metadata goes as its own `ToolMetadata` record, into `self.metadata`."""
        now = self._clock()
        provider = signer.public_key
        if version is None:
            key = entry_key(provider, name)
            ranks = [
                h.checked.rank[0]
                for h in (self.held(key), self.metadata.held(key))
                if h is not None
            ]
            previous = max(ranks, default=-1)
            version = max(previous + 1, now)
        check_int(version, what="version")
        ttl = self._announce_ttl_ms if ttl_ms is None else check_int(ttl_ms, what="ttl_ms")
        expires_at_ms = check_int(now + ttl, what="expires_at_ms")
        record = Announcement(
            provider=provider,
            name=name,
            zone=zone,
            description=description,
            input_schema=dump_json(dict(input_schema or {}), what="input_schema"),
            version=version,
            announced_at_ms=now,
            expires_at_ms=expires_at_ms,
        )
        blob = self._sign(signer, record)
        text = dump_metadata(metadata)
        if text:
            # First, so that the entry's listeners hear of it once, with its metadata.
            described = ToolMetadata(provider, name, version, expires_at_ms, text)
            self.metadata._put(self._sign_metadata(signer, described))
        held = self._put(blob)
        return self._view_of(held.checked.record)

    def retire(
        self,
        owner: bytes,
        *,
        by: Signer,
        names: Iterable[str] | None = None,
        up_to_version: int | None = None,
    ) -> list[str]:
        """Retire `owner`'s entries (all live ones it holds, or `names`), signed by the
        owner (leave) or an authority key (evict). Each tombstone retires up to the
        entry's current version, or `up_to_version` when higher (an authority can bar
        versions the owner has not announced yet). Returns the names retired."""
        if by.public_key != owner and by.public_key not in self._authority_keys:
            raise NotAuthorized("only the owner or an authority key may retire entries")
        now = self._clock()
        if names is None:
            names = sorted(
                e.name
                for e in self._visible_records(now)
                if isinstance(e, CapabilityEntry) and e.provider == owner
            )
        retired: list[str] = []
        for name in names:
            held = self.held(entry_key(owner, name))
            known_version = held.checked.rank[0] if held is not None else -1
            known_expiry = held.checked.expires_at_ms if held is not None else 0
            version = max(known_version, -1 if up_to_version is None else up_to_version)
            if version < 0 or (held is not None and held.checked.rank >= (version, 1)):
                continue
            record = Retirement(
                provider=owner,
                name=name,
                retired_version=check_int(version, what="up_to_version"),
                signer=by.public_key,
                retired_at_ms=now,
                expires_at_ms=max(now + self._tombstone_ttl_ms, known_expiry),
            )
            self._put(self._sign(by, record))
            retired.append(name)
        return retired

    def view(self) -> list[CapabilityEntry]:
        """Live verified entries, sorted by (provider, name)."""
        entries = [
            self._joined(key, e)
            for key, e in self._visible_items()
            if isinstance(e, CapabilityEntry)
        ]
        entries.sort(key=lambda e: (e.provider, e.name))
        return entries

    def get(self, provider: bytes, name: str) -> CapabilityEntry | None:
        held = self.held(entry_key(provider, name))
        if held is None or not held.checked.live:
            return None
        if self._clock() >= held.checked.expires_at_ms:
            return None
        return self._view_of(held.checked.record)
