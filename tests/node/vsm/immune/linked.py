"""A policy store and an immune system tied to a real `MeshService` as the node ties
them (`vsmcp.node.app.immune_links`), for tests."""

from __future__ import annotations

from vsmcp.crdt.policies import PolicyStore
from vsmcp.crdt.signing import Ed25519Signer
from vsmcp.mesh.identity import node_id_from_public_key
from vsmcp.node.app.immune_links import link_node_blocks, quorum_members
from vsmcp.node.peers.service import MeshService
from vsmcp.node.vsm.immune import model
from vsmcp.node.vsm.immune.config import ImmuneConfig
from vsmcp.node.vsm.immune.service import ImmuneService

AUTHORITY = Ed25519Signer(b"\xaa" * 32)


def policy_store(mesh: MeshService, roles: model.RolesOf) -> PolicyStore:
    """`mesh`'s policy store: immune policies from the nodes `roles` names immune."""
    return PolicyStore(
        replica_id=mesh.public_key,
        authority_keys=[AUTHORITY.public_key],
        allowed_issuers=model.immune_issuers(roles),
    )


def immune_on(mesh: MeshService, store: PolicyStore) -> ImmuneService:
    """`mesh`'s immune system over `store`, its node blocks cutting `mesh`'s links."""
    immune = ImmuneService(
        policies=store,
        signer=mesh._key,
        config=ImmuneConfig(),
        protected={node_id_from_public_key(AUTHORITY.public_key)},
        alive=quorum_members(mesh),
        quorum_max=3,
    )
    link_node_blocks(mesh, immune)
    return immune
