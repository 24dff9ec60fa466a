"""What the immune system writes into the policies CRDT, and how it reads it back.

Two policy kinds, both signed by the issuing node (whose certificate must carry the
`immune` role, `IMMUNE_ROLE`):

- `mitigation`: block an origin, a mesh node or a tool until the grant expires. The body
  names the target and carries the policy note (which pattern or rule asked, the
  evidence, what was done, until when) and, for a node block, the observers whose
  observations made the quorum.
- `observation`: "I saw bad envelopes from node X": short-lived; a node block needs
  observations of the same subject from a quorum of members.

A body that does not decode as its kind says is ignored (counted by the reader): a
policy is data from another node, never trusted to be well-formed. Every string and list
in a body has a length bound (`MAX_TARGET_CHARS`, `MAX_NOTE_CHARS`, `MAX_OBSERVERS`);
over it, the body does not decode.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Annotated, Final, TypeVar, get_args

import msgspec

from vsmcp.crdt.policies import Policy
from vsmcp.node.vsm.mitigation import TargetKind

MITIGATION_KIND: Final = "mitigation"
OBSERVATION_KIND: Final = "observation"
IMMUNE_KINDS: Final = frozenset({MITIGATION_KIND, OBSERVATION_KIND})
IMMUNE_ROLE: Final = "immune"
TARGET_KINDS: Final[frozenset[str]] = frozenset(get_args(TargetKind))
MAX_TARGET_CHARS: Final = 200
MAX_NOTE_CHARS: Final = 1000
# Observers named in a node block: far more than any quorum (`quorum_max` is a few), so
# a block issued here always carries enough; a longer list from the network is refused.
MAX_OBSERVERS: Final = 64

_Text = Annotated[str, msgspec.Meta(max_length=MAX_NOTE_CHARS)]
_Target = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TARGET_CHARS)]


class PolicyNote(msgspec.Struct, frozen=True, kw_only=True):
    """Why a mitigation exists, for the operator reading `/api/policies` or the audit
    log: `source` (`pattern:<name>`, `s5:<rule>`), `reason`, `evidence` (counts, the
    last event), `action` (what was done), `until` (UTC, ISO 8601)."""

    source: _Text
    reason: _Text
    evidence: _Text = ""
    action: _Text
    until: _Text


class MitigationBody(msgspec.Struct, frozen=True, kw_only=True):
    target_kind: TargetKind
    target: _Target
    note: PolicyNote
    # Node ids whose observations made the quorum (node blocks only).
    observers: Annotated[tuple[_Target, ...], msgspec.Meta(max_length=MAX_OBSERVERS)] = ()


class ObservationBody(msgspec.Struct, frozen=True, kw_only=True):
    subject: _Target  # the node id seen misbehaving
    reason: _Text
    count: int = 0
    evidence: _Text = ""


def mitigation_id(target_kind: str, target: str) -> str:
    """One policy id per target and issuer: a new block of the same target replaces the
    old one (a higher version) instead of piling up."""
    return f"{target_kind}:{target}"[: MAX_TARGET_CHARS + 16]


def observation_id(subject: str) -> str:
    return f"observed:{subject}"[: MAX_TARGET_CHARS + 16]


def iso_utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def body_of(body: MitigationBody | ObservationBody | PolicyNote) -> dict[str, object]:
    """The grant body (a JSON object) for a struct."""
    data: dict[str, object] = msgspec.to_builtins(body)
    return data


_B = TypeVar("_B", MitigationBody, ObservationBody)


def _decoded(policy: Policy, kind: str, cls: type[_B]) -> _B | None:
    if policy.kind != kind:
        return None
    try:
        return msgspec.convert(policy.body, cls)
    except msgspec.ValidationError:
        return None


def mitigation_of(policy: Policy) -> MitigationBody | None:
    """The mitigation a policy carries, or None when its body is not one."""
    return _decoded(policy, MITIGATION_KIND, MitigationBody)


def observation_of(policy: Policy) -> ObservationBody | None:
    """The observation a policy carries, or None when its body is not one."""
    return _decoded(policy, OBSERVATION_KIND, ObservationBody)


RolesOf = Callable[[bytes], Collection[str] | None]
"""The roles of the certificate a key holds (this node's, or an admitted peer's); None
for a key this node does not know."""


def immune_issuers(roles_of: RolesOf) -> Callable[[bytes, str], bool]:
    """The policies CRDT's `allowed_issuers`: immune policies from a node whose
    certificate carries the `immune` role (the authority may issue anything anyway)."""

    def allowed(issuer: bytes, kind: str) -> bool:
        if kind not in IMMUNE_KINDS:
            return False
        roles = roles_of(issuer)
        return roles is not None and IMMUNE_ROLE in roles

    return allowed
