"""Capability registry: the tools of the mesh, each entry announced and signed by its
provider, retired by a tombstone signed by the provider (leave) or an authority (evict).

Ranking per key `provider_hex/name`: announcement version v ranks (v, 0); a tombstone
retiring up to version v ranks (v, 1), so it beats every announcement <= v and loses to
a newer one. A tombstone expires no earlier than the announcement it retires. See
`crdt.replica` for verification, repair, expiry and epochs.

Tool metadata (MCP `title`, `annotations`, `outputSchema`, `execution`) is a record of
its own, `ToolMetadata`, signed by the provider under the key `meta/provider_hex/name`
and naming the announcement version it belongs to; an entry's view carries the metadata
of its own version. Nodes that predate it cannot decode it and ignore it (a blob that
does not verify is left alone, never repaired), while the announcement beside it is
byte for byte what they accept: a mixed mesh keeps every tool everywhere, and the
metadata still reaches every newer node, relayed by the older ones' documents as they
are (`tests/crdt/test_registry_compat.py`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

import msgspec

from vsmcp.crdt.errors import InvalidValue, MetadataTooLarge, NotAuthorized
from vsmcp.crdt.replica import Checked, VerifiedDoc, WallClockMs, wall_clock_ms
from vsmcp.crdt.signing import PUBLIC_KEY_BYTES, Signer
from vsmcp.crdt.values import MAX_SAFE_INT, check_int, dump_json, load_json_object

DEFAULT_ANNOUNCE_TTL_MS = 24 * 3600 * 1000
DEFAULT_TOMBSTONE_TTL_MS = 24 * 3600 * 1000
MAX_TOOL_NAME_CHARS = 256
MAX_ZONE_CHARS = 64
MAX_DESCRIPTION_CHARS = 4096
# A tool's title, annotations, output schema and execution, as canonical JSON: larger
# ones are refused on receipt (and dropped, counted, by the announcer).
MAX_TOOL_METADATA_BYTES = 16 * 1024
# Keys of `ToolMetadata` records: never an announcement's, which begin with hex digits.
METADATA_KEY_PREFIX = "meta/"

_Key = Annotated[bytes, msgspec.Meta(min_length=PUBLIC_KEY_BYTES, max_length=PUBLIC_KEY_BYTES)]
_Ms = Annotated[int, msgspec.Meta(ge=0, le=MAX_SAFE_INT)]
_ToolName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOOL_NAME_CHARS)]


class Announcement(msgspec.Struct, frozen=True, array_like=True, tag=1):
    """Signed by `provider`."""

    provider: _Key
    name: _ToolName
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
    metadata: str = ""


class Retirement(msgspec.Struct, frozen=True, array_like=True, tag=2):
    """Signed by `signer`: the provider itself or an authority key."""

    provider: _Key
    name: _ToolName
    retired_version: _Ms
    signer: _Key
    retired_at_ms: _Ms
    expires_at_ms: _Ms


class ToolMetadata(msgspec.Struct, frozen=True, array_like=True, tag=3):
    """Signed by `provider`: the MCP metadata of its announcement `version` of `name`
    (canonical JSON of an object with the tool's `title`, `annotations`, `outputSchema`,
    `execution`), under its own key so that older nodes ignore it (module doc)."""

    provider: _Key
    name: _ToolName
    version: _Ms
    expires_at_ms: _Ms
    metadata: str


RegistryRecord = Announcement | Retirement | ToolMetadata
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


@dataclass(frozen=True, slots=True)
class _Metadata:
    """A verified `ToolMetadata`: no view of its own, read through its entry."""

    provider: bytes
    name: str
    version: int
    metadata: dict[str, Any]


_Record = CapabilityEntry | _Retired | _Metadata


def entry_key(provider: bytes, name: str) -> str:
    return f"{provider.hex()}/{name}"


def metadata_key(provider: bytes, name: str) -> str:
    return METADATA_KEY_PREFIX + entry_key(provider, name)


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

    def _check(self, payload: bytes) -> Checked[_Record]:
        record = _decoder.decode(payload)
        if _canonical(record) != payload:
            raise InvalidValue("registry payload is not canonical")
        if isinstance(record, ToolMetadata):
            described = _Metadata(
                record.provider, record.name, record.version, _load_metadata(record.metadata)
            )
            key = entry_key(record.provider, record.name)
            rank = (record.version, 0)
            expires = record.expires_at_ms
            # No view of its own: arriving after its entry, it changes the entry's view.
            return Checked(
                METADATA_KEY_PREFIX + key, record.provider, described, rank, expires, False, key
            )
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
                metadata=_load_metadata(record.metadata),
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
        """`entry` with the metadata of its version, if held under its metadata key."""
        held = self.held(METADATA_KEY_PREFIX + key)
        if held is None or entry.metadata:
            return entry
        described = held.checked.record
        assert isinstance(described, _Metadata)
        if described.version != entry.version:
            return entry
        return replace(entry, metadata=described.metadata)

    def _sign(self, signer: Signer, record: RegistryRecord) -> bytes:
        payload = _canonical(record)
        return payload + signer.sign_detached(self.domain + payload)

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
        metadata goes as its own `ToolMetadata` record, written with the announcement."""
        now = self._clock()
        provider = signer.public_key
        if version is None:
            keys = (entry_key(provider, name), metadata_key(provider, name))
            ranks = [h.checked.rank[0] for h in map(self.held, keys) if h is not None]
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
        blobs = [self._sign(signer, record)]
        text = _dump_metadata(metadata)
        if text:
            described = ToolMetadata(provider, name, version, expires_at_ms, text)
            blobs.append(self._sign(signer, described))
        held = self._put(*blobs)
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


def _dump_metadata(metadata: Mapping[str, Any] | None) -> str:
    if not metadata:
        return ""
    text = dump_json(dict(metadata), what="metadata")
    _check_metadata_size(text)
    return text


def _load_metadata(text: str) -> dict[str, Any]:
    if not text:
        return {}
    _check_metadata_size(text)
    return load_json_object(text, what="metadata")


def _check_metadata_size(text: str) -> None:
    size = len(text.encode())
    if size > MAX_TOOL_METADATA_BYTES:
        raise MetadataTooLarge(f"metadata: {size} bytes of JSON, over {MAX_TOOL_METADATA_BYTES}")
