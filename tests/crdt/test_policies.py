"""Policies: issuer checks and the hot-apply change callback."""

from __future__ import annotations

import pytest

from tests.crdt.harness import Clock
from vsmcp.crdt.errors import NotAuthorized
from vsmcp.crdt.policies import Policy, PolicyStore
from vsmcp.crdt.replica import Change
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
