"""The immune system tied to real `MeshService`s as the node ties them
(`vsmcp.node.app.immune_links`): a node block held unconfirmed while its target is an
alive, admitted peer leaves the mesh working (no endless recursion through `refuses`),
and comes into force, cutting the peer's links, once the observations backing it arrive.

Two real `MeshService`s on loopback (ZeroMQ, signed envelopes, SWIM), in this process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.mesh_peer import dev_pair
from tests.node.vsm.immune.linked import immune_on, policy_store
from tests.polling import async_wait_for
from vsmcp.crdt.policies import policy_key
from vsmcp.crdt.signing import Ed25519Signer
from vsmcp.mesh.envelope import Envelope, MsgType
from vsmcp.node.peers.service import MeshService, Peer, PeerOnewayHandler
from vsmcp.node.vsm.immune import model

OTHER = Ed25519Signer(b"\x07" * 32)  # another immune-role node, not a member here


@pytest.fixture
async def pair() -> AsyncIterator[tuple[MeshService, MeshService]]:
    async with dev_pair("immune-links") as pair:
        yield pair


async def test_an_unconfirmed_block_of_an_alive_peer_keeps_the_mesh_working_until_backed(
    pair: tuple[MeshService, MeshService],
) -> None:
    a, b = pair

    async def linked() -> bool:
        return b.node_id in a.alive_peers() and a.node_id in b.alive_peers()

    await async_wait_for(linked, timeout_s=20, what="a and b admitted, alive")
    roles = {OTHER.public_key: (model.IMMUNE_ROLE,), a._key.public_key: (model.IMMUNE_ROLE,)}
    store = policy_store(a, roles.get)
    immune = immune_on(a, store)
    # Another immune node's block of b arrives before any observation of b.
    note = model.PolicyNote(source="t", reason="r", evidence="", action="blocked node", until="")
    body = model.MitigationBody(target_kind="node", target=b.node_id, note=note, observers=())
    store.issue(
        OTHER,
        model.mitigation_id("node", b.node_id),
        model.MITIGATION_KIND,
        model.body_of(body),
        ttl_ms=600_000,
    )
    key = policy_key(OTHER.public_key, model.mitigation_id("node", b.node_id))
    assert immune.blocks.get(key) is None  # held unconfirmed
    assert not a.cut_off(b.node_id)
    assert b.node_id in a.alive_peers()
    # The mesh's loops keep running both ways: b's envelopes reach a's handler, a's reach b.
    got_at_a: list[bytes] = []
    got_at_b: list[bytes] = []

    def at(into: list[bytes]) -> PeerOnewayHandler:
        def take(_peer: Peer, envelope: Envelope) -> None:
            into.append(envelope.payload)

        return take

    a.handle_oneway(MsgType.SYNC, at(got_at_a))
    b.handle_oneway(MsgType.SYNC, at(got_at_b))

    async def exchanged() -> bool:
        b.send(a.node_id, MsgType.SYNC, b"from b")
        a.send(b.node_id, MsgType.SYNC, b"from a")
        return b"from b" in got_at_a and b"from a" in got_at_b

    await async_wait_for(exchanged, timeout_s=20, what="envelopes both ways")
    assert b.node_id in a.peers and a.member_state(b.node_id) == "alive"
    assert immune.blocks.get(key) is None

    # a's observation of b arrives: a quorum of the members alive (1 of a, b's only other
    # member), so the block comes into force and b's links are cut.
    observation = model.ObservationBody(subject=b.node_id, reason="bad envelopes")
    store.issue(
        a._key,
        model.observation_id(b.node_id),
        model.OBSERVATION_KIND,
        model.body_of(observation),
        ttl_ms=60_000,
    )

    async def enforced() -> bool:
        return immune.blocks.get(key) is not None and b.node_id not in a.peers

    await async_wait_for(enforced, timeout_s=20, what="block confirmed, b cut off")
    assert a.cut_off(b.node_id) and b.node_id not in a.alive_peers()
    assert immune.stats["issued"] == 0  # the block in force was backed, not a new one

    async def refused() -> bool:
        return a.stats.dropped["blocked"] + a.stats.refused["blocked"] > 0

    await async_wait_for(refused, timeout_s=20, what="b's envelopes refused at a")
