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

import msgspec

from vsmcp.node.vsm.events import Event, EventSink, PatternMatched, Scalar
from vsmcp.node.vsm.patterns.model import ACTION_ALIASES, Action, EmitAction

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


class _Route:
    """One action type's handler and counters (found once per action class)."""

    __slots__ = ("failed", "handler", "ran", "tag", "unhandled")

    def __init__(self, tag: str, handler: ActionHandler | None) -> None:
        self.tag = tag
        self.handler = handler
        self.ran = self.failed = self.unhandled = 0


class ActionDispatcher:
    """A `MatchSink` running each action through its type's handler. A handler that
    raises is logged and counted; it never reaches the engine (which must keep going)."""

    def __init__(self, handlers: Mapping[str, ActionHandler] | None = None) -> None:
        self._handlers: dict[str, ActionHandler] = {}
        self._routes: dict[type, _Route] = {}
        self.matches = 0
        for action_type, handler in (handlers or {}).items():
            self.register(action_type, handler)

    def register(self, action_type: str, handler: ActionHandler) -> None:
        """Run `handler(match, action)` for every action of `action_type` (`algedonic`,
        `policy` — alias `mitigate` —, `emit`, `tool` — alias `call`). It runs on the
        event loop inside the engine's subscriber: it must not block; long work goes to
        a task the handler's owner keeps. A second registration replaces the first."""
        action_type = ACTION_ALIASES.get(action_type, action_type)
        self._handlers[action_type] = handler
        for route in self._routes.values():
            if route.tag == action_type:
                route.handler = handler

    def _route(self, action_class: type) -> _Route:
        tag = str(getattr(action_class, "__struct_config__").tag)  # noqa: B009 - on a class
        route = self._routes[action_class] = _Route(tag, self._handlers.get(tag))
        return route

    def __call__(self, match: Match) -> None:
        self.matches += 1
        for action in match.actions:
            route = self._routes.get(action.__class__) or self._route(action.__class__)
            handler = route.handler
            if handler is None:
                route.unhandled += 1
                continue
            try:
                handler(match, action)
            except Exception:  # top-level handler: one bad action stops nothing
                route.failed += 1
                log.exception("action %s of pattern %s failed", route.tag, match.pattern)
            else:
                route.ran += 1

    @property
    def stats(self) -> Counter[str]:
        """`matches`, and `ran_`/`failed_`/`unhandled_` + action type: counts."""
        stats: Counter[str] = Counter()
        if self.matches:
            stats["matches"] = self.matches
        for route in self._routes.values():
            for outcome in ("ran", "failed", "unhandled"):
                count = getattr(route, outcome)
                if count:
                    stats[f"{outcome}_{route.tag}"] += count
        return stats


def emit_handler(stream: EventSink) -> ActionHandler:
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
