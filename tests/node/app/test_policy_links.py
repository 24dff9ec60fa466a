"""node.app.policy_links: policies another immune node issued, restored from the
snapshot before the mesh admits anyone (refused then: the issuer's role is not known),
come into force once that node is admitted, without it issuing them again.

Two real `MeshService`s on loopback (ZeroMQ, signed envelopes, SWIM), in this process,
tied to a policy store and an immune system as the node ties them."""

from __future__ import annotations

from tests.integration.mesh_peer import dev_peer
from tests.node.vsm.immune.linked import immune_on, policy_store
from tests.polling import async_wait_for
from vsmcp.crdt.policies import PolicyStore, policy_key
from vsmcp.mesh.identity import NodeKey, node_id_from_public_key
from vsmcp.node.app.policy_links import reconsider_on_admit
from vsmcp.node.peers.service import MeshService
from vsmcp.node.vsm.immune import model

MESH = "policy-links"


def _snapshot(a: MeshService, b: MeshService, x: str) -> PolicyStore:
    """What a's previous run held: b's block of x and both nodes' observations of x."""
    source = PolicyStore(replica_id=b"s", allowed_issuers=lambda _issuer, _kind: True)
    note = model.PolicyNote(source="t", reason="r", evidence="", action="blocked node", until="")
    body = model.MitigationBody(target_kind="node", target=x, note=note, observers=())
    block_id = model.mitigation_id("node", x)
    source.issue(b._key, block_id, model.MITIGATION_KIND, model.body_of(body), ttl_ms=600_000)
    observation = model.body_of(model.ObservationBody(subject=x, reason="bad envelopes"))
    for node in (a, b):
        source.issue(
            node._key, model.observation_id(x), model.OBSERVATION_KIND, observation, ttl_ms=600_000
        )
    return source


async def test_a_restored_block_by_another_immune_node_comes_into_force_when_it_is_admitted() -> (
    None
):
    x = NodeKey.generate().node_id
    a = dev_peer("127.0.0.1", [], mesh_name=MESH, zone="public")
    async with a:
        b = dev_peer("127.0.0.1", [f"127.0.0.1:{a.port}"], mesh_name=MESH, zone="public")

        def roles(key: bytes) -> tuple[str, ...] | None:
            # Every member is an immune node here; a peer's role is known once admitted.
            known = key == a._key.public_key or node_id_from_public_key(key) in a.peers
            return (model.IMMUNE_ROLE,) if known else None

        # As the node starts: the snapshot restored, then the immune system started.
        store = policy_store(a, roles)
        source = _snapshot(a, b, x)
        store.load_state(source.epoch, source.full_state())
        immune = immune_on(a, store)
        reconsider_on_admit(a, store)
        key = policy_key(b._key.public_key, model.mitigation_id("node", x))
        assert store.held(key) is None  # refused: b's role is not known yet
        assert immune.blocks.get(key) is None and not a.cut_off(x)
        async with b:

            async def enforced() -> bool:
                return immune.blocks.get(key) is not None

            await async_wait_for(enforced, timeout_s=20, what="b admitted, its block in force")
            assert b.node_id in a.peers
            assert a.cut_off(x)
            assert immune.stats["issued"] == 0  # b's block, not one of a's own
