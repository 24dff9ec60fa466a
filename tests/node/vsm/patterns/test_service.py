"""The pattern service: directory reloads (all or nothing), patterns pushed in the
policies CRDT (authority only; the rest ignored and counted), actions on the stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tests.crdt.harness import Clock
from tests.polling import async_wait_for
from vsmcp.crdt.policies import PolicyStore
from vsmcp.crdt.signing import Ed25519Signer
from vsmcp.crdt.sync import SyncEndpoint
from vsmcp.node.vsm.errors import PatternError
from vsmcp.node.vsm.events import NODE_CATALOG, Denial, Event, PatternMatched
from vsmcp.node.vsm.patterns.model import parse_patterns
from vsmcp.node.vsm.patterns.service import PatternService
from vsmcp.node.vsm.stream import EventStream

T = TypeVar("T")

AUTHORITY = Ed25519Signer(b"\x01" * 32)
IMMUNE_NODE = Ed25519Signer(b"\x02" * 32)
STRANGER = Ed25519Signer(b"\x03" * 32)

THREE_DENIALS = """
[[patterns]]
name = "three-denials"
kind = "denial"
group_by = "origin"
window = {count = 3, within_s = 10}
actions = [{type = "emit", label = "probe"}]
"""

ZONE_FILTER = """
[[patterns]]
name = "zone-denial"
kind = "denial"
where = {field = "limit", op = "eq", value = "zone"}
"""

BAD_OPERATOR = """
[[patterns]]
name = "broken"
kind = "denial"
where = {field = "limit", op = "like", value = "zone"}
"""


def _denial(ts: float, origin: str = "http:attacker") -> Denial:
    return Denial(ts=ts, origin=origin, zone="public", limit="zone", blocked="secret")


class Recorder:
    def __init__(self, stream: EventStream) -> None:
        self.events: list[Event] = []
        stream.subscribe("recorder", self.events.extend)


@pytest.fixture
async def stream() -> AsyncIterator[EventStream]:
    events = EventStream()
    async with events:
        yield events


async def test_a_refused_file_keeps_the_running_set_and_names_file_pattern_and_reason(
    stream: EventStream, tmp_path: Path
) -> None:
    (tmp_path / "a.toml").write_text(THREE_DENIALS)
    service = PatternService(stream, directory=tmp_path, poll_interval_s=0.1)
    async with service:
        assert [p.name for p in service.engine.patterns] == ["three-denials"]
        stream.publish_many([_denial(1.0), _denial(2.0)])  # two of three in the window
        (tmp_path / "b.toml").write_text(BAD_OPERATOR)
        assert not await service.reload_directory()
        error = service.last_error
        assert error is not None
        assert error.source == str(tmp_path / "b.toml")
        assert error.pattern == "broken"
        assert "like" in error.reason
        assert [p.name for p in service.engine.patterns] == ["three-denials"]
        assert service.stats["refused_reloads"] == 1
        # The same bad content is not parsed (nor logged) again at every poll.
        assert await service.reload_directory()
        assert service.stats["refused_reloads"] == 1
        # The old set kept its window: the third denial completes it.
        stream.publish(_denial(3.0))
        await async_wait_for(
            _async(lambda: service.engine.match_counts().get("three-denials") == 1),
            what="the kept pattern matching",
        )


async def test_the_polling_loop_picks_up_a_fixed_directory_and_keeps_unchanged_windows(
    stream: EventStream, tmp_path: Path
) -> None:
    (tmp_path / "a.toml").write_text(THREE_DENIALS)
    service = PatternService(stream, directory=tmp_path, poll_interval_s=0.1)
    recorder = Recorder(stream)
    async with service:
        stream.publish_many([_denial(1.0), _denial(2.0)])
        (tmp_path / "b.toml").write_text(BAD_OPERATOR)
        await async_wait_for(
            _async(lambda: service.stats["refused_reloads"] == 1), what="the bad file refused"
        )
        (tmp_path / "b.toml").write_text(ZONE_FILTER)
        await async_wait_for(
            _async(lambda: len(service.engine.patterns) == 2), what="the fixed file loaded"
        )
        assert service.last_error is None
        assert service.sources() == {
            "three-denials": f"dir:{tmp_path}",
            "zone-denial": f"dir:{tmp_path}",
        }
        stream.publish(_denial(3.0))
        matched = await async_wait_for(
            _async(lambda: [e for e in recorder.events if isinstance(e, PatternMatched)]),
            what="the emit action's event",
        )
        assert (matched[0].pattern, matched[0].group, matched[0].count) == (
            "three-denials",
            "http:attacker",
            3,
        )
        assert matched[0].label == "probe"
        view = service.view()
        by_name = {p["name"]: p for p in view["patterns"]}
        assert by_name["three-denials"]["matches"] == 1
        assert by_name["zone-denial"]["matches"] == 1  # the filter saw the third denial
        assert by_name["three-denials"]["kinds"] == ["denial"]
        assert view["evictions"] == 0


async def test_a_bad_directory_at_start_is_refused(stream: EventStream, tmp_path: Path) -> None:
    (tmp_path / "b.toml").write_text(BAD_OPERATOR)
    service = PatternService(stream, directory=tmp_path)
    with pytest.raises(PatternError, match="broken"):
        await service.start()
    assert service.engine.patterns == ()


def _pattern_body(name: str) -> dict[str, object]:
    return {"patterns": [{"name": name, "kind": "denial", "actions": [{"type": "emit"}]}]}


async def test_patterns_from_the_authority_apply_and_others_are_ignored_and_counted(
    stream: EventStream,
) -> None:
    clock = Clock()
    # This replica lets the immune node issue any kind (as a lax allowed_issuers might):
    # its pattern verifies in the CRDT but is not the authority's, so it is ignored.
    store = PolicyStore(
        replica_id=b"l",
        authority_keys=[AUTHORITY.public_key],
        allowed_issuers=lambda issuer, kind: issuer == IMMUNE_NODE.public_key,
        clock=clock,
    )
    service = PatternService(stream)
    service.watch_policies(store, [AUTHORITY.public_key])
    store.issue(AUTHORITY, "p1", "pattern", _pattern_body("pushed"), ttl_ms=60_000)
    assert [p.name for p in service.engine.patterns] == ["pushed"]
    assert service.sources()["pushed"].startswith("policy:")
    store.issue(IMMUNE_NODE, "p2", "pattern", _pattern_body("sneaky"), ttl_ms=60_000)
    assert [p.name for p in service.engine.patterns] == ["pushed"]
    assert service.unsigned_patterns() == 1
    # A record from an issuer this replica does not accept at all, arriving by sync:
    # the CRDT rejects it, and it is counted too.
    rogue = PolicyStore(replica_id=b"x", allowed_issuers=lambda issuer, kind: True, clock=clock)
    rogue.issue(STRANGER, "p3", "pattern", _pattern_body("rogue"), ttl_ms=60_000)
    rogue_endpoint, local_endpoint = SyncEndpoint([rogue]), SyncEndpoint([store])
    for message in rogue_endpoint.make_sync_request():
        for reply in local_endpoint.handle(message):
            rogue_endpoint.handle(reply)
    for message in local_endpoint.make_sync_request():
        for reply in rogue_endpoint.handle(message):
            local_endpoint.handle(reply)
    assert [p.name for p in service.engine.patterns] == ["pushed"]
    assert store.rejected["pattern"] == 1
    assert service.unsigned_patterns() == 2
    # A bad pattern from the authority is refused as a whole; the others keep running.
    store.issue(
        AUTHORITY, "p4", "pattern", {"patterns": [{"name": "x", "kind": "nope"}]}, ttl_ms=60_000
    )
    assert [p.name for p in service.engine.patterns] == ["pushed"]
    assert service.stats["refused_policies"] == 1
    # Revoked: gone.
    assert store.revoke(AUTHORITY.public_key, "p1", by=AUTHORITY)
    assert service.engine.patterns == ()


async def test_a_name_held_by_another_source_is_refused(
    stream: EventStream, tmp_path: Path
) -> None:
    (tmp_path / "a.json").write_text(json.dumps(_pattern_body("shared")))
    service = PatternService(stream, directory=tmp_path)
    store = PolicyStore(replica_id=b"l", authority_keys=[AUTHORITY.public_key], clock=Clock())
    async with service:
        service.watch_policies(store, [AUTHORITY.public_key])
        store.issue(AUTHORITY, "p1", "pattern", _pattern_body("shared"), ttl_ms=60_000)
        assert service.sources() == {"shared": f"dir:{tmp_path}"}
        assert service.stats["refused_policies"] == 1
        assert service.last_error is not None and "also used by" in str(service.last_error)


async def test_tool_actions_run_through_the_caller_and_failures_are_counted(
    stream: EventStream,
) -> None:
    calls: list[tuple[str, object, str]] = []

    async def call(tool: str, arguments: object, pattern: str) -> object:
        calls.append((tool, arguments, pattern))
        if tool == "missing":
            raise PatternError("<test>", pattern, "no such tool")
        return {}

    service = PatternService(stream)
    service.enable_tool_action(call)
    async with service:
        body = {
            "patterns": [
                {
                    "name": "p",
                    "kind": "denial",
                    "actions": [
                        {"type": "call", "tool": "vsm.status", "arguments": {"a": 1}},
                        {"type": "tool", "tool": "missing"},
                    ],
                }
            ]
        }
        service.set_source("test", parse_patterns(body, "test", NODE_CATALOG))
        stream.publish(_denial(1.0))
        await async_wait_for(
            _async(
                lambda: (
                    service.stats["tool_actions_ok"] == 1
                    and service.stats["tool_actions_failed"] == 1
                )
            ),
            what="both tool actions run",
        )
    assert calls[0] == ("vsm.status", {"a": 1}, "p")


def _async(probe: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    async def check() -> T:
        return probe()

    return check
