"""Each chat's conversation in the replicated context graph (`crdt/context_graph.py`).

A turn (what was asked, what was done) is one signed `telegram.turn` event whose parent is
the chat's previous turn, so a chat's history is a causal chain that survives restarts
(the node's snapshot) and reaches every node (replication): another bridge node, or this
one after a restart, continues the same conversation. The graph bounds it (by age and
count); here each turn's texts are clipped and only the newest `turns` are read.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from vsmcp.crdt.errors import CrdtError

log = logging.getLogger(__name__)

TURN_KIND: Final = "telegram.turn"
MAX_TURN_TEXT_CHARS: Final = 300


class ChatContext:
    """The chats' turns. `graph` is the node's ContextGraph, `signer` its key (None: the
    context is not kept, e.g. a node without one)."""

    def __init__(self, graph: Any, signer: Any, turns: int) -> None:
        self._graph = graph
        self._signer = signer
        self._turns = turns

    def history(self, chat_id: int) -> list[dict[str, Any]]:
        """The chat's newest turns, oldest first: {asked, done, node, ts_ms}."""
        if self._graph is None or self._turns == 0:
            return []
        turns = [
            {**event.data, "ts_ms": event.ts_ms, "id": event.id}
            for event in self._graph.events()
            if event.kind == TURN_KIND and event.data.get("chat") == chat_id
        ]
        return turns[-self._turns :]

    def record(self, chat_id: int, asked: str, done: str, node: str) -> None:
        if self._graph is None or self._signer is None or self._turns == 0:
            return
        previous = self.history(chat_id)
        parents = [previous[-1]["id"]] if previous else []
        data = {
            "chat": chat_id,
            "asked": _clip(asked),
            "done": _clip(done),
            "node": node,
        }
        try:
            self._graph.record(self._signer, TURN_KIND, data, parents=parents)
        except CrdtError as e:  # a bad value must not lose the reply
            log.warning("chat %s: turn not recorded: %s", chat_id, e)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TURN_TEXT_CHARS else text[: MAX_TURN_TEXT_CHARS - 1] + "…"
