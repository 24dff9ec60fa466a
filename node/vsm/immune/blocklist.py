"""The mitigations in force on this node, indexed by target for the call path.

Filled from the policies CRDT as grants arrive (local or replicated) and emptied as
they are revoked or pruned; expiry is checked on every lookup, so a block ends on time
even before the CRDT's upkeep drops it. A lookup is two dict reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from vsmcp.node.vsm.immune.model import MitigationBody


@dataclass(frozen=True, slots=True)
class Block:
    key: str  # the policy's CRDT key (issuer hex / id)
    policy_id: str
    issuer: str  # node id
    target_kind: str
    target: str
    issued_at_ms: int
    expires_at_ms: int
    body: MitigationBody


class BlockList:
    def __init__(self) -> None:
        self._blocks: dict[str, Block] = {}
        self._by_target: dict[tuple[str, str], dict[str, Block]] = {}

    def put(self, block: Block) -> None:
        self.discard(block.key)
        self._blocks[block.key] = block
        self._by_target.setdefault((block.target_kind, block.target), {})[block.key] = block

    def discard(self, key: str) -> None:
        old = self._blocks.pop(key, None)
        if old is None:
            return
        index = (old.target_kind, old.target)
        held = self._by_target.get(index)
        if held is not None:
            held.pop(key, None)
            if not held:
                del self._by_target[index]

    def find(self, target_kind: str, target: str, now_ms: int) -> Block | None:
        """The live block of this target expiring last, if any (a tie: the smallest key,
        as the policy agent decides: node/policyagent/reference.py, native/src/policy.rs)."""
        held = self._by_target.get((target_kind, target))
        if not held:
            return None
        live = [b for b in held.values() if b.expires_at_ms > now_ms]
        return min(live, key=lambda b: (-b.expires_at_ms, b.key)) if live else None

    def get(self, key: str) -> Block | None:
        return self._blocks.get(key)

    def all(self) -> list[Block]:
        return sorted(self._blocks.values(), key=lambda b: (b.issued_at_ms, b.key))

    def __len__(self) -> int:
        return len(self._blocks)
