"""Replicated state on pycrdt. Imports nothing from `mesh` or `node`.

Entry point for the node: `crdt.state.ReplicatedState`. Design rules (verification,
repair, tombstones, epochs): `crdt.replica`; wire protocol: `crdt.sync`.
"""
