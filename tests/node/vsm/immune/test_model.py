"""The immune policy bodies and who may issue them."""

from __future__ import annotations

from vsmcp.crdt.policies import Policy
from vsmcp.node.vsm.immune.model import (
    MAX_OBSERVERS,
    MITIGATION_KIND,
    OBSERVATION_KIND,
    MitigationBody,
    ObservationBody,
    PolicyNote,
    body_of,
    immune_issuers,
    mitigation_of,
    observation_of,
)

NOTE = PolicyNote(source="pattern:p", reason="r", evidence="e", action="a", until="t")


def _policy(kind: str, body: dict[str, object]) -> Policy:
    return Policy("id", kind, b"k" * 32, 1, 0, 10, body)


def test_bodies_round_trip_through_the_grant_body() -> None:
    body = MitigationBody(target_kind="origin", target="http:x", note=NOTE, observers=("a",))
    assert mitigation_of(_policy(MITIGATION_KIND, body_of(body))) == body
    seen = ObservationBody(subject="n", reason="bad", count=3)
    assert observation_of(_policy(OBSERVATION_KIND, body_of(seen))) == seen


def test_a_body_of_the_wrong_shape_or_kind_is_not_a_mitigation() -> None:
    good = body_of(MitigationBody(target_kind="tool", target="t", note=NOTE))
    assert mitigation_of(_policy("pattern", good)) is None
    assert mitigation_of(_policy(MITIGATION_KIND, {**good, "target_kind": "planet"})) is None
    assert mitigation_of(_policy(MITIGATION_KIND, {**good, "target": ""})) is None
    assert mitigation_of(_policy(MITIGATION_KIND, {"target": "t"})) is None
    assert observation_of(_policy(OBSERVATION_KIND, {"subject": 5})) is None


def test_only_holders_of_the_immune_role_issue_immune_kinds() -> None:
    roles = {b"i" * 32: ("immune", "tools"), b"t" * 32: ("tools",)}
    allowed = immune_issuers(roles.get)
    assert allowed(b"i" * 32, MITIGATION_KIND) and allowed(b"i" * 32, OBSERVATION_KIND)
    assert not allowed(b"t" * 32, MITIGATION_KIND)
    assert not allowed(b"u" * 32, MITIGATION_KIND)  # unknown key
    assert not allowed(b"i" * 32, "pattern")  # other kinds stay the authority's


def test_observers_are_bounded_in_number_and_length() -> None:
    def body(observers: list[str]) -> dict[str, object]:
        fits = MitigationBody(target_kind="node", target="x", note=NOTE, observers=("a",))
        return {**body_of(fits), "observers": observers}

    assert mitigation_of(_policy(MITIGATION_KIND, body(["n"] * MAX_OBSERVERS))) is not None
    assert mitigation_of(_policy(MITIGATION_KIND, body(["n"] * (MAX_OBSERVERS + 1)))) is None
    assert mitigation_of(_policy(MITIGATION_KIND, body(["n" * 201]))) is None
    assert mitigation_of(_policy(MITIGATION_KIND, body([""]))) is None
