"""System 5's recursion guard: may this node spawn one more child, and what share of
the descendant budget does that child inherit?

Each child inherits an equal share of what the node may have below it, so the whole
tree stays within `max_descendants` without anyone counting grandchildren at run time:
with `n = min(max_children, max_descendants)` children, each gets
`(max_descendants - n) // n` descendants of its own.
"""

from __future__ import annotations

import math

from vsmcp.node.children.config import RecursionSection
from vsmcp.node.children.errors import SpawnRefused


def effective_max_children(limits: RecursionSection) -> int:
    return min(limits.max_children, limits.max_descendants)


def lowered(limits: RecursionSection, factor: float) -> RecursionSection:
    """The limits while the node is short of capacity: children and descendants scaled
    by `factor` (System 5's tighten_limit response or System 3's bound from its KPIs,
    whichever is lower; 1.0: as configured), never above
    the config. The depth limit stays: it bounds the tree, not the load."""
    factor = min(1.0, max(0.0, factor))
    if factor >= 1.0:
        return limits
    return RecursionSection(
        max_depth=limits.max_depth,
        max_children=math.floor(limits.max_children * factor),
        max_descendants=math.floor(limits.max_descendants * factor),
        spawn_zone=limits.spawn_zone,
        child_certificate_s=limits.child_certificate_s,
    )


def check_spawn(depth: int, limits: RecursionSection, running: int, factor: float = 1.0) -> None:
    """Raise `SpawnRefused` saying which limit a child at `depth + 1` would pass;
    `factor` < 1 lowers the limits (see `lowered`)."""
    configured = limits
    limits = lowered(limits, factor)
    if depth + 1 > limits.max_depth:
        raise SpawnRefused(
            f"recursion.max_depth = {limits.max_depth}: this node is at depth {depth}, "
            f"a child would be at depth {depth + 1}"
        )
    most = effective_max_children(limits)
    if running >= most:
        raise SpawnRefused(
            f"this node already runs {running} children, its limit "
            f"(recursion.max_children {configured.max_children}, max_descendants "
            f"{configured.max_descendants}) is {most}"
            + (
                f", lowered from {effective_max_children(configured)} while the node is "
                f"short of capacity (System 5's or System 3's limits at {factor:.0%})"
                if limits is not configured
                else ""
            )
        )


def child_limits(limits: RecursionSection) -> RecursionSection:
    """The `[recursion]` a child inherits: same depth limit, its share of descendants."""
    most = max(1, effective_max_children(limits))
    share = max(0, (limits.max_descendants - most) // most)
    return RecursionSection(
        max_depth=limits.max_depth,
        max_children=min(limits.max_children, share),
        max_descendants=share,
        spawn_zone=limits.spawn_zone,
    )
