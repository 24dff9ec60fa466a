"""One POST's reply at /mcp: nothing is written to it once its result is (a late log or
request of the call gets ConnectionError, and the connection carries one response)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from vsmcp.node.mcp.http import _Reply

RESULT = {"jsonrpc": "2.0", "id": 1, "result": {"ok": True}}
LATE = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info"}}

Handler = Callable[[_Reply], Awaitable[web.StreamResponse]]


async def _serve(handler: Handler) -> AsyncIterator[tuple[str, list[BaseException | None]]]:
    late: list[BaseException | None] = []

    async def post(request: web.Request) -> web.StreamResponse:
        reply = _Reply(request, {}, keepalive_s=30)
        response = await handler(reply)
        try:
            await reply.notify(LATE)
            late.append(None)
        except ConnectionError as e:
            late.append(e)
        return response

    app = web.Application()
    app.router.add_post("/mcp", post)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/mcp", late
    finally:
        await runner.cleanup()


async def _finish_json(reply: _Reply) -> web.StreamResponse:
    return await reply.finish(RESULT)


async def _finish_stream(reply: _Reply) -> web.StreamResponse:
    await reply.notify({"jsonrpc": "2.0", "method": "notifications/progress", "params": {}})
    return await reply.finish(RESULT)


@pytest.mark.parametrize("handler", [_finish_json, _finish_stream])
async def test_a_notification_after_the_result_is_refused(handler: Handler) -> None:
    async for url, late in _serve(handler):
        async with aiohttp.ClientSession() as http:
            headers = {"Accept": "application/json, text/event-stream"}
            async with http.post(url, data=b"{}", headers=headers) as response:
                body = await response.read()
            assert late and isinstance(late[0], ConnectionError)
            messages = _messages(body, response.content_type)
            assert messages[-1] == RESULT
            assert LATE not in messages
            # The keep-alive connection still serves its next request (no stray response).
            late.clear()
            async with http.post(url, data=b"{}", headers=headers) as again:
                assert _messages(await again.read(), again.content_type)[-1] == RESULT


async def test_a_stream_opening_while_the_result_is_written_carries_it() -> None:
    """A log opening the stream races the result: one response, the result last."""

    async def racing(reply: _Reply) -> web.StreamResponse:
        log = asyncio.create_task(reply.notify(LATE))
        await asyncio.sleep(0)  # the log is preparing the stream now
        response = await reply.finish(RESULT)
        await asyncio.gather(log, return_exceptions=True)
        return response

    async for url, _ in _serve(racing):
        async with aiohttp.ClientSession() as http:
            headers = {"Accept": "application/json, text/event-stream"}
            async with http.post(url, data=b"{}", headers=headers) as response:
                messages = _messages(await response.read(), response.content_type)
            assert messages[-1] == RESULT
            async with http.post(url, data=b"{}", headers=headers) as again:
                assert _messages(await again.read(), again.content_type)[-1] == RESULT


def _messages(body: bytes, content_type: str) -> list[dict[str, Any]]:
    if content_type == "application/json":
        return [json.loads(body)]
    return [
        json.loads(line[len(b"data: ") :])
        for line in body.splitlines()
        if line.startswith(b"data: ")
    ]
