"""A mounted server's log lines and requests reach only the call they belong to: one
that names no call (a 2025-11-25 server over stdio, e.g. logging in the background after
its call returned) reaches another client's call only if the mount opted in."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import mcp_types as types

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
