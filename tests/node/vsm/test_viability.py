"""The viability formula: each measured input moves the score the right way, in [0, 1]."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vsmcp.node.vsm.viability import ViabilityInputs, factors, input_gauges, scores, viability_view

HEALTHY = ViabilityInputs(
    units_running=4,
    units_configured=4,
    error_ratio=0.0,
    latency_p95_ms=100.0,
    latency_objective_ms=1000.0,
    in_flight=0,
    capacity=64,
    balance=0.0,
    members={"alive": 4},
    mesh_tools_reachable=10,
    mesh_tools=10,
)


def with_(**changes: Any) -> ViabilityInputs:
    return dataclasses.replace(HEALTHY, **changes)


def test_a_healthy_node_scores_one() -> None:
    assert scores(HEALTHY) == (1.0, 1.0)


# Each row: the input made worse, step by step; the node (and mesh) score must fall.
WORSENING = [
    ("units_running", [4, 3, 1, 0]),
    ("error_ratio", [0.0, 0.1, 0.5, 1.0]),
    ("latency_p95_ms", [1000.0, 2000.0, 10_000.0]),
    ("in_flight", [0, 16, 48, 64]),
    ("balance", [0.0, -0.2, -0.7, -1.0]),
]


@pytest.mark.parametrize(("field", "values"), WORSENING)
def test_worse_node_inputs_lower_both_scores(field: str, values: list[Any]) -> None:
    results = [scores(with_(**{field: v})) for v in values]
    nodes = [n for n, _ in results]
    meshes = [m for _, m in results]
    assert nodes == sorted(nodes, reverse=True) and nodes[0] > nodes[-1]
    assert meshes == sorted(meshes, reverse=True) and meshes[0] > meshes[-1]


@pytest.mark.parametrize(
    "members",
    [{"alive": 3, "suspect": 1}, {"alive": 2, "dead": 2}, {"alive": 1, "zombie": 3}, {"dead": 4}],
)
def test_unhealthy_peers_lower_the_mesh_score_only(members: dict[str, int]) -> None:
    node, mesh = scores(with_(members=members))
    assert node == 1.0 and mesh < 1.0


def test_peer_health_orders_states() -> None:
    mesh = [
        scores(with_(members=m))[1]
        for m in ({"alive": 2}, {"alive": 1, "suspect": 1}, {"alive": 1, "dead": 1}, {"dead": 2})
    ]
    assert mesh == sorted(mesh, reverse=True) and len(set(mesh)) == 4
    assert scores(with_(members={"alive": 2, "left": 5}))[1] == 1.0  # left is not unhealthy


def test_unreachable_mesh_tools_lower_the_mesh_score() -> None:
    node, mesh = scores(with_(mesh_tools_reachable=5))
    assert node == 1.0 and mesh == pytest.approx(0.5)


def test_no_units_running_and_no_capacity_mean_no_viability() -> None:
    assert scores(with_(units_running=0))[0] == 0.0
    assert scores(with_(error_ratio=1.0))[0] == 0.0
    # Saturation and pain halve at most: busy and hurting is not dead.
    assert scores(with_(in_flight=64))[0] == pytest.approx(0.5)
    assert scores(with_(balance=-1.0))[0] == pytest.approx(0.5)
    assert scores(with_(capacity=0, in_flight=0))[0] == pytest.approx(0.5)


def test_pleasure_does_not_raise_the_score_above_healthy() -> None:
    assert scores(with_(balance=1.0)) == (1.0, 1.0)


def test_a_lone_node_without_calls_or_units_is_whole() -> None:
    lone = with_(
        units_running=0,
        units_configured=0,
        capacity=0,
        latency_p95_ms=None,
        members={},
        mesh_tools=0,
        mesh_tools_reachable=0,
    )
    assert scores(lone) == (1.0, 1.0)


inputs = st.builds(
    ViabilityInputs,
    units_running=st.integers(0, 50),
    units_configured=st.integers(0, 50),
    error_ratio=st.floats(0, 1),
    latency_p95_ms=st.none() | st.floats(0, 1e7),
    latency_objective_ms=st.floats(1, 1e5),
    in_flight=st.integers(0, 500),
    capacity=st.integers(0, 500),
    balance=st.floats(-1, 1),
    members=st.dictionaries(
        st.sampled_from(["alive", "suspect", "dead", "zombie", "left"]), st.integers(0, 20)
    ),
    mesh_tools_reachable=st.integers(0, 50),
    mesh_tools=st.integers(0, 50),
)


@given(inputs)
def test_scores_and_factors_stay_in_bounds(i: ViabilityInputs) -> None:
    node, mesh = scores(i)
    assert 0.0 <= mesh <= node <= 1.0
    assert all(0.0 <= f <= 1.0 for f in factors(i).values())
    view = viability_view(i)
    assert set(view) == {"node", "mesh", "inputs", "factors"}
    assert all(isinstance(v, float | int) for v in input_gauges(i).values())


def test_latency_inputs_are_exported_in_seconds() -> None:
    gauges = input_gauges(HEALTHY)
    assert gauges["latency_p95_seconds"] == 0.1
    assert gauges["latency_objective_seconds"] == 1.0
    assert not any(name.endswith("_ms") for name in gauges)
    assert (
        input_gauges(dataclasses.replace(HEALTHY, latency_p95_ms=None))["latency_p95_seconds"]
        == -1.0
    )
