"""The action callback interface: dispatch by action type, unhandled and failing
actions counted, `emit` publishing a `pattern_matched` event into the stream."""

from __future__ import annotations

from tests.polling import async_wait_until
from vsmcp.node.vsm.events import NODE_CATALOG, Denial, Event, PatternMatched
from vsmcp.node.vsm.patterns import (
    ActionDispatcher,
    Match,
    PatternEngine,
    emit_handler,
    parse_patterns,
)
from vsmcp.node.vsm.patterns.model import Action, AlgedonicAction
from vsmcp.node.vsm.stream import EventStream

PATTERN = {
    "name": "burst",
    "kind": "denial",
    "group_by": "origin",
    "window": {"count": 2, "within_s": 10},
    "actions": [
        {"type": "algedonic", "valence": "pain", "intensity": 0.9},
        {"type": "tool", "tool": "notify", "arguments": {"channel": "ops"}},
        {"type": "emit", "label": "storm"},
        {"type": "policy", "policy": "block_origin", "ttl_s": 60},
    ],
}


def denial(ts: float, origin: str = "o") -> Denial:
    return Denial(ts=ts, origin=origin, zone="ops", limit="rate", blocked="t")


def test_actions_run_through_their_handlers_in_order() -> None:
    ran: list[tuple[str, Action]] = []

    def algedonic(match: Match, action: Action) -> None:
        ran.append((match.pattern, action))

    def failing(match: Match, action: Action) -> None:
        raise RuntimeError("tool caller down")

    dispatcher = ActionDispatcher({"algedonic": algedonic, "tool": failing})
    engine = PatternEngine(dispatcher, NODE_CATALOG, parse_patterns([PATTERN], "<t>", NODE_CATALOG))
    engine.process_batch([denial(0), denial(1)])
    assert ran == [("burst", AlgedonicAction(valence="pain", intensity=0.9))]
    assert dispatcher.stats == {
        "matches": 1,
        "ran_algedonic": 1,
        "failed_tool": 1,
        "unhandled_emit": 1,
        "unhandled_policy": 1,
    }


async def test_emit_publishes_a_pattern_matched_event() -> None:
    stream = EventStream()
    dispatcher = ActionDispatcher()
    dispatcher.register("emit", emit_handler(stream))
    engine = PatternEngine(dispatcher, NODE_CATALOG, parse_patterns([PATTERN], "<t>", NODE_CATALOG))
    stream.subscribe("patterns", engine.process_batch)
    seen: list[Event] = []
    stream.subscribe("observer", seen.extend, kinds=[PatternMatched])
    async with stream:
        stream.publish(denial(5, "mallory"))
        stream.publish(denial(6, "mallory"))
        await async_wait_until(lambda: seen, what="the emitted event")
    assert seen == [PatternMatched(ts=6, pattern="burst", group="mallory", count=2, label="storm")]


def test_a_handler_registered_later_runs_from_then_on() -> None:
    dispatcher = ActionDispatcher()
    engine = PatternEngine(dispatcher, NODE_CATALOG, parse_patterns([PATTERN], "<t>", NODE_CATALOG))
    engine.process_batch([denial(0), denial(1)])
    policies: list[str] = []
    dispatcher.register("policy", lambda match, action: policies.append(str(match.group)))
    engine.process_batch([denial(2), denial(3)])
    assert policies == ["o"]
    assert dispatcher.stats["unhandled_policy"] == 1 and dispatcher.stats["ran_policy"] == 1
    assert dispatcher.stats["matches"] == 2
