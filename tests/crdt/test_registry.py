"""Registry: owner-only overwrite, tombstone expiry without resurrection."""

from __future__ import annotations

import json

import msgspec
import pytest

from tests.crdt.harness import Clock
from vsmcp.crdt.errors import MetadataTooLarge, NotAuthorized, StaleRecord
from vsmcp.crdt.registry import Announcement, CapabilityRegistry, entry_key
from vsmcp.crdt.signing import SIGNATURE_BYTES, Ed25519Signer
from vsmcp.crdt.tool_metadata import MAX_TOOL_METADATA_BYTES, ToolMetadata, ToolMetadataDoc

OWNER = Ed25519Signer(b"\x0a" * 32)


def test_newer_version_wins_stale_local_write_refused() -> None:
    registry = CapabilityRegistry(replica_id=b"r", clock=Clock())
    registry.announce(OWNER, "echo", zone="public", version=3)
    with pytest.raises(StaleRecord):
        registry.announce(OWNER, "echo", zone="ops", version=2)
    entry = registry.announce(OWNER, "echo", zone="ops")
    assert entry.version == max(4, Clock().now_ms)
    assert [e.zone for e in registry.view()] == ["ops"]


def test_tombstone_expires_after_the_entry_it_retires_no_resurrection() -> None:
    clock = Clock()
    registry = CapabilityRegistry(
        replica_id=b"r", clock=clock, announce_ttl_ms=10_000, tombstone_ttl_ms=1_000
    )
    registry.announce(OWNER, "echo", zone="public")
    key = entry_key(OWNER.public_key, "echo")
    old_blob = registry.held(key).blob  # type: ignore[union-attr]
    registry.retire(OWNER.public_key, by=OWNER)
    tombstone = registry.held(key)
    assert tombstone is not None and tombstone.checked.expires_at_ms >= clock.now_ms + 10_000
    clock.now_ms += 10_000 + 60_000  # past expiry and grace
    assert registry.prune() == 1
    assert registry.raw_items() == []
    # a stale replica re-sends the retired announcement: expired, so nothing comes back
    assert registry.offer([(key, old_blob)]) == 0
    assert registry.view() == []
    # the owner may announce again with a newer version
    registry.announce(OWNER, "echo", zone="public")
    assert len(registry.view()) == 1


def test_expired_entries_leave_the_view() -> None:
    clock = Clock()
    registry = CapabilityRegistry(replica_id=b"r", clock=clock, announce_ttl_ms=1_000)
    registry.announce(OWNER, "echo", zone="public")
    clock.now_ms += 1_000
    assert registry.view() == [] and registry.get(OWNER.public_key, "echo") is None


# -- tool metadata: a record of its own, in a document of its own ---------------------------

METADATA = {
    "title": "Echo",
    "annotations": {"readOnlyHint": True},
    "outputSchema": {"type": "object", "properties": {"text": {"type": "string"}}},
    "execution": {"taskSupport": "optional"},
}


class OldAnnouncement(msgspec.Struct, frozen=True, array_like=True, tag=1):
    """Announcement before `metadata` was appended."""

    provider: bytes
    name: str
    zone: str
    description: str
    input_schema: str
    version: int
    announced_at_ms: int
    expires_at_ms: int


def _signed(payload: bytes, signer: Ed25519Signer = OWNER) -> bytes:
    return payload + signer.sign_detached(CapabilityRegistry.domain + payload)


def _signed_metadata(payload: bytes, signer: Ed25519Signer = OWNER) -> bytes:
    return payload + signer.sign_detached(ToolMetadataDoc.domain + payload)


def _old_payload(clock: Clock) -> bytes:
    old = OldAnnouncement(
        OWNER.public_key, "echo", "public", "says it back", "{}", 1, clock.now_ms, clock.now_ms + 1
    )
    return msgspec.msgpack.encode(old)


def test_an_older_nodes_announcement_is_accepted_without_metadata() -> None:
    clock = Clock()
    payload = _old_payload(clock)
    registry = CapabilityRegistry(replica_id=b"r", clock=clock)
    assert registry.offer([(entry_key(OWNER.public_key, "echo"), _signed(payload))]) == 1
    (entry,) = registry.view()
    assert (entry.description, entry.metadata) == ("says it back", {})
    # announced without metadata, this node's record is byte for byte the older one
    same = CapabilityRegistry(replica_id=b"s", clock=clock)
    same.announce(OWNER, "echo", zone="public", description="says it back", version=1, ttl_ms=1)
    held = same.held(entry_key(OWNER.public_key, "echo"))
    assert held is not None and held.blob[:-SIGNATURE_BYTES] == payload


def test_a_tool_with_metadata_is_an_older_nodes_announcement_plus_a_metadata_record() -> None:
    registry = CapabilityRegistry(replica_id=b"r", clock=Clock())
    entry = registry.announce(OWNER, "echo", zone="public", metadata=METADATA)
    assert entry.metadata == METADATA
    held = registry.held(entry_key(OWNER.public_key, "echo"))
    assert held is not None
    payload = held.blob[:-SIGNATURE_BYTES]
    old = msgspec.msgpack.decode(payload, type=OldAnnouncement)
    assert msgspec.msgpack.encode(old) == payload  # canonical to an older node
    # the metadata is in the other document only
    assert [key for key, _ in registry.raw_items()] == [entry_key(OWNER.public_key, "echo")]
    described = registry.metadata.held(entry_key(OWNER.public_key, "echo"))
    assert described is not None and described.checked.record.metadata == METADATA
    other = CapabilityRegistry(replica_id=b"s", clock=Clock())
    assert other.offer(registry.raw_items()) == 1
    assert [e.metadata for e in other.view()] == [{}]
    assert other.metadata.offer(registry.metadata.raw_items()) == 1
    assert [e.metadata for e in other.view()] == [METADATA]
    assert other.get(OWNER.public_key, "echo") == entry


def test_an_announcement_with_the_appended_metadata_field_is_still_read() -> None:
    """For a while (commit 0c2d6e2) nodes carried metadata as a trailing field."""
    clock = Clock()
    text = json.dumps({"title": "Echo"}, separators=(",", ":"))
    payload = msgspec.msgpack.encode(
        Announcement(
            OWNER.public_key, "echo", "public", "", "{}", 1, clock.now_ms, clock.now_ms + 1, text
        )
    )
    registry = CapabilityRegistry(replica_id=b"r", clock=clock)
    assert registry.offer([(entry_key(OWNER.public_key, "echo"), _signed(payload))]) == 1
    assert [e.metadata for e in registry.view()] == [{"title": "Echo"}]


def test_metadata_is_covered_by_the_signature() -> None:
    registry = CapabilityRegistry(replica_id=b"r", clock=Clock())
    registry.announce(OWNER, "echo", zone="public", metadata={"title": "Echo"})
    key = entry_key(OWNER.public_key, "echo")
    signed = bytes(dict(registry.metadata.raw_items())[key])
    forged = signed.replace(b'"Echo"', b'"Evil"')
    assert forged != signed
    other = CapabilityRegistry(replica_id=b"s", clock=Clock())
    assert other.offer(registry.raw_items()) == 1
    assert other.metadata.offer([(key, forged)]) == 0
    assert [e.metadata for e in other.view()] == [{}]


def test_oversized_metadata_is_refused_on_announce_and_on_receipt() -> None:
    clock = Clock()
    big = {"title": "x" * MAX_TOOL_METADATA_BYTES}
    registry = CapabilityRegistry(replica_id=b"r", clock=clock)
    with pytest.raises(MetadataTooLarge):
        registry.announce(OWNER, "echo", zone="public", metadata=big)
    assert registry.view() == []
    fits = {"title": "x" * (MAX_TOOL_METADATA_BYTES - len('{"title":""}'))}
    assert registry.announce(OWNER, "echo", zone="public", metadata=fits).metadata == fits
    # a provider that skips the check: its signed entry is refused by every receiver
    payload = msgspec.msgpack.encode(
        Announcement(
            OWNER.public_key,
            "big",
            "public",
            "",
            "{}",
            1,
            clock.now_ms,
            clock.now_ms + 1000,
            json.dumps(big, separators=(",", ":")),
        )
    )
    assert registry.offer([(entry_key(OWNER.public_key, "big"), _signed(payload))]) == 0
    assert [e.name for e in registry.view()] == ["echo"]
    record = ToolMetadata(
        OWNER.public_key, "echo", 1, clock.now_ms + 1000, json.dumps(big, separators=(",", ":"))
    )
    blob = _signed_metadata(msgspec.msgpack.encode(record))
    assert registry.metadata.offer([(entry_key(OWNER.public_key, "echo"), blob)]) == 0


def test_oversized_metadata_records_are_refused_while_decoded_or_before() -> None:
    clock = Clock()
    registry = CapabilityRegistry(replica_id=b"r", clock=clock)
    key = entry_key(OWNER.public_key, "echo")

    def blob(text: str) -> bytes:
        record = ToolMetadata(OWNER.public_key, "echo", 1, clock.now_ms + 1000, text)
        return _signed_metadata(msgspec.msgpack.encode(record))

    # more characters than the cap has bytes: the decoder refuses the text itself
    too_long = '{"t":"' + "x" * MAX_TOOL_METADATA_BYTES + '"}'
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(blob(too_long)[:-SIGNATURE_BYTES], type=ToolMetadata)
    # few enough characters, too many bytes: refused after decoding
    wide = '{"t":"' + "é" * (MAX_TOOL_METADATA_BYTES // 2) + '"}'
    assert len(wide) <= MAX_TOOL_METADATA_BYTES < len(wide.encode())
    # a blob over the record's largest possible size is not decoded at all
    huge = blob("x" * (3 * MAX_TOOL_METADATA_BYTES))
    with pytest.raises(NotAuthorized, match="blob of"):
        registry.metadata._verify_blob(huge)
    assert registry.metadata.offer([(key, blob(too_long)), (key, blob(wide)), (key, huge)]) == 0
    fits = '{"t":"' + "é" * (MAX_TOOL_METADATA_BYTES // 2 - 8) + '"}'
    assert registry.metadata.offer([(key, blob(fits))]) == 1


def test_a_metadata_record_in_the_registry_document_is_not_taken() -> None:
    """Commits cb62db2..d415faf kept `ToolMetadata` in the registry document, under
    `meta/<provider>/<name>`; such a record is now ignored there, as older nodes do."""
    clock = Clock()
    registry = CapabilityRegistry(replica_id=b"r", clock=clock)
    registry.announce(OWNER, "echo", zone="public", version=1)
    record = ToolMetadata(OWNER.public_key, "echo", 1, clock.now_ms + 1000, '{"title":"x"}')
    blob = _signed(msgspec.msgpack.encode(record))
    assert registry.offer([("meta/" + entry_key(OWNER.public_key, "echo"), blob)]) == 0
    assert [e.metadata for e in registry.view()] == [{}]
