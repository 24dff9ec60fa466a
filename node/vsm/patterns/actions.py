"""What a match is, and the callback interface that runs its actions.

The engine hands every `Match` to one sink (`MatchSink`, any callable). The node's sink
is an `ActionDispatcher`: it runs each of the match's actions through the handler
registered for the action's type (`algedonic`, `policy`, `emit`, `tool`). Handlers are
wired by the node (S5's algedonic channel, the immune system, the tool caller); until
one is, actions of that type are counted as unhandled. `emit_handler` is wired here
because it needs only the stream.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Protocol

import msgspec

from node.vsm.events import Event, PatternMatched, Scalar
from node.vsm.patterns.model import Action, EmitAction

log = logging.getLogger(__name__)


class Match(msgspec.Struct, frozen=True, gc=False):
    """`pattern` matched on `event` (the event that completed it). `group` is the value
    of the pattern's `group_by` field (None without one); `count` the events counted
    (1 for a filter, the window's count, 2 for a sequence)."""

    pattern: str
    event: Event
    group: Scalar
    count: int
    actions: tuple[Action, ...]


MatchSink = Callable[[Match], None]
ActionHandler = Callable[[Match, Action], None]


class Publisher(Protocol):
    def publish(self, event: Event) -> None: ...


class ActionDispatcher:
    """A `MatchSink` running each action through its type's handler. A handler that
    raises is logged and counted; it never reaches the engine (which must keep going)."""

    def __init__(self, handlers: Mapping[str, ActionHandler] | None = None) -> None:
        self._handlers: dict[str, ActionHandler] = dict(handlers or {})
        self.stats: Counter[str] = Counter()

    def register(self, action_type: str, handler: ActionHandler) -> None:
        self._handlers[action_type] = handler

    def __call__(self, match: Match) -> None:
        self.stats["matches"] += 1
        for action in match.actions:
            action_type = action.__struct_config__.tag
            handler = self._handlers.get(str(action_type))
            if handler is None:
                self.stats[f"unhandled_{action_type}"] += 1
                continue
            try:
                handler(match, action)
            except Exception:  # top-level handler: one bad action stops nothing
                self.stats[f"failed_{action_type}"] += 1
                log.exception("action %s of pattern %s failed", action_type, match.pattern)
            else:
                self.stats[f"ran_{action_type}"] += 1


def emit_handler(stream: Publisher) -> ActionHandler:
    """The `emit` action: publish a `pattern_matched` event (never blocks)."""

    def emit(match: Match, action: Action) -> None:
        assert isinstance(action, EmitAction)
        group = match.group
        stream.publish(
            PatternMatched(
                ts=match.event.ts,
                pattern=match.pattern,
                group=None if group is None else str(group),
                count=match.count,
                label=action.label,
            )
        )

    return emit
