"""Registry: owner-only overwrite, tombstone expiry without resurrection."""

from __future__ import annotations

import pytest

from tests.crdt.harness import Clock
from vsmcp.crdt.errors import StaleRecord
from vsmcp.crdt.registry import CapabilityRegistry, entry_key
from vsmcp.crdt.signing import Ed25519Signer

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
