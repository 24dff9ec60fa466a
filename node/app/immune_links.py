"""How the immune system and the mesh are tied: who a quorum counts, which links a
node block cuts.

A quorum counts the members the mesh holds alive (`MeshService.members_alive`), never
through `refuses`: that is the immune system's answer, which must not count a quorum
while the mesh asks it (it would ask the mesh again, without end). A node block held
unconfirmed comes into force in the immune system's scheduled quorum check, told of each
membership change and each admission; it cuts the blocked node's links then.
"""

from __future__ import annotations

from vsmcp.node.peers.service import MeshService
from vsmcp.node.vsm.immune.quorum import AliveMembers
from vsmcp.node.vsm.immune.service import ImmuneService


def quorum_members(mesh: MeshService) -> AliveMembers:
    """The members a quorum counts: this node and the peers it holds alive."""
    return lambda: [mesh.node_id, *mesh.members_alive()]


def link_node_blocks(mesh: MeshService, immune: ImmuneService) -> None:
    """A node block cuts the blocked node's mesh links while it lasts (HELLOs refused,
    envelopes dropped, none sent); those the immune system holds already too."""
    mesh.refuses = immune.node_blocked
    immune.on_node_block = mesh.cut
    # A node block held unconfirmed may be backed once a member is admitted again.
    mesh.on_admit = lambda _node_id: immune.members_changed()
    for block in immune.blocks.all():
        if block.target_kind == "node":
            mesh.cut(block.target)
