"""The node's event stream: what real nodes publish (calls, denials, envelopes,
membership, units, registry, policies) and the stream's metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from tests.polling import async_wait_for
from vsmcp.node.app.config import load_config
from vsmcp.node.app.node import Node
from vsmcp.node.vsm.events import (
    Denial,
    EnvelopeRejected,
    Event,
    MembershipChanged,
    PolicyChanged,
    RegistryChanged,
    ToolCallFinished,
    UnitStateChanged,
)

E = TypeVar("E", bound=Event)

MODERN = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


def _config(data_dir: Path, **extra: Any) -> Any:
    overrides = {
        "node.data_dir": str(data_dir),
        "node.dev": True,
        "node.debug_api": True,
        "http.port": 0,
        "mesh.port": 0,
        "mesh.preset": "local",
        "mesh.mdns": False,
        "tools.entry_points": False,
        **extra,
    }
    return load_config(overrides=overrides)


class Recorder:
    """A subscriber keeping every event it is handed."""

    def __init__(self, node: Node) -> None:
        self.events: list[Event] = []
        node.events.subscribe("test-recorder", self.events.extend)

    def of(self, cls: type[E], where: Callable[[E], bool] = lambda e: True) -> list[E]:
        return [e for e in self.events if isinstance(e, cls) and where(e)]


@dataclass
class Pair:
    provider: Node
    entry: Node
    at_provider: Recorder
    at_entry: Recorder

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.entry.http_port}/mcp"


async def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    headers = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": body["method"]}
    if body["method"] == "tools/call":
        headers["Mcp-Name"] = body["params"]["name"]
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as r,
    ):
        result: dict[str, Any] = await r.json()
        return result


async def _call(url: str, name: str) -> dict[str, Any]:
    params = {"name": name, "arguments": {}, "_meta": MODERN}
    return await _post(url, {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params})


async def _listed(url: str, names: set[str]) -> bool:
    body = await _post(
        url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": MODERN}}
    )
    return names <= {t["name"] for t in body["result"]["tools"]}


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    provider_node = Node(
        _config(
            tmp_path / "a", **{"limits.tools": {"limited.echo": {"rate_per_s": 0.001, "burst": 1}}}
        )
    )
    at_provider = Recorder(provider_node)  # before start: unit state changes at start too
    async with provider_node as provider:
        seed = f"{provider.identity.node_id}@127.0.0.1:{provider.mesh_port}"
        # Certified "public", but loopback callers at the entry may claim "restricted".
        entry_node = Node(
            _config(
                tmp_path / "b",
                **{
                    "mesh.seeds": [seed],
                    "trust.dev_zone": "public",
                    "mcp.loopback_zone": "restricted",
                },
            )
        )
        at_entry = Recorder(entry_node)
        async with entry_node as entry:
            provider.debug_tool("ops.echo", "ops", True)
            provider.debug_tool("limited.echo", "public", True)
            url = f"http://127.0.0.1:{entry.http_port}/mcp"
            await async_wait_for(
                lambda: _listed(url, {"ops.echo", "limited.echo"}),
                timeout_s=20,
                what="provider tools listed at the entry node",
            )
            yield Pair(provider, entry, at_provider, at_entry)


async def _until(probe: Callable[[], list[E]], what: str) -> list[E]:
    async def check() -> list[E]:
        return probe()

    return await async_wait_for(check, timeout_s=10, what=what)


async def test_a_mesh_call_is_a_tool_call_event_at_the_entry_node_and_at_the_provider(
    pair: Pair,
) -> None:
    body = await _call(pair.url, "limited.echo")
    assert "result" in body, body
    provider_id = pair.provider.identity.node_id
    entry_id = pair.entry.identity.node_id

    def at_entry() -> list[ToolCallFinished]:
        return pair.at_entry.of(ToolCallFinished, lambda e: e.tool == "limited.echo")

    def at_provider() -> list[ToolCallFinished]:
        return pair.at_provider.of(ToolCallFinished, lambda e: e.tool == "limited.echo")

    (entry_event,) = await _until(at_entry, "tool_call at the entry node")
    assert entry_event.provider == provider_id
    assert entry_event.origin == "http:loopback"
    assert entry_event.zone == "restricted"
    assert entry_event.outcome == "ok" and entry_event.reason is None
    assert entry_event.priority == "normal"
    assert entry_event.latency_ms > 0
    (served,) = await _until(at_provider, "tool_call at the provider")
    assert served.provider == provider_id
    assert served.origin == f"mesh:{entry_id}"
    assert served.entry_origin == "http:loopback"
    # The entry node's certificate says public: that is the zone the call ran in.
    assert served.zone == "public"
    assert served.outcome == "ok"


async def test_denials_by_zone_and_by_rate_limit_are_published_where_they_happen(
    pair: Pair,
) -> None:
    # The entry lets "restricted" call ops.echo; the provider sees zone public: denied.
    body = await _call(pair.url, "ops.echo")
    assert "error" in body, body
    entry_id = pair.entry.identity.node_id
    zone_denials = await _until(
        lambda: pair.at_provider.of(Denial, lambda e: e.limit == "zone"), "a zone denial"
    )
    assert zone_denials[0].blocked == "ops.echo"
    assert zone_denials[0].origin == f"mesh:{entry_id}"
    assert zone_denials[0].zone == "public"
    assert zone_denials[0].entry_origin == "http:loopback"
    failed = await _until(
        lambda: pair.at_entry.of(ToolCallFinished, lambda e: e.tool == "ops.echo"),
        "the denied call at the entry",
    )
    assert failed[0].outcome == "zone_denied"
    assert failed[0].reason
    # Burst 1, no refill to speak of: the second call is refused by the rate limit.
    await _call(pair.url, "limited.echo")
    await _call(pair.url, "limited.echo")
    rate = await _until(
        lambda: pair.at_provider.of(Denial, lambda e: e.limit.startswith("rate:")),
        "a rate-limit denial",
    )
    assert rate[0].limit == "rate:per-tool"
    assert rate[0].blocked == "limited.echo"


async def test_a_zone_denial_at_the_gateway_is_published_by_the_entry_node(
    tmp_path: Path,
) -> None:
    node = Node(_config(tmp_path, **{"mcp.loopback_zone": "public"}))
    recorder = Recorder(node)
    async with node:
        node.debug_tool("secret.echo", "restricted", True)
        url = f"http://127.0.0.1:{node.http_port}/mcp"
        body = await _call(url, "secret.echo")
        assert "error" in body, body
        denials = await _until(lambda: recorder.of(Denial), "a denial at the gateway")
        assert (denials[0].origin, denials[0].zone, denials[0].limit, denials[0].blocked) == (
            "http:loopback",
            "public",
            "zone",
            "secret.echo",
        )


async def test_membership_registry_and_unit_state_changes_are_events(pair: Pair) -> None:
    entry_id = pair.entry.identity.node_id
    provider_id = pair.provider.identity.node_id
    alive = await _until(
        lambda: pair.at_provider.of(MembershipChanged, lambda e: e.peer == entry_id),
        "the entry node joining, at the provider",
    )
    assert alive[-1].state == "alive"
    added = await _until(
        lambda: pair.at_entry.of(
            RegistryChanged, lambda e: e.tool == "ops.echo" and e.change == "added"
        ),
        "the provider's tool added to the entry's registry",
    )
    assert added[0].provider == provider_id
    running = pair.at_provider.of(UnitStateChanged, lambda e: e.state == "running")
    assert {"builtin"} <= {e.unit for e in running}, pair.at_provider.events
    assert all(e.previous == "starting" for e in running)
    # A tool leaving the provider is a registry removal at the entry node.
    pair.provider.debug_tool("ops.echo", "ops", False)
    await _until(
        lambda: pair.at_entry.of(
            RegistryChanged, lambda e: e.tool == "ops.echo" and e.change == "removed"
        ),
        "the provider's tool removed from the entry's registry",
    )


async def test_a_policy_issued_on_one_node_is_a_policy_event_where_it_applies(
    tmp_path: Path,
) -> None:
    node = Node(_config(tmp_path))
    recorder = Recorder(node)
    async with node:
        replication = node._replication
        assert replication is not None
        policies = replication.state.policies
        policies.issue(node.identity.key, "p1", "note", {"x": 1}, ttl_ms=60_000)
        events = await _until(lambda: recorder.of(PolicyChanged), "a policy event")
        assert (events[0].policy, events[0].change) == ("p1", "added")
        assert events[0].origin == node.identity.node_id
        policies.revoke(node.identity.key.public_key, "p1", by=node.identity.key)
        await _until(
            lambda: recorder.of(PolicyChanged, lambda e: e.change == "removed"),
            "the revocation as a policy event",
        )


async def test_a_rejected_envelope_names_the_connection_not_the_claim(pair: Pair) -> None:
    mesh = pair.provider.mesh
    entry_id = pair.entry.identity.node_id
    peer = mesh.peers[entry_id]
    from vsmcp.node.peers.service import _curve_key

    # A wire that fails verification, arriving on the entry node's connection.
    assert mesh._open(_curve_key(peer.public_key), b"\x00" * 200) is None
    rejected = await _until(lambda: pair.at_provider.of(EnvelopeRejected), "a rejection")
    assert rejected[0].sender == entry_id
    assert rejected[0].reason in {"malformed", "bad_version", "bad_signature"}


async def test_event_counts_and_drops_are_metrics(tmp_path: Path) -> None:
    node = Node(_config(tmp_path))
    recorder = Recorder(node)
    async with node:
        await _until(lambda: recorder.of(UnitStateChanged), "unit state events")

        async def counted() -> bool:
            text = node.render_metrics().decode()
            return 'vsmcp_events_total{kind="unit_state"}' in text and all(
                not line.startswith('vsmcp_events_total{kind="unit_state"} 0')
                for line in text.splitlines()
            )

        await async_wait_for(counted, timeout_s=10, what="unit_state events counted")
        text = node.render_metrics().decode()
        assert 'vsmcp_events_dropped_total{subscriber="test-recorder"} 0.0' in text
        # A subscriber whose buffer is full drops, and the metric says so.
        node.events.subscribe("tiny", lambda batch: None, capacity=1)
        node.events.publish(UnitStateChanged(ts=0.0, unit="u", state="running"))
        node.events.publish(UnitStateChanged(ts=0.0, unit="u", state="running"))
        text = node.render_metrics().decode()
        assert 'vsmcp_events_dropped_total{subscriber="tiny"} 1.0' in text


def _pushed(node: Node) -> list[dict[str, Any]]:
    """The node's patterns apart from the immune system's built-in ones."""
    return [p for p in node.patterns_view()["patterns"] if p["source"] != "vsm.immune"]


async def test_a_pattern_policy_applies_where_its_issuer_is_the_authority_only(
    pair: Pair,
) -> None:
    # Dev nodes are each their own authority: the provider's pattern is the authority's
    # at the provider, and a stranger's at the entry node (refused by the CRDT, counted).
    replication = pair.provider._replication
    assert replication is not None
    body = {
        "patterns": [
            {
                "name": "pushed",
                "kind": "denial",
                "actions": [{"type": "call", "tool": "vsm.status"}],
            }
        ]
    }
    replication.state.policies.issue(
        pair.provider.identity.key, "p1", "pattern", body, ttl_ms=60_000
    )
    view = _pushed(pair.provider)
    assert [(p["name"], p["actions"]) for p in view] == [("pushed", ["tool"])]
    await async_wait_for(
        _async_probe(lambda: pair.entry.patterns_view()["unsigned_policies_ignored"] == 1),
        timeout_s=20,
        what="the provider's pattern refused at the entry node",
    )
    assert _pushed(pair.entry) == []
    # The pattern matches a denial at the provider; its `call` action runs vsm.status
    # through the provider's own catalog.
    await _call(pair.url, "ops.echo")
    await async_wait_for(
        _async_probe(lambda: pair.provider.patterns.stats["tool_actions_ok"] >= 1),
        what="the tool action run",
    )
    assert _pushed(pair.provider)[0]["matches"] >= 1
    assert pair.provider.patterns_view()["stats"].get("tool_actions_failed", 0) == 0


def _async_probe(probe: Callable[[], bool]) -> Callable[[], Any]:
    async def check() -> bool:
        return probe()

    return check


async def test_registry_events_make_the_routing_table_look_again_without_waiting(
    tmp_path: Path,
) -> None:
    node = Node(_config(tmp_path))
    async with node:
        tools = node._tools
        assert tools is not None

        async def checked_on_event() -> int:
            return tools.stats.get("tool_set_checks_on_event", 0)

        before = tools.stats.get("tool_set_checks_on_event", 0)
        node.events.publish(RegistryChanged(ts=0.0, tool="t", provider="p", change="added"))
        await async_wait_for(
            lambda: _gt(checked_on_event, before), what="a tool-set check after the event"
        )


async def _gt(read: Callable[[], Any], than: int) -> bool:
    return bool(await read() > than)
