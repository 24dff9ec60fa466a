"""NodeListen, the bridge's listen at the node, against the moments a real node cannot be
made to produce on cue: a stream lost while its replacement opens, an error the SDK does
not name, an update arriving with the acknowledgement.

`_Node` stands in for the SDK client's `listen` (a third-party surface, not our code):
each listen it opens is a queue the test feeds events and errors into, and a gate can
hold a listen's acknowledgement back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import pytest
from mcp.client.subscriptions import ResourceUpdated, SubscriptionLost
from mcp.shared.exceptions import MCPError

from tests.polling import async_wait_until
from vsmcp.node.mcp.bridge_listen import NodeListen
from vsmcp.node.mcp.protocol import OVERLOADED
from vsmcp.node.tools.client_channel import HELD_METHOD, UPDATED_METHOD
from vsmcp.node.tools.errors import ProviderError

if TYPE_CHECKING:
    from mcp.client.client import Client

    from vsmcp.node.tools.client_channel import ClientChannel


class _Listen:
    """One listen open at the stand-in node: honours every URI asked for."""

    def __init__(self, uris: list[str]) -> None:
        self.uris = frozenset(uris)
        self.honored = SimpleNamespace(resource_subscriptions=list(uris))
        self.events: asyncio.Queue[object] = asyncio.Queue()
        self.open = True

    def __aiter__(self) -> _Listen:
        return self

    async def __anext__(self) -> object:
        event = await self.events.get()
        if isinstance(event, BaseException):
            raise event
        return event


class _Node:
    def __init__(self, cap: int | None = None) -> None:
        # Listens open at once past which one is refused, as the node's listener cap does.
        self.cap = cap
        self.listens: list[_Listen] = []
        # The URI sets of the listens asked for, acknowledged or not.
        self.asked: list[frozenset[str]] = []
        # The URI set of a listen -> released when its acknowledgement may come.
        self.gates: dict[frozenset[str], asyncio.Event] = {}
        # Events already waiting when a listen of that URI set is acknowledged.
        self.first_events: dict[frozenset[str], list[object]] = {}

    @contextlib.asynccontextmanager
    async def listen(self, *, resource_subscriptions: list[str]) -> AsyncIterator[_Listen]:
        key = frozenset(resource_subscriptions)
        self.asked.append(key)
        if key in self.gates:
            await self.gates[key].wait()
        if self.cap is not None and sum(lsn.open for lsn in self.listens) >= self.cap:
            busy = {"limit": "listeners_per_caller", "retry_after_s": 1.0}
            raise MCPError(OVERLOADED, "Too many open notification streams", busy)
        listen = _Listen(resource_subscriptions)
        for event in self.first_events.get(key, []):
            listen.events.put_nowait(event)
        self.listens.append(listen)
        try:
            yield listen
        finally:
            listen.open = False


class _Channel:
    """The gateway's side of a hold: what it was told, in order."""

    def __init__(self) -> None:
        self.told: list[str] = []

    async def notify(self, method: str, params: Mapping[str, Any]) -> None:
        self.told.append(method)


def _hold(listen: NodeListen, uri: str) -> tuple[asyncio.Task[None], _Channel]:
    channel = _Channel()
    task = asyncio.create_task(listen.hold("vsm.mcp.node", uri, cast("ClientChannel", channel)))
    return task, channel


async def test_a_stream_lost_while_its_replacement_opens_leaves_the_new_holds_held() -> None:
    """`a` held by S1; `b` added: S2 (a, b) opens, and S1 is lost meanwhile. `a` hears
    it lost; `b` is still told it is held once S2 is, and the manager goes on."""
    node = _Node()
    bridge = NodeListen(cast("Client", node))
    a, a_channel = _hold(bridge, "r://a")
    await async_wait_until(lambda: a_channel.told == [HELD_METHOD], what="a held")
    both = frozenset({"r://a", "r://b"})
    node.gates[both] = gate = asyncio.Event()
    b, b_channel = _hold(bridge, "r://b")
    await async_wait_until(lambda: both in node.asked, what="S2 asked for")
    node.listens[0].events.put_nowait(SubscriptionLost("dropped"))
    with pytest.raises(ProviderError, match="listen lost"):
        await asyncio.wait_for(a, 10)
    gate.set()
    await async_wait_until(lambda: b_channel.told == [HELD_METHOD], what="b held")
    manager = bridge._manager
    assert manager is not None and not manager.done()
    # And it still follows changes: b's end closes the listen at the node.
    b.cancel()
    await asyncio.gather(b, return_exceptions=True)
    await async_wait_until(
        lambda: not any(listen.open for listen in node.listens), what="the listens closed"
    )
    await bridge.aclose()


async def test_a_stream_failing_with_an_error_the_sdk_does_not_name_fails_its_holds() -> None:
    """A transport error or the SDK's RuntimeError once its session closed: the stream
    is lost like any other, its holds told (not left waiting on it for good)."""
    node = _Node()
    bridge = NodeListen(cast("Client", node))
    a, a_channel = _hold(bridge, "r://a")
    await async_wait_until(lambda: a_channel.told == [HELD_METHOD], what="a held")
    node.listens[0].events.put_nowait(RuntimeError("the session is closed"))
    with pytest.raises(ProviderError, match="the session is closed"):
        await asyncio.wait_for(a, 10)
    await bridge.aclose()


async def test_a_hold_is_told_it_is_held_before_any_update() -> None:
    """An update already there when the node acknowledges the listen: the hold hears
    it is held first (its subscribe answered), then updates."""
    node = _Node()
    node.first_events[frozenset({"r://a"})] = [ResourceUpdated("r://a")]
    bridge = NodeListen(cast("Client", node))
    a, a_channel = _hold(bridge, "r://a")
    await async_wait_until(lambda: HELD_METHOD in a_channel.told, what="a held")
    node.listens[0].events.put_nowait(ResourceUpdated("r://a"))
    await async_wait_until(lambda: UPDATED_METHOD in a_channel.told, what="an update")
    assert a_channel.told[0] == HELD_METHOD, a_channel.told
    a.cancel()
    await asyncio.gather(a, return_exceptions=True)
    await bridge.aclose()


async def test_with_no_spare_listen_at_the_node_the_old_one_is_closed_first() -> None:
    """A node that lets the bridge hold one listen: a second URI cannot be opened
    new-before-old, so the old listen closes first and the new one holds both."""
    node = _Node(cap=1)
    bridge = NodeListen(cast("Client", node))
    a, a_channel = _hold(bridge, "r://a")
    await async_wait_until(lambda: a_channel.told == [HELD_METHOD], what="a held")
    b, b_channel = _hold(bridge, "r://b")
    await async_wait_until(lambda: b_channel.told == [HELD_METHOD], what="b held")
    assert [listen.uris for listen in node.listens if listen.open] == [
        frozenset({"r://a", "r://b"})
    ]
    assert not a.done()
    node.listens[-1].events.put_nowait(ResourceUpdated("r://a"))
    await async_wait_until(lambda: UPDATED_METHOD in a_channel.told, what="a's update")
    for hold in (a, b):
        hold.cancel()
    await asyncio.gather(a, b, return_exceptions=True)
    await bridge.aclose()
