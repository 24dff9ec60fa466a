"""The reference decides as the node does: a real immune service issues random blocks and
quarantines, and for random requests its call gate (`check_call`) refuses exactly those
the reference denies by a mitigation, naming the same policy; the zone part is the
node's `zone_allows`. The signed policy set verifies, and a tampered one does not."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.node.policyagent.strategies import origins, requests, tools
from tests.node.vsm.immune.test_service import AUTHORITY, Mesh, _request
from vsmcp.mesh.identity import NodeKey
from vsmcp.node.policyagent.errors import BadPolicySet, BadRequest
from vsmcp.node.policyagent.policy_set import (
    POLICY_SET_VALID_MS,
    policy_set,
    sign_policy_set,
    verify_policy_set,
)
from vsmcp.node.policyagent.reference import PolicySet
from vsmcp.node.tools.errors import PolicyBlocked
from vsmcp.node.tools.model import CallContext
from vsmcp.node.tools.policy import zone_allows
from vsmcp.node.vsm.immune.blocklist import Block, BlockList

ZONES = ("public", "ops", "restricted")
mitigations = st.lists(
    st.one_of(st.tuples(st.just("origin"), origins), st.tuples(st.just("tool"), tools)),
    max_size=8,  # under the immune service's rate limit (10 a minute)
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(issued=mitigations, batch=st.lists(requests(), min_size=1, max_size=10))
def test_the_reference_refuses_what_the_nodes_gate_refuses(
    issued: list[tuple[Any, str]], batch: list[dict[str, Any]]
) -> None:
    mesh = Mesh(1)
    immune = mesh.members[0].immune
    for kind, target in issued:
        immune.mitigate(_request(kind, target))
    now_ms = mesh.clock()
    doc = policy_set(immune.blocks.all(), ZONES, mesh.members[0].signer.public_key, now_ms)
    reference = PolicySet(doc)
    allows = zone_allows(ZONES)
    for request in batch:
        decision = reference.decide(request, now_ms)
        ctx = CallContext(
            caller_id="c",
            caller_zone=request["caller_zone"],
            origin=request["origin"],
            entry_origin=request.get("entry_origin") or None,
            client_addr=request.get("client_addr") or None,
        )
        try:
            immune.check_call(ctx, request.get("entry_node") or None, request["tool"])
        except PolicyBlocked as refused:
            assert decision["by"] == "mitigation"
            assert refused.data is not None and refused.data["policy"] == decision["policy"]
            continue
        assert decision["by"] != "mitigation"
        zone_ok = allows(request["caller_zone"], request["tool_zone"])
        assert decision["allowed"] == zone_ok and (decision["by"] == "zone") != zone_ok


def _signed(blocks: list[dict[str, Any]] | None = None) -> tuple[NodeKey, dict[str, Any]]:
    key = NodeKey.generate()
    doc = {**policy_set([], ZONES, key.public_key, 1), **({"blocks": blocks} if blocks else {})}
    return key, sign_policy_set(doc, key.sign_detached)


def test_a_signed_policy_set_verifies_and_names_its_node() -> None:
    key, signed = _signed()
    doc = verify_policy_set(signed, key.node_id)
    assert doc["zones"] == list(ZONES) and doc["node"] == key.node_id == signed["node"]
    assert json.loads(signed["set"]) == doc


def test_a_tampered_or_foreign_policy_set_is_refused() -> None:
    key, signed = _signed()
    tampered = {**signed, "set": signed["set"].replace('"public"', '"admin"')}
    with pytest.raises(BadPolicySet, match="does not verify"):
        verify_policy_set(tampered)
    with pytest.raises(BadPolicySet, match="not by the node expected"):
        verify_policy_set(signed, NodeKey.generate().node_id)
    with pytest.raises(BadPolicySet, match="'set' and 'signature'"):
        verify_policy_set({"set": signed["set"]})
    # Signed by another key than the one it names.
    doc = json.loads(signed["set"])
    forged = sign_policy_set(doc, NodeKey.generate().sign_detached)
    with pytest.raises(BadPolicySet, match="does not verify"):
        verify_policy_set(forged)
    assert AUTHORITY.public_key != key.public_key


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({"zones": "public", "blocks": []}, "'zones' must be a list"),
        ({"zones": ["a"], "blocks": [{"target_kind": "node"}]}, "'target' must be a string"),
        ({"zones": ["a"], "blocks": [{"target_kind": "role", "target": "x"}]}, "target_kind"),
    ],
)
def test_a_bad_policy_set_is_refused(doc: dict[str, Any], error: str) -> None:
    with pytest.raises(BadPolicySet, match=error):
        PolicySet(doc)


def test_a_bad_request_names_its_index_and_field() -> None:
    reference = PolicySet({"zones": ["public"], "blocks": []})
    with pytest.raises(BadRequest, match=r"requests\[1\]: 'tool' must be a string"):
        reference.evaluate(
            {
                "now_ms": 1,
                "requests": [
                    {"origin": "a", "tool": "t", "caller_zone": "public", "tool_zone": "public"},
                    {"origin": "a", "caller_zone": "public", "tool_zone": "public"},
                ],
            }
        )


def test_a_stale_policy_set_is_refused() -> None:
    key, signed = _signed()  # issued at 1 ms
    doc = verify_policy_set(signed, key.node_id, now_ms=2)
    assert doc["valid_until_ms"] == 1 + POLICY_SET_VALID_MS
    with pytest.raises(BadPolicySet, match="expired"):
        verify_policy_set(signed, key.node_id, now_ms=1 + POLICY_SET_VALID_MS)
    with pytest.raises(BadPolicySet, match="in the future"):
        verify_policy_set(signed, key.node_id, now_ms=-10 * POLICY_SET_VALID_MS)


def test_on_an_expiry_tie_the_node_and_the_agent_name_the_same_policy() -> None:
    """Two blocks of one target expiring together: both take the smallest key, whatever
    order the node learnt them in."""
    blocks = BlockList()
    for key in ("k2", "k1", "k3"):  # not in key order
        blocks.put(
            Block(key, f"policy-{key}", "issuer", "tool", "t", 0, 10_000, body=None)  # type: ignore[arg-type]
        )
    found = blocks.find("tool", "t", 5)
    assert found is not None and found.key == "k1"
    doc = policy_set(blocks.all(), ZONES, NodeKey.generate().public_key, 5)
    agent = PolicySet(doc)
    request = {"caller_zone": "restricted", "origin": "o", "tool": "t", "tool_zone": "public"}
    decision = agent.decide(request, 5)
    assert (decision["by"], decision["policy"]) == ("mitigation", found.policy_id)
