"""How the policies CRDT and the mesh are tied: who may issue a policy is judged by the
roles in the issuer's certificate, known once the issuer is an admitted peer.

Records of an issuer not admitted yet are refused (and the refusal cached per blob): at
a restart, every policy another immune or publisher node issued comes back from the
snapshot before the mesh admits anyone. When that node is admitted, its records the doc
holds are judged again (`PolicyStore.reconsider_issuer`), so its blocks and observations
come into force without waiting for it to issue them again.
"""

from __future__ import annotations

from vsmcp.crdt.policies import PolicyStore
from vsmcp.node.peers.service import MeshService


def reconsider_on_admit(mesh: MeshService, policies: PolicyStore) -> None:
    """Each newly admitted peer's policy records are judged again, before whatever
    `mesh.on_admit` did already (the immune system then counts its quorums with them)."""
    then = mesh.on_admit

    def admitted(node_id: str) -> None:
        peer = mesh.peers.get(node_id)
        if peer is not None:
            policies.reconsider_issuer(peer.public_key)
        if then is not None:
            then(node_id)

    mesh.on_admit = admitted
