"""The policy agent's decision in pure Python: the reference `native/` is tested against.

A request is refused when a live mitigation covers it, in the order the node's gate
(`ImmuneService.check_call`) looks: the caller's origin, the origin an entry node named
(not a node-local one), the client's address, the entry node, the tool; then by the zone
rule (`zone_allows`): a caller may call a tool whose zone ranks at or below its own, an
unknown zone is a denial. Of several live blocks of one target the one expiring last
decides (the smallest key among equals).

A decision is `{"allowed", "by", "policy", "key", "expires_at_ms", "reason"}`: `by` is
`"mitigation"` (`policy` its id, `key` its CRDT key, `reason` what it matched: `caller`,
`entry node` or `tool`) or `"zone"` (`reason`: `unknown_caller_zone`,
`unknown_tool_zone`, `below_tool_zone`), all null when allowed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from vsmcp.node.policyagent.errors import BadPolicySet, BadRequest
from vsmcp.node.vsm.immune.service import canonical_origin, is_node_local

MAX_ZONES: Final = 64
TARGET_KINDS: Final = ("origin", "node", "tool")
ALLOWED: Final[Mapping[str, Any]] = {
    "allowed": True,
    "by": None,
    "policy": None,
    "key": None,
    "expires_at_ms": None,
    "reason": None,
}


@dataclass(frozen=True, slots=True)
class AgentBlock:
    key: str
    policy: str
    expires_at_ms: int | float


def _str(item: Mapping[str, Any], key: str, error: type[Exception]) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise error(f"{key!r} must be a string")
    return value


def _opt_str(item: Mapping[str, Any], key: str) -> str | None:
    """null, absent and "" are all none (as the node's gate reads them)."""
    value = item.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{key!r} must be a string or null")
    return value


def _number(item: Mapping[str, Any], key: str, error: type[Exception]) -> int | float:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(f"{key!r} must be a number")
    return value


def _list(item: Mapping[str, Any], key: str, error: type[Exception]) -> Sequence[Any]:
    value = item.get(key)
    if not isinstance(value, list):
        raise error(f"{key!r} must be a list")
    return value


def _zone_ranks(doc: Mapping[str, Any]) -> dict[str, int]:
    zones = _list(doc, "zones", BadPolicySet)
    if not 0 < len(zones) <= MAX_ZONES:
        raise BadPolicySet(f"'zones' must list 1..{MAX_ZONES} zones")
    if not all(isinstance(z, str) for z in zones):
        raise BadPolicySet("'zones' must be a list of strings")
    ranks = {zone: rank for rank, zone in enumerate(zones)}
    if len(ranks) != len(zones):
        raise BadPolicySet("a zone is listed twice")
    return ranks


class PolicySet:
    """A loaded policy set (`{"zones": [...], "blocks": [...]}`, other fields ignored)."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        if not isinstance(doc, Mapping):
            raise BadPolicySet("a policy set is a JSON object")
        self._ranks = _zone_ranks(doc)
        self._blocks: dict[tuple[str, str], list[AgentBlock]] = {}
        items = _list(doc, "blocks", BadPolicySet)
        for item in items:
            if not isinstance(item, Mapping):
                raise BadPolicySet("a block is a JSON object")
            kind = _str(item, "target_kind", BadPolicySet)
            if kind not in TARGET_KINDS:
                raise BadPolicySet(f"unknown target_kind {kind!r}")
            target = _str(item, "target", BadPolicySet)
            if kind == "origin":
                target = canonical_origin(target)
            block = AgentBlock(
                key=_str(item, "key", BadPolicySet),
                policy=_str(item, "policy", BadPolicySet),
                expires_at_ms=_number(item, "expires_at_ms", BadPolicySet),
            )
            self._blocks.setdefault((kind, target), []).append(block)
        self.block_count = len(items)

    def _find(self, kind: str, target: str, now_ms: int | float) -> AgentBlock | None:
        held = self._blocks.get((kind, target))
        if not held:
            return None
        live = [b for b in held if b.expires_at_ms > now_ms]
        return min(live, key=lambda b: (-b.expires_at_ms, b.key)) if live else None

    def decide(self, request: Mapping[str, Any], now_ms: int | float) -> dict[str, Any]:
        """The decision on one request (see the module's docstring)."""
        if not isinstance(request, Mapping):
            raise BadRequest("a request is a JSON object")
        origin = _str(request, "origin", BadRequest)
        entry_origin = _opt_str(request, "entry_origin")
        client_addr = _opt_str(request, "client_addr")
        entry_node = _opt_str(request, "entry_node")
        tool = _str(request, "tool", BadRequest)
        caller_zone = _str(request, "caller_zone", BadRequest)
        tool_zone = _str(request, "tool_zone", BadRequest)
        if self.block_count:
            named = entry_origin if entry_origin and not is_node_local(entry_origin) else None
            address = canonical_origin(f"addr:{client_addr}") if client_addr else None
            candidates = (
                ("origin", origin, "caller"),
                ("origin", named, "caller"),
                ("origin", address, "caller"),
                ("node", entry_node, "entry node"),
                ("tool", tool, "tool"),
            )
            for kind, target, what in candidates:
                block = None if target is None else self._find(kind, target, now_ms)
                if block is not None:
                    return {
                        "allowed": False,
                        "by": "mitigation",
                        "policy": block.policy,
                        "key": block.key,
                        "expires_at_ms": block.expires_at_ms,
                        "reason": what,
                    }
        caller_rank = self._ranks.get(caller_zone)
        tool_rank = self._ranks.get(tool_zone)
        if caller_rank is None:
            return _zone_denial("unknown_caller_zone")
        if tool_rank is None:
            return _zone_denial("unknown_tool_zone")
        if tool_rank > caller_rank:
            return _zone_denial("below_tool_zone")
        return dict(ALLOWED)

    def evaluate(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """`{"now_ms": N, "requests": [...]}` → `{"decisions": [...]}`, as the agent's
        `evaluate` answers."""
        if not isinstance(batch, Mapping):
            raise BadRequest("a batch is a JSON object")
        now_ms = _number(batch, "now_ms", BadRequest)
        requests = _list(batch, "requests", BadRequest)
        decisions = []
        for i, request in enumerate(requests):
            try:
                decisions.append(self.decide(request, now_ms))
            except BadRequest as e:
                raise BadRequest(f"requests[{i}]: {e}") from None
        return {"decisions": decisions}


def _zone_denial(reason: str) -> dict[str, Any]:
    return {**ALLOWED, "allowed": False, "by": "zone", "reason": reason}
