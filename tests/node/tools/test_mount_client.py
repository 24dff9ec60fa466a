"""A mounted server's log lines and requests reach only the call they belong to: one
that names no call (a 2025-11-25 server over stdio, e.g. logging in the background after
its call returned) reaches another client's call only if the mount opted in."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from typing import Any

import mcp_types as types
import pytest

from vsmcp.node.mcp.client_requests import ClientRequests, ClientState
from vsmcp.node.tools.model import CallContext
from vsmcp.node.tools.mount_client import MountClient


def _client_call(written: list[dict[str, Any]]) -> CallContext:
    async def write(message: dict[str, Any]) -> None:
        written.append(message)

    state = ClientState("session-2", frozenset({"sampling"}), log_level="debug")
    channel = ClientRequests().channel(state, write)
    return CallContext(caller_id="c2", caller_zone="public", origin="test", client=channel)


async def _background_line(mount: MountClient) -> None:
    # The SDK runs a 2025-11-25 server's notification in its own reading task, outside
    # any call's context.
    params = types.LoggingMessageNotificationParams(level="info", data="late line")
    callback = mount.client_kwargs()["logging_callback"]
    await asyncio.create_task(callback(params), context=contextvars.Context())


async def _background_ask(mount: MountClient) -> Any:
    callback = mount.client_kwargs()["list_roots_callback"]
    return await asyncio.create_task(callback(None), context=contextvars.Context())


async def test_a_line_naming_no_call_does_not_reach_another_clients_call() -> None:
    mount, written = MountClient("ask"), []
    with mount.calling(_client_call(written)):
        await _background_line(mount)
        refused = await _background_ask(mount)
    assert written == []
    assert mount.counts["logs_dropped"] == 1
    assert isinstance(refused, types.ErrorData) and "only_call_fallback" in refused.message


async def test_a_mount_that_opts_in_passes_it_to_its_only_call() -> None:
    mount, written = MountClient("ask", only_call_fallback=True), []
    with mount.calling(_client_call(written)):
        await _background_line(mount)
    assert [m["params"]["data"] for m in written] == ["late line"]


class _SlowServer:
    """The server side of subscriptions, as `MountClient.watching` sees it: what it is
    subscribed to, with an unsubscribe that waits until released and a subscribe
    that fails while `refuse` is set."""

    def __init__(self) -> None:
        self.subscribed: set[str] = set()
        self.calls: list[str] = []
        self.unsubscribing = asyncio.Event()
        self.release = asyncio.Event()
        self.refuse = False

    async def subscribe(self, uri: str) -> None:
        self.calls.append(f"subscribe {uri}")
        await asyncio.sleep(0)
        if self.refuse:
            raise RuntimeError("refused")
        self.subscribed.add(uri)

    async def unsubscribe(self, uri: str) -> None:
        self.calls.append(f"unsubscribe {uri}")
        self.unsubscribing.set()
        await self.release.wait()
        self.subscribed.discard(uri)


async def _watch(mount: MountClient, server: _SlowServer, uri: str, joined: asyncio.Event) -> None:
    async with mount.watching(uri, server.subscribe, server.unsubscribe) as queue:
        joined.set()
        await queue.get()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_call_joining_while_the_last_one_unsubscribes_subscribes_again() -> None:
    mount = MountClient("m")
    server = _SlowServer()
    server.release.set()
    uri = "demo://r"
    async with mount.watching(uri, server.subscribe, server.unsubscribe):
        assert server.subscribed == {uri}
    # The next "last" watcher leaves in the background, stuck in its unsubscribe...
    first_in = asyncio.Event()
    leave = asyncio.Event()

    async def last_watcher() -> None:
        async with mount.watching(uri, server.subscribe, server.unsubscribe):
            first_in.set()
            await leave.wait()

    leaving = asyncio.create_task(last_watcher(), name="test-last-watcher")
    await first_in.wait()
    server.release.clear()
    server.unsubscribing.clear()
    leave.set()
    await server.unsubscribing.wait()
    # ...when another call joins: it must end up subscribed on the server.
    joined = asyncio.Event()
    joining = asyncio.create_task(_watch(mount, server, uri, joined), name="test-joiner")
    server.release.set()
    await leaving
    await joined.wait()
    assert server.subscribed == {uri}
    assert server.calls[-2:] == [f"unsubscribe {uri}", f"subscribe {uri}"]
    assert mount.watchers(uri) == 1
    await _cancel(joining)
    assert server.subscribed == set()
    assert mount.watchers(uri) == 0


async def test_a_failed_subscribe_leaves_the_uri_for_the_next_call_to_subscribe() -> None:
    mount = MountClient("m")
    server = _SlowServer()
    server.release.set()
    uri = "demo://r"
    server.refuse = True
    joined = asyncio.Event()
    first = asyncio.create_task(_watch(mount, server, uri, joined), name="test-first")
    await asyncio.sleep(0)  # the first is inside its subscribe...
    second = asyncio.create_task(
        _watch(mount, server, uri, joined), name="test-second"
    )  # ...when this one joins
    await asyncio.sleep(0)
    server.refuse = False
    with pytest.raises(RuntimeError, match="refused"):
        await first
    await joined.wait()
    assert server.subscribed == {uri}  # the second subscribed itself
    assert server.calls == [f"subscribe {uri}", f"subscribe {uri}"]
    await _cancel(second)
    assert server.subscribed == set()
