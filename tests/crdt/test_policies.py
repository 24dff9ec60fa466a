"""Policies: issuer checks, the hot-apply change callback and the cap per issuer."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.crdt.harness import Clock
from vsmcp.crdt.errors import NotAuthorized, OverCap
from vsmcp.crdt.policies import (
    DEFAULT_REVOCATION_TTL_MS,
    AllowedIssuers,
    Policy,
    PolicyStore,
    policy_key,
    sign_revocation,
)
from vsmcp.crdt.replica import EXPIRY_GRACE_MS, Change
from vsmcp.crdt.signing import Ed25519Signer
from vsmcp.crdt.sync import SyncEndpoint

AUTHORITY = Ed25519Signer(b"\x01" * 32)
IMMUNE_NODE = Ed25519Signer(b"\x02" * 32)
STRANGER = Ed25519Signer(b"\x03" * 32)


def allowed(issuer: bytes, kind: str) -> bool:
    return issuer == IMMUNE_NODE.public_key and kind == "block"


def pair(clock: Clock) -> tuple[PolicyStore, PolicyStore, list[Change[Policy]]]:
    local = PolicyStore(
        replica_id=b"l", authority_keys=[AUTHORITY.public_key], allowed_issuers=allowed, clock=clock
    )
    remote = PolicyStore(
        replica_id=b"r", authority_keys=[AUTHORITY.public_key], allowed_issuers=allowed, clock=clock
    )
    remote_endpoint = SyncEndpoint([remote])
    local_endpoint = SyncEndpoint([local])
    local_endpoint.on_update(lambda message: remote_endpoint.handle(message) and None)
    changes: list[Change[Policy]] = []
    remote.on_change(changes.append)
    return local, remote, changes


def test_change_callback_fires_for_remote_add_change_revoke_and_expiry() -> None:
    clock = Clock()
    local, remote, changes = pair(clock)
    local.issue(AUTHORITY, "zones", "zone_rule", {"ops": ["deploy"]}, ttl_ms=60_000)
    assert [p.body for p in changes[-1].added] == [{"ops": ["deploy"]}]
    local.issue(AUTHORITY, "zones", "zone_rule", {"ops": []}, ttl_ms=60_000)
    assert [p.body for p in changes[-1].changed] == [{"ops": []}]
    local.issue(IMMUNE_NODE, "block-1", "block", {"origin": "10.0.0.9"}, ttl_ms=1_000)
    assert [p.id for p in changes[-1].added] == ["block-1"]
    assert local.revoke(AUTHORITY.public_key, "zones", by=AUTHORITY)
    assert [p.id for p in changes[-1].removed] == ["zones"]
    assert [p.id for p in remote.view()] == ["block-1"]
    clock.now_ms += 1_000  # the block expires: applied without any message
    count = len(changes)
    remote.prune()
    assert len(changes) == count + 1 and [p.id for p in changes[-1].removed] == ["block-1"]
    assert remote.view() == []


def test_local_changes_fire_too_and_issuers_are_checked() -> None:
    clock = Clock()
    local, _, _ = pair(clock)
    seen: list[Change[Policy]] = []
    local.on_change(seen.append)
    local.issue(AUTHORITY, "r", "rate_limit", {"per_s": 10}, ttl_ms=10_000)
    assert seen[-1].added[0].body == {"per_s": 10}
    with pytest.raises(NotAuthorized):
        local.issue(IMMUNE_NODE, "r2", "zone_rule", {}, ttl_ms=10_000)  # not its kind
    with pytest.raises(NotAuthorized):
        local.issue(STRANGER, "r3", "block", {}, ttl_ms=10_000)
    with pytest.raises(NotAuthorized):
        local.revoke(AUTHORITY.public_key, "r", by=IMMUNE_NODE)


def test_unauthorized_grant_written_by_a_replica_never_applies() -> None:
    clock = Clock()
    _, remote, changes = pair(clock)
    rogue = PolicyStore(replica_id=b"x", allowed_issuers=lambda issuer, kind: True, clock=clock)
    rogue_endpoint = SyncEndpoint([rogue])
    remote_endpoint = SyncEndpoint([remote])
    rogue.issue(STRANGER, "block-all", "block", {"origin": "*"}, ttl_ms=10_000)
    for message in rogue_endpoint.make_sync_request():
        for reply in remote_endpoint.handle(message):
            rogue_endpoint.handle(reply)
    for message in remote_endpoint.make_sync_request():
        for reply in rogue_endpoint.handle(message):
            remote_endpoint.handle(reply)
    assert len(rogue.view()) == 1
    assert remote.view() == [] and changes == []


def writer(clock: Clock) -> PolicyStore:
    """A replica that lets anyone issue anything, uncapped: what a hostile peer writes."""
    return PolicyStore(
        replica_id=b"w",
        allowed_issuers=lambda issuer, kind: True,
        clock=clock,
        max_per_issuer=10**6,
    )


def capped(
    clock: Clock, cap: int, replica_id: bytes = b"c", issuers: AllowedIssuers = allowed
) -> PolicyStore:
    return PolicyStore(
        replica_id=replica_id,
        authority_keys=[AUTHORITY.public_key],
        allowed_issuers=issuers,
        clock=clock,
        max_per_issuer=cap,
    )


def test_a_local_write_over_the_cap_is_refused_but_a_new_version_and_the_authority_pass() -> None:
    store = capped(Clock(), cap=2)
    store.issue(IMMUNE_NODE, "b", "block", {}, ttl_ms=10_000)
    store.issue(IMMUNE_NODE, "c", "block", {}, ttl_ms=10_000)
    with pytest.raises(OverCap):
        store.issue(IMMUNE_NODE, "a", "block", {}, ttl_ms=10_000)
    store.issue(IMMUNE_NODE, "c", "block", {"v": 2}, ttl_ms=10_000)  # a key it holds
    for n in range(5):
        store.issue(AUTHORITY, f"zone-{n}", "zone_rule", {}, ttl_ms=10_000)
    assert store.get(IMMUNE_NODE.public_key, "c") is not None
    assert len(store.view()) == 7 and store.over_cap == Counter()


def pull(into: PolicyStore, source: PolicyStore) -> None:
    """One anti-entropy round: `into` asks `source` for what it lacks (Yjs updates)."""
    into_endpoint, source_endpoint = SyncEndpoint([into]), SyncEndpoint([source])
    for message in into_endpoint.make_sync_request():
        for reply in source_endpoint.handle(message):
            into_endpoint.handle(reply)


def test_replicated_records_over_the_cap_keep_the_lowest_ids_and_are_counted() -> None:
    clock = Clock()
    rogue = writer(clock)
    for n in (5, 3, 4, 1):
        rogue.issue(IMMUNE_NODE, f"block-{n}", "block", {}, ttl_ms=10_000)
    store = capped(clock, cap=2)
    changes: list[Change[Policy]] = []
    store.on_change(changes.append)
    records = rogue.retained_records()
    assert store.offer(records[:3]) == 2  # 5, then 3; 4 pushes 5 out
    assert [p.id for p in store.view()] == ["block-3", "block-4"]
    assert store.offer(records[3:]) == 1  # block-1 pushes out the highest
    assert [p.id for p in store.view()] == ["block-1", "block-3"]
    assert [p.id for p in changes[-1].removed] == ["block-4"]
    assert store.over_cap == Counter({"block": 2})
    # block-5, evicted within the offer that took it, was never written into the doc;
    # block-4 was, and stays there (unread) until a compaction sheds it.
    assert sorted(key.rsplit("/")[1] for key, _ in store.raw_items()) == [
        "block-1",
        "block-3",
        "block-4",
    ]
    store.compact()
    assert len(store.raw_items()) == 2
    # The same records as Yjs updates: the same set, and a refused key is not repaired.
    other = capped(clock, cap=2, replica_id=b"o")
    pull(other, rogue)
    assert [p.id for p in other.view()] == ["block-1", "block-3"]
    assert other.over_cap["block"] == 2
    assert len(other.raw_items()) == 4  # the doc carries them; `best` does not
    assert len(other.retained_records()) == 2


def test_a_tombstone_holds_its_slot_until_it_is_forgotten() -> None:
    clock = Clock()
    store = capped(clock, cap=1)
    store.issue(IMMUNE_NODE, "a", "block", {}, ttl_ms=1_000)
    assert store.revoke(IMMUNE_NODE.public_key, "a", by=AUTHORITY)
    with pytest.raises(OverCap):
        store.issue(IMMUNE_NODE, "b", "block", {}, ttl_ms=1_000)
    clock.now_ms += DEFAULT_REVOCATION_TTL_MS + EXPIRY_GRACE_MS
    assert store.prune() == 1
    store.issue(IMMUNE_NODE, "b", "block", {}, ttl_ms=1_000)
    assert [p.id for p in store.view()] == ["b"]


@st.composite
def histories(draw: st.DrawFn) -> tuple[int, list[tuple[str, bytes]], list[int]]:
    """Records of two non-authority issuers (grants of a few versions, revocations),
    a cap and an order to deliver them in."""
    clock = Clock()
    source = writer(clock)
    records: list[tuple[str, bytes]] = []
    issuers = (IMMUNE_NODE, STRANGER)
    for _ in range(draw(st.integers(1, 14))):
        by = draw(st.sampled_from(issuers))
        policy_id = draw(st.sampled_from("abcdefg"))
        if draw(st.booleans()):
            version = draw(st.integers(1, 3))
            key = policy_key(by.public_key, policy_id)
            before = source.held(key)
            if before is None or before.checked.rank[0] < version:
                source.issue(by, policy_id, "block", {}, ttl_ms=60_000, version=version)
            held = source.held(key)
            assert held is not None
            records.append((held.checked.key, held.blob))
        else:
            blob = sign_revocation(
                by, by.public_key, policy_id, draw(st.integers(1, 3)), now_ms=clock.now_ms
            )
            records.append((policy_key(by.public_key, policy_id), blob))
    order = draw(st.permutations(range(len(records))))
    return draw(st.integers(1, 4)), records, order


@settings(max_examples=150, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_replicas_given_the_same_records_in_any_order_enforce_the_same_set(
    history: tuple[int, list[tuple[str, bytes]], list[int]], rng: random.Random
) -> None:
    cap, records, order = history
    clock = Clock()
    one = capped(clock, cap, b"1", issuers=lambda issuer, kind: True)
    two = capped(clock, cap, b"2", issuers=lambda issuer, kind: True)
    one.offer(records)
    shuffled = [records[i] for i in order]
    batch = rng.randint(1, len(shuffled))
    for start in range(0, len(shuffled), batch):
        two.offer(shuffled[start : start + batch])
    assert one.view() == two.view()
    assert sorted(one.retained_records()) == sorted(two.retained_records())
    for issuer in (IMMUNE_NODE, STRANGER):
        held = [key for key, _ in one.retained_records() if key.startswith(issuer.public_key.hex())]
        assert len(held) <= cap


def test_records_refused_while_their_issuer_was_unknown_enter_once_it_is_reconsidered() -> None:
    # What a node restores from its snapshot before the mesh admits anyone: another
    # immune node's block, whose issuer's role is known only once that node is admitted.
    clock = Clock()
    source = capped(clock, 10, b"s")
    source.issue(IMMUNE_NODE, "block-1", "block", {"origin": "10.0.0.9"}, ttl_ms=60_000)
    source.issue(AUTHORITY, "zones", "zone_rule", {"ops": []}, ttl_ms=60_000)
    known: set[bytes] = set()

    def issuers(issuer: bytes, kind: str) -> bool:
        return issuer in known and allowed(issuer, kind)

    restored = capped(clock, 10, b"n", issuers)
    changes: list[Change[Policy]] = []
    restored.on_change(changes.append)
    restored.load_state(source.epoch, source.full_state())
    assert [p.id for p in restored.view()] == ["zones"]
    refused = restored.rejected["block"]
    assert refused == 1
    # The issuer is admitted; a peer sending the same state changes nothing in the doc,
    # so the cached refusal stands: the block stays unenforced.
    known.add(IMMUNE_NODE.public_key)
    restored.load_state(source.epoch, source.full_state())
    assert [p.id for p in restored.view()] == ["zones"]
    # Reconsidered once the issuer is known: the block enters, and listeners hear of it.
    restored.reconsider_issuer(IMMUNE_NODE.public_key)
    assert sorted(p.id for p in restored.view()) == ["block-1", "zones"]
    assert [p.id for p in changes[-1].added] == ["block-1"]
    # Reconsidering again, or an issuer still not allowed, changes nothing.
    count = len(changes)
    restored.reconsider_issuer(IMMUNE_NODE.public_key)
    restored.reconsider_issuer(STRANGER.public_key)
    assert len(changes) == count
    assert restored.rejected["block"] == refused


def test_reconsidering_an_issuer_still_not_allowed_keeps_its_records_out() -> None:
    clock = Clock()
    source = writer(clock)
    source.issue(STRANGER, "block-all", "block", {"origin": "*"}, ttl_ms=60_000)
    restored = capped(clock, 10)
    restored.load_state(source.epoch, source.full_state())
    restored.reconsider_issuer(STRANGER.public_key)
    assert restored.view() == []
    assert restored.rejected["block"] == 2  # judged again, refused again
