"""Signed gray-failure observations over real, replicating policy stores: one caller's
observation does not make a quorum, two of three members do, never the provider's own
vote; a recovery revokes; members unknown to the CRDT cannot publish."""

from __future__ import annotations

import pytest

from tests.crdt.harness import Clock
from vsmcp.crdt.errors import NotAuthorized
from vsmcp.crdt.policies import PolicyStore
from vsmcp.crdt.signing import Ed25519Signer
from vsmcp.mesh.identity import node_id_from_public_key
from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.routing.degraded import Key
from vsmcp.node.routing.gray_config import GrayConfig
from vsmcp.node.routing.gray_exchange import GRAY_KIND, GrayExchange, gray_issuers


class Mesh:
    def __init__(self, count: int) -> None:
        self.clock = Clock()
        signers = [Ed25519Signer(bytes([i + 1]) * 32) for i in range(count)]
        members = {s.public_key: ("tools",) for s in signers}
        self.ids = [node_id_from_public_key(s.public_key) for s in signers]
        self.stores: list[PolicyStore] = []
        self.exchanges: list[GrayExchange] = []
        self.confirmed: list[set[Key]] = []
        for i, signer in enumerate(signers):
            store = PolicyStore(
                replica_id=signer.public_key,
                allowed_issuers=gray_issuers(members.get),
                clock=self.clock,
            )
            self.confirmed.append(set())
            self.exchanges.append(
                GrayExchange(
                    LoopSupervisor(),
                    policies=store,
                    signer=signer,
                    config=GrayConfig(observation_ttl_s=30.0),
                    alive=lambda: self.ids,
                    quorum_max=3,
                    on_quorum=lambda keys, i=i: self._set(i, keys),
                    clock_ms=self.clock,
                )
            )
            self.stores.append(store)

    def _set(self, i: int, keys: set[Key]) -> None:
        self.confirmed[i] = keys

    def sync(self) -> None:
        for _ in range(2):
            for source in self.stores:
                records = source.retained_records()
                for target in self.stores:
                    if target is not source:
                        target.offer(records)


def test_a_quorum_of_callers_other_than_the_provider_confirms() -> None:
    mesh = Mesh(3)
    provider, c1, c2 = mesh.ids
    key = (provider, "tool")
    mesh.exchanges[1].local_changed(key, True, "hang")
    mesh.sync()
    assert all(c == set() for c in mesh.confirmed)  # one vote of the two needed
    # The provider observing itself does not count.
    mesh.exchanges[0].local_changed(key, True, "self")
    mesh.sync()
    assert all(c == set() for c in mesh.confirmed)
    mesh.exchanges[2].local_changed(key, True, "hang")
    mesh.sync()
    assert all(c == {key} for c in mesh.confirmed)
    assert mesh.exchanges[0].view()["observations"][0]["observers"] == sorted([c1, c2])
    mesh.exchanges[2].local_changed(key, False)
    mesh.sync()
    assert all(c == set() for c in mesh.confirmed)
    assert mesh.exchanges[2].stats["revoked"] == 1


def test_observations_expire_unless_refreshed() -> None:
    mesh = Mesh(3)
    key = (mesh.ids[0], "tool")
    for i in (1, 2):
        mesh.exchanges[i].local_changed(key, True, "hang")
    mesh.sync()
    assert mesh.confirmed[0] == {key}
    mesh.clock.now_ms += 20_000
    mesh.exchanges[1].refresh()  # past half its life: republished
    mesh.sync()
    mesh.clock.now_ms += 15_000
    mesh.exchanges[0].check()
    assert mesh.confirmed[0] == set()  # caller 2's expired, only caller 1's is live
    assert mesh.exchanges[1].stats["refreshed"] == 1


def test_a_stranger_cannot_publish_and_a_bad_body_is_counted() -> None:
    mesh = Mesh(2)
    stranger = Ed25519Signer(b"\x77" * 32)
    with pytest.raises(NotAuthorized):
        mesh.stores[0].issue(stranger, "gray:x:y", GRAY_KIND, {"provider": "x"}, ttl_ms=1000)
    member = Ed25519Signer(bytes([2]) * 32)
    mesh.stores[0].issue(member, "gray:bad", GRAY_KIND, {"nonsense": 1}, ttl_ms=1000)
    assert mesh.exchanges[0].stats["bad_bodies"] == 1


def test_publishing_is_capped_and_rate_limited() -> None:
    mesh = Mesh(2)
    exchange = mesh.exchanges[0]
    exchange.config = GrayConfig(max_observations=2, max_observations_per_minute=3)
    for i in range(3):
        exchange.local_changed((mesh.ids[1], f"t{i}"), True, "x")
    assert exchange.stats == {"published": 2, "over_cap": 1}
    exchange.local_changed((mesh.ids[1], "t0"), False)
    exchange.local_changed((mesh.ids[1], "t3"), True, "x")
    exchange.local_changed((mesh.ids[1], "t1"), False)
    exchange.local_changed((mesh.ids[1], "t4"), True, "x")
    assert exchange.stats["rate_limited"] == 1
