"""The viability score: one number in [0, 1] for this node, one for the mesh as it sees it.

Computed only from measured inputs (docs/vsm.md says why this formula):

    node = availability × (1 − error_ratio) × latency × (0.5 + 0.5 × headroom)
           × (1 − 0.5 × pain)
    mesh = node × peer_health × mesh_tools

- availability: S1 units running / units configured (1 with none);
- error_ratio: failed / all calls in S3's window (0 without calls). Failed: the node's
  own (timeouts, units not running, error results); not the caller's refusals (zone,
  arguments, unknown tool, cancelled); calls a limit refused before they ran (overloaded,
  shed, rate limited) are not calls of the window at all: the regulation working, not the
  node failing (sustained shedding is pain instead). `node.vsm.kpis` decides;
- latency: 1 while the window's p95 is within the objective, else objective / p95;
- headroom: 1 − calls in flight / concurrency the running units allow (0 when no unit
  runs, 1 when the node has none);
- pain: max(0, −balance), the algedonic balance over its window, in [0, 1];
- peer_health: (alive + ½ suspect) / members known, left ones apart (1 alone);
- mesh_tools: registry tools whose provider is this node or alive / all (1 with none).

A product, because each factor is an essential variable: any one at 0 means the system
cannot do its work, whatever the others say. Saturation and pain only halve the score
at worst: a busy or hurting node still works, and must be told apart from a dead one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ViabilityInputs:
    units_running: int
    units_configured: int
    error_ratio: float
    latency_p95_ms: float | None  # None: no calls in the window
    latency_objective_ms: float
    in_flight: int
    capacity: int
    balance: float  # [-1, 1]
    members: Mapping[str, int]  # state -> count, this node excluded
    mesh_tools_reachable: int
    mesh_tools: int


def _clamp(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


def factors(inputs: ViabilityInputs) -> dict[str, float]:
    """Each factor of the score, in [0, 1]."""
    availability = (
        inputs.units_running / inputs.units_configured if inputs.units_configured else 1.0
    )
    p95 = inputs.latency_p95_ms
    latency = (
        1.0
        if p95 is None or p95 <= inputs.latency_objective_ms
        else (inputs.latency_objective_ms / p95)
    )
    if inputs.capacity:
        headroom = 1.0 - inputs.in_flight / inputs.capacity
    else:  # no unit running: no room, unless the node has no units at all
        headroom = 1.0 if inputs.units_configured == 0 else 0.0
    pain = max(0.0, -inputs.balance)
    known = sum(n for state, n in inputs.members.items() if state != "left")
    alive = inputs.members.get("alive", 0) + 0.5 * inputs.members.get("suspect", 0)
    return {
        "availability": _clamp(availability),
        "success": _clamp(1.0 - inputs.error_ratio),
        "latency": _clamp(latency),
        "headroom": _clamp(0.5 + 0.5 * _clamp(headroom)),
        "algedonic": _clamp(1.0 - 0.5 * _clamp(pain)),
        "peer_health": _clamp(alive / known) if known else 1.0,
        "mesh_tools": (
            _clamp(inputs.mesh_tools_reachable / inputs.mesh_tools) if inputs.mesh_tools else 1.0
        ),
    }


def input_gauges(inputs: ViabilityInputs) -> dict[str, float]:
    """The numeric inputs, for Prometheus (member counts as `members_<state>`)."""
    out: dict[str, float] = {
        name: value
        for name, value in asdict(inputs).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    # Prometheus wants base units: the millisecond inputs are exported in seconds.
    del out["latency_objective_ms"]
    out.pop("latency_p95_ms", None)  # absent (None) without calls in the window
    out["latency_objective_seconds"] = inputs.latency_objective_ms / 1000
    p95 = inputs.latency_p95_ms
    out["latency_p95_seconds"] = -1.0 if p95 is None else p95 / 1000
    for state, count in inputs.members.items():
        out[f"members_{state}"] = count
    return out


NODE_FACTORS = ("availability", "success", "latency", "headroom", "algedonic")
MESH_FACTORS = ("peer_health", "mesh_tools")


def scores(inputs: ViabilityInputs) -> tuple[float, float]:
    """(node, mesh) viability."""
    f = factors(inputs)
    node = 1.0
    for name in NODE_FACTORS:
        node *= f[name]
    mesh = node
    for name in MESH_FACTORS:
        mesh *= f[name]
    return node, mesh


def viability_view(inputs: ViabilityInputs) -> dict[str, Any]:
    """`{"node", "mesh", "inputs", "factors"}` as /api/vsm shows it."""
    node, mesh = scores(inputs)
    raw = asdict(inputs)
    raw["members"] = dict(inputs.members)
    return {
        "node": round(node, 6),
        "mesh": round(mesh, 6),
        "inputs": raw,
        "factors": {k: round(v, 6) for k, v in factors(inputs).items()},
    }
