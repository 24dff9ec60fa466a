"""Priority classes of a call: `low < normal < high < critical`.

A client names its call's class in the request's `_meta` (`vsmcp/priority`); what it
may name is capped by its grant (a token's `max_priority`, the loopback cap): a class
above the cap is lowered to the cap, not refused, so a client that asks for too much
still gets served. A value that is not a class name is the caller's mistake and is
refused (`PriorityError`, a JSON-RPC -32602 at the gateway).

The class decides who is refused first when an entry is over its concurrency limit
(`node.vsm.concurrency`) and what System 5's `shed` refuses (`node.vsm.shedding`).
`critical` is never refused for load: membership, admin and algedonic traffic run
at it (and never pass a call entry at all).
"""

from __future__ import annotations

from typing import Final, Literal, get_args

from vsmcp.node.errors import NodeError

Priority = Literal["low", "normal", "high", "critical"]
PRIORITY_CLASSES: Final[tuple[Priority, ...]] = get_args(Priority)
_RANK: Final[dict[str, int]] = {name: rank for rank, name in enumerate(PRIORITY_CLASSES)}
_BY_NAME: Final[dict[str, Priority]] = {name: name for name in PRIORITY_CLASSES}
DEFAULT_PRIORITY: Final[Priority] = "normal"
CRITICAL: Final[Priority] = "critical"


class PriorityError(NodeError):
    """A priority that is not one of `PRIORITY_CLASSES`."""

    reason = "bad_priority"


def priority_rank(priority: str) -> int:
    """The class's rank (0 = `low`); an unknown class ranks as `normal`."""
    return _RANK.get(priority, _RANK[DEFAULT_PRIORITY])


def parse_priority(value: object) -> Priority:
    """`value` as a class name; `PriorityError` naming the classes otherwise."""
    known = _BY_NAME.get(value) if isinstance(value, str) else None
    if known is not None:
        return known
    shown = repr(value)[:64]
    raise PriorityError(f"priority must be one of {', '.join(PRIORITY_CLASSES)}; got {shown}")


def capped(requested: Priority, cap: Priority) -> Priority:
    """`requested`, lowered to `cap` when it ranks above it."""
    return requested if _RANK[requested] <= _RANK[cap] else cap
