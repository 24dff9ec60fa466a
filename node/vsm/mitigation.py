"""The contract between System 5's responses and the immune system.

The algedonic channel's System 5 rules (block an origin, quarantine a tool) and the
pattern engine's `policy` actions both end in a mitigation: a signed, replicated,
self-expiring policy. Whoever issues them (the immune service) implements `Mitigator`;
the node hands it to the components that ask. Kept here, apart from both, so neither
imports the other.
"""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec

# What a mitigation aims at: a caller (`http:<token>`, `stdio`, `addr:<client ip>`),
# a mesh node (its node id, hex), or one tool (quarantined mesh-wide).
TargetKind = Literal["origin", "node", "tool"]


class MitigationRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Block `target` (of `target_kind`) for `ttl_s` seconds. `source` names who asks
    (`pattern:<name>`, `s5:<rule>`), `reason` why, `evidence` a short summary of what
    was seen (counts, the last event), kept in the policy note."""

    target_kind: TargetKind
    target: str
    ttl_s: float
    source: str
    reason: str
    evidence: str = ""


class MitigationOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What came of a request: `issued` (with the policy id), or why not
    (`refused`: protected target, rate limit, no `immune` role; `pending`: waiting for a
    quorum of observations; `duplicate`: an active policy already covers it)."""

    status: Literal["issued", "refused", "pending", "duplicate"]
    policy_id: str | None = None
    detail: str = ""


class Mitigator(Protocol):
    """Issues mitigation policies. Must not block the event loop: slow work (signing,
    writing the CRDT, asking peers) happens in tasks its owner keeps."""

    def mitigate(self, request: MitigationRequest) -> MitigationOutcome: ...
