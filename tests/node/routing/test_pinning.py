"""Which node a pin (`_meta` `vsmcp/node`) names."""

from __future__ import annotations

import pytest

from vsmcp.node.routing.pinning import UnknownNode, resolve_pin

SELF = "n" * 24 + "selfself"
PEER = "p" * 24 + "peer0001"
OTHER = "o" * 24 + "xxpeer01"


def _resolve(pin: str) -> str:
    return resolve_pin(pin, "t", self_id=SELF, self_name="edge-1", known=[PEER, OTHER])


@pytest.mark.parametrize(
    ("pin", "node"),
    [
        (SELF, SELF),
        ("edge-1", SELF),  # this node's configured name
        ("selfself", SELF),  # the default name of a node: its id's last 8 characters
        (PEER, PEER),
        ("peer0001", PEER),
        ("ppppeer0001", PEER),
    ],
)
def test_a_pin_names_a_node_by_id_name_or_id_suffix(pin: str, node: str) -> None:
    assert _resolve(pin) == node


@pytest.mark.parametrize(
    ("pin", "why"),
    [
        ("edge-2", "no such node"),
        ("peer01", "no such node"),  # under 8 characters: not an id suffix
        ("zzzzzzzzzz", "no such node"),
    ],
)
def test_a_pin_naming_no_node_is_refused(pin: str, why: str) -> None:
    with pytest.raises(UnknownNode, match=why) as refused:
        _resolve(pin)
    assert refused.value.data["node"] == pin


def test_a_pin_naming_several_nodes_is_refused() -> None:
    with pytest.raises(UnknownNode, match="names 2 nodes"):
        resolve_pin(
            "aaaaaaaa",
            "t",
            self_id="x" * 8 + "aaaaaaaa",
            self_name="",
            known=["y" * 8 + "aaaaaaaa"],
        )


NAMES = {PEER: "alpha", OTHER: "twin"}


def _resolve_named(pin: str, names: dict[str, str] = NAMES) -> str:
    return resolve_pin(pin, "t", self_id=SELF, self_name="edge-1", known=[PEER, OTHER], names=names)


def test_a_pin_names_another_node_by_its_announced_name() -> None:
    assert _resolve_named("alpha") == PEER
    assert _resolve_named("twin") == OTHER
    assert _resolve_named("edge-1") == SELF


def test_a_peer_announcing_another_nodes_default_name_does_not_take_its_calls() -> None:
    # "xxpeer01" is OTHER's id suffix (its default name); PEER announced it as its name.
    with pytest.raises(UnknownNode, match="pin by node id") as refused:
        _resolve_named("xxpeer01", {PEER: "xxpeer01"})
    assert refused.value.data["candidates"] == sorted([PEER, OTHER])
    # Nor this node's calls, pinned by its own default name.
    with pytest.raises(UnknownNode, match="pin by node id"):
        _resolve_named("selfself", {PEER: "selfself"})
    # A node announcing its own id suffix as its name is still that node.
    assert _resolve_named("xxpeer01", {OTHER: "xxpeer01"}) == OTHER


def test_a_name_shared_by_two_nodes_is_refused_listing_their_ids() -> None:
    with pytest.raises(UnknownNode, match="2 nodes have this name") as refused:
        _resolve_named("twin", {PEER: "twin", OTHER: "twin"})
    assert refused.value.data["candidates"] == sorted([PEER, OTHER])
    assert PEER in str(refused.value) and OTHER in str(refused.value)
    # This node's own name counts too.
    with pytest.raises(UnknownNode, match="2 nodes have this name") as own:
        _resolve_named("edge-1", {PEER: "edge-1"})
    assert own.value.data["candidates"] == sorted([SELF, PEER])


def test_a_name_of_a_node_not_admitted_names_nothing() -> None:
    with pytest.raises(UnknownNode, match="no such node"):
        _resolve_named("ghost", {"g" * 32: "ghost"})
