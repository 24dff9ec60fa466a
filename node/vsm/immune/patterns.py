"""The immune system's built-in patterns, for the node's one pattern engine (source
`vsm.immune`). Thresholds come from `[vsm.immune]`.

- `immune-bad-envelopes`: envelopes refused (bad signature, replay, malformed, sender
  mismatch) per sender (an admitted peer) → observe the peer; a quorum of observations
  blocks it;
- `immune-zone-denials`: zone denials at the entry node, per origin → block the origin;
- `immune-unknown-tools`, `immune-schema-errors`: calls to unknown tools, or with invalid
  arguments, at the entry node, per origin → block the origin;
- `immune-tool-errors`: failed calls of a tool this node served (error result, provider
  error, timeout), per tool → quarantine the tool here. Failures of another provider's
  copy count nowhere: a node serving a broken tool of the same name must not take the
  healthy copies away.

Only what the entry node saw counts against an origin (`entry_origin` absent): the
provider of a forwarded call sees the entry node as its origin (`mesh:<id>`), and one
caller's storm must not block a whole entry node. Calls refused by a mitigation
(`policy_blocked`) count nowhere, so a block does not feed itself.
"""

from __future__ import annotations

from typing import Any, Final

from vsmcp.node.vsm.events import NODE_CATALOG
from vsmcp.node.vsm.immune.config import ImmuneConfig
from vsmcp.node.vsm.patterns.model import Pattern, parse_patterns

SOURCE: Final = "vsm.immune"
BLOCK_ORIGIN: Final = "block_origin"
BLOCK_NODE: Final = "block_node"
QUARANTINE_TOOL: Final = "quarantine_tool"
BAD_ENVELOPE_REASONS: Final = ("bad_signature", "replay", "malformed", "sender_mismatch")
TOOL_FAILURES: Final = ("error_result", "provider_error", "timeout")

_AT_ENTRY: Final = {"field": "entry_origin", "op": "absent"}


def _window(count: int, within_s: float) -> dict[str, Any]:
    return {"count": count, "within_s": within_s}


def _origin_storm(name: str, outcome: str, cfg: ImmuneConfig) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "tool_call",
        "where": {"all": [{"field": "outcome", "op": "eq", "value": outcome}, _AT_ENTRY]},
        "group_by": "origin",
        "window": _window(cfg.storm_count, cfg.storm_window_s),
        "actions": [{"type": "policy", "policy": BLOCK_ORIGIN, "ttl_s": cfg.block_ttl_s}],
    }


def immune_patterns(cfg: ImmuneConfig, node_id: str) -> tuple[Pattern, ...]:
    """The built-in patterns of the node `node_id` (the provider whose tools it may
    quarantine)."""
    raw: list[dict[str, Any]] = [
        {
            "name": "immune-bad-envelopes",
            "kind": "envelope_rejected",
            "where": {
                "all": [
                    {"field": "reason", "op": "in", "value": list(BAD_ENVELOPE_REASONS)},
                    {"field": "sender", "op": "exists"},
                    # Not an admitted peer: nothing to block by node id.
                    {"not": {"field": "sender", "op": "regex", "value": "^curve:"}},
                ]
            },
            "group_by": "sender",
            "window": _window(cfg.bad_envelope_count, cfg.bad_envelope_window_s),
            "actions": [{"type": "policy", "policy": BLOCK_NODE, "ttl_s": cfg.block_ttl_s}],
        },
        {
            "name": "immune-zone-denials",
            "kind": "denial",
            "where": {"all": [{"field": "limit", "op": "eq", "value": "zone"}, _AT_ENTRY]},
            "group_by": "origin",
            "window": _window(cfg.denial_count, cfg.denial_window_s),
            "actions": [{"type": "policy", "policy": BLOCK_ORIGIN, "ttl_s": cfg.block_ttl_s}],
        },
        _origin_storm("immune-unknown-tools", "unknown_tool", cfg),
        _origin_storm("immune-schema-errors", "invalid_arguments", cfg),
        {
            "name": "immune-tool-errors",
            "kind": "tool_call",
            "where": {
                "all": [
                    {"field": "outcome", "op": "in", "value": list(TOOL_FAILURES)},
                    {"field": "provider", "op": "eq", "value": node_id},
                ]
            },
            "group_by": "tool",
            "window": _window(cfg.tool_error_count, cfg.tool_error_window_s),
            "actions": [
                {"type": "policy", "policy": QUARANTINE_TOOL, "ttl_s": cfg.quarantine_ttl_s}
            ],
        },
    ]
    return parse_patterns({"patterns": raw}, SOURCE, NODE_CATALOG)
