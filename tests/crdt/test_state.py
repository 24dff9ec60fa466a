"""ReplicatedState: snapshots round trip, tampering rejected, restore after restart."""

from __future__ import annotations

import pytest

from tests.crdt.harness import Clock
from vsmcp.crdt.errors import MessageTooLarge, SnapshotInvalid
from vsmcp.crdt.signing import Ed25519Signer
from vsmcp.crdt.state import ReplicatedState, open_snapshot, snapshot_id

NODE = Ed25519Signer(b"\x07" * 32)
AUTHORITY = Ed25519Signer(b"\x08" * 32)


def populated(clock: Clock) -> ReplicatedState:
    state = ReplicatedState(
        replica_id=NODE.public_key, authority_keys=[AUTHORITY.public_key], clock=clock
    )
    state.registry.announce(NODE, "echo", zone="public", input_schema={"type": "object"})
    state.registry.announce(NODE, "gone", zone="ops")
    state.registry.retire(NODE.public_key, by=NODE, names=["gone"])
    state.policies.issue(AUTHORITY, "zones", "zone_rule", {"public": 1}, ttl_ms=60_000)
    first = state.graph.record(NODE, "start")
    state.graph.record(NODE, "announce", parents=[first.id])
    return state


def summary(state: ReplicatedState) -> tuple[object, ...]:
    return (
        state.registry.view(),
        state.policies.view(),
        [(e.id, e.parents) for e in state.graph.events()],
        state.registry.held(f"{NODE.public_key.hex()}/gone").checked.live,  # type: ignore[union-attr]
    )


def test_snapshot_round_trip_across_restart_and_compaction() -> None:
    clock = Clock()
    state = populated(clock)
    state.registry.compact()
    snapshot = state.snapshot(NODE)
    assert len(snapshot_id(snapshot)) == 64
    restarted = ReplicatedState(
        replica_id=NODE.public_key, authority_keys=[AUTHORITY.public_key], clock=clock
    )
    restarted.restore(snapshot, trusted_signers=[NODE.public_key])
    assert summary(restarted) == summary(state)
    assert restarted.registry.epoch == state.registry.epoch
    # restoring twice is harmless
    restarted.restore(snapshot, trusted_signers=[NODE.public_key])
    assert summary(restarted) == summary(state)


def test_tampered_or_untrusted_snapshot_rejected_before_use() -> None:
    clock = Clock()
    snapshot = populated(clock).snapshot(NODE)
    fresh = ReplicatedState(replica_id=NODE.public_key, clock=clock)
    for position in (0, 10, len(snapshot) // 2, len(snapshot) - 70, len(snapshot) - 1):
        tampered = bytearray(snapshot)
        tampered[position] ^= 0x40
        with pytest.raises(SnapshotInvalid):
            fresh.restore(bytes(tampered), trusted_signers=[NODE.public_key])
    with pytest.raises(SnapshotInvalid):
        fresh.restore(snapshot, trusted_signers=[AUTHORITY.public_key])
    with pytest.raises(SnapshotInvalid):
        fresh.restore(snapshot[:50], trusted_signers=[NODE.public_key])
    with pytest.raises(MessageTooLarge):
        open_snapshot(snapshot, trusted_signers=[NODE.public_key], max_bytes=100)
    assert fresh.registry.view() == [] and fresh.graph.events() == []


def test_two_states_sync_through_the_facade_and_tick_compacts() -> None:
    clock = Clock()
    a = populated(clock)
    b = ReplicatedState(
        replica_id=b"\x09" * 32,
        authority_keys=[AUTHORITY.public_key],
        clock=clock,
        compact_threshold_bytes=200,
    )
    for request in b.make_sync_request():
        for reply in a.handle(b"b", request):
            assert b.handle(b"a", reply) == []
    assert summary(b) == summary(a)
    assert set(b.tick()) >= {"registry"}
    for request in a.make_sync_request():
        for reply in b.handle(b"a", request):
            for answer in a.handle(b"b", reply):
                b.handle(b"a", answer)
    assert a.registry.epoch == b.registry.epoch
    assert summary(b) == summary(a)


def test_live_content_above_the_threshold_is_not_compacted_every_tick() -> None:
    clock = Clock()
    state = ReplicatedState(
        replica_id=NODE.public_key,
        authority_keys=[AUTHORITY.public_key],
        clock=clock,
        compact_threshold_bytes=2_000,
    )
    for i in range(40):  # live content alone well above the threshold
        state.registry.announce(NODE, f"tool-{i:02d}", zone="public")
    assert "registry" in state.tick()
    epoch = state.registry.epoch
    for _ in range(5):
        assert "registry" not in state.tick()
    assert state.registry.epoch == epoch
    # Churn that doubles the doc since the last compaction triggers the next one.
    # 60 rounds grow it about 4x; 20 rounds land right at 2x, and whether that
    # crosses depends on the random Yjs client id's varint length.
    for round_ in range(60):
        for i in range(40):
            state.registry.announce(NODE, f"tool-{i:02d}", zone="public", description=str(round_))
    assert "registry" in state.tick()
    assert state.registry.epoch > epoch
