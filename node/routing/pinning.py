"""Pinning a call to one node: `_meta` `vsmcp/node` names it by node id or by name.

A node is named by its full id, by its configured `node.name` (each node announces it
in its signed membership record and HELLO: `PeerMeta.name`), or by the last 8 or more
characters of its id — which is also every node's default name. A configured name that
is also the end of another node's id is ambiguous (refused: a peer cannot take over the
calls pinned to another node by announcing its default name); a peer's announced name
that no node could be configured with (over 64 bytes, control characters) is dropped on
receipt. A name that matches no node, or more than one (two nodes
configured with the same name: the error lists their ids), is the caller's error; so is
a pinned node that does not offer the tool.
A pinned call is never failed over to another node: the caller asked for that one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Final

from vsmcp.node.errors import clip
from vsmcp.node.tools.errors import ToolError

# The shortest id suffix a pin may use (the default node name is this long).
MIN_ID_SUFFIX_CHARS: Final = 8


class UnknownNode(ToolError):
    """The pin names no node this one knows (or several)."""

    reason = "unknown_node"

    def __init__(self, tool: str, pin: str, why: str, candidates: Collection[str] = ()) -> None:
        tool, pin = clip(tool), clip(pin)
        data: dict[str, object] = {"tool": tool, "node": pin}
        if candidates:
            data["candidates"] = sorted(candidates)
        super().__init__(f"Call to {tool!r} pinned to node {pin!r}: {why}", data)


class NotOnNode(ToolError):
    """The pinned node does not offer the tool (to this caller)."""

    reason = "not_on_node"

    def __init__(self, tool: str, node_id: str, pin: str) -> None:
        tool, pin = clip(tool), clip(pin)
        super().__init__(
            f"Tool {tool!r} is not offered by node {pin!r} ({node_id})",
            {"tool": tool, "node": pin, "node_id": node_id},
        )


def resolve_pin(
    pin: str,
    tool: str,
    *,
    self_id: str,
    self_name: str,
    known: Collection[str],
    names: Mapping[str, str] | None = None,
) -> str:
    """The node id `pin` names among this node (`self_id`, `self_name`) and `known` ids
    (`names`: the configured names peers announced, node id -> name)."""
    if pin == self_id or pin in known:
        return pin
    named = {node for node, name in (names or {}).items() if name == pin and node in known}
    if pin == self_name:
        named.add(self_id)
    if len(named) == 1:
        node = named.pop()
        by_id = _by_id_suffix(pin, {self_id, *known})
        if by_id and by_id != [node]:
            # A peer may announce any name, also another node's default name (its id's
            # last 8 characters): it must not receive the calls pinned to that node.
            ids = sorted({node, *by_id})
            raise UnknownNode(
                tool,
                pin,
                f"is a name of {node} and the end of the id of {', '.join(by_id)}; pin by node id",
                ids,
            )
        return node
    if len(named) > 1:
        ids = sorted(named)
        raise UnknownNode(
            tool,
            pin,
            f"{len(ids)} nodes have this name ({', '.join(ids)}); pin by node id",
            ids,
        )
    if len(pin) >= MIN_ID_SUFFIX_CHARS:
        matches = _by_id_suffix(pin, {self_id, *known})
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UnknownNode(tool, pin, f"names {len(matches)} nodes; give more of the id")
    raise UnknownNode(
        tool,
        pin,
        "no such node in this mesh (pin by node id, its last 8+ characters, or node name)",
    )


def _by_id_suffix(pin: str, ids: Collection[str]) -> list[str]:
    if len(pin) < MIN_ID_SUFFIX_CHARS:
        return []
    return sorted(n for n in ids if n.endswith(pin))
