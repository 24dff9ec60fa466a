"""The WASM policy agent (native/, run by wasmtime) decides as the Python reference on
random policy sets and requests; its ABI refuses bad input with a clear error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.node.policyagent.strategies import NOW_MS, expiries, policy_sets, requests
from tests.skips import require_module
from vsmcp.node.policyagent.errors import PolicyAgentError
from vsmcp.node.policyagent.reference import PolicySet


@pytest.fixture(scope="module")
def agent() -> Iterator[Any]:
    require_module("wasmtime")
    from vsmcp.node.policyagent.agent import WasmPolicyAgent

    yield WasmPolicyAgent()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy_set=policy_sets(),
    batch=st.lists(requests(), min_size=1, max_size=20),
    now_ms=expiries,
)
def test_the_agent_decides_as_the_reference(
    agent: Any, policy_set: dict[str, Any], batch: list[dict[str, Any]], now_ms: int
) -> None:
    summary = agent.load_policies(policy_set)
    assert summary == {"zones": len(policy_set["zones"]), "blocks": len(policy_set["blocks"])}
    expected = PolicySet(policy_set).evaluate({"now_ms": now_ms, "requests": batch})
    assert agent.evaluate(batch, now_ms) == expected["decisions"]


def test_a_block_an_allow_and_a_zone_denial(agent: Any) -> None:
    agent.load_policies(
        {
            "zones": ["public", "ops"],
            "blocks": [
                {
                    "key": "A/origin:addr:10.0.0.9",
                    "policy": "origin:addr:10.0.0.9",
                    "target_kind": "origin",
                    "target": "addr:10.0.0.9",
                    "expires_at_ms": NOW_MS + 1,
                }
            ],
        }
    )
    base = {"origin": "http:alice", "tool": "echo", "caller_zone": "public"}
    decisions = agent.evaluate(
        [
            {**base, "client_addr": "::ffff:10.0.0.9", "tool_zone": "public"},
            {**base, "tool_zone": "public"},
            {**base, "tool_zone": "ops"},
        ],
        NOW_MS,
    )
    assert [(d["allowed"], d["by"], d["policy"], d["reason"]) for d in decisions] == [
        (False, "mitigation", "origin:addr:10.0.0.9", "caller"),
        (True, None, None, None),
        (False, "zone", None, "below_tool_zone"),
    ]
    # The block ends on time.
    later = agent.evaluate([{**base, "client_addr": "10.0.0.9", "tool_zone": "public"}], NOW_MS + 1)
    assert later[0]["allowed"]


@pytest.mark.parametrize(
    ("method", "payload", "error"),
    [
        ("load_policies_json", b"{", "invalid JSON"),
        ("load_policies_json", b'{"zones": [], "blocks": []}', "'zones' must list"),
        ("load_policies_json", b'{"zones": ["a", "a"], "blocks": []}', "listed twice"),
        ("load_policies_json", b'{"zones": ["a"], "blocks": [{"target_kind": 1}]}', "target_kind"),
        ("evaluate_json", b'{"requests": []}', "'now_ms' must be a number"),
        ("evaluate_json", b'{"now_ms": 1, "requests": [{"origin": 1}]}', "requests[0]: 'origin'"),
        ("evaluate_json", b"\xff", "not UTF-8"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(
    agent: Any, method: str, payload: bytes, error: str
) -> None:
    agent.load_policies({"zones": ["public"], "blocks": []})
    with pytest.raises(PolicyAgentError, match=error.replace("[", r"\[").replace("]", r"\]")):
        getattr(agent, method)(payload)


def test_evaluating_before_loading_is_an_error() -> None:
    require_module("wasmtime")
    from vsmcp.node.policyagent.agent import WasmPolicyAgent

    with pytest.raises(PolicyAgentError, match="no policy set loaded"):
        WasmPolicyAgent().evaluate_json(json.dumps({"now_ms": 1, "requests": []}).encode())
