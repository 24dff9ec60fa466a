"""A fake Telegram Bot API on loopback (aiohttp), speaking the real wire protocol:
`POST /bot<token>/<method>` with form or JSON parameters, answers
`{"ok": true, "result": ...}` or Telegram's error envelope
`{"ok": false, "error_code", "description", "parameters": {"retry_after"}}`.

Methods: getMe, getUpdates (long polling: waits up to `timeout` s for an update with
`update_id >= offset`; an offset confirms, and forgets, the updates below it),
sendMessage (refuses text over 4096 characters, as Telegram does). Tests push updates
(`push_message`, `push_raw`) and make the next calls of a method fail (`fail_next`).

`FakeTelegram` runs on the caller's event loop; `ThreadedFakeTelegram` runs one in a
thread of its own, for tests whose other waits block (integration tests).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

TOKEN = "123456:TEST-token_for-the-fake"
BOT_ID = 123456
MAX_TEXT_CHARS = 4096
MAX_POLL_S = 50.0


@dataclass
class Failure:
    status: int
    description: str
    retry_after: int | None = None


class FakeTelegram:
    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.updates: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.calls: list[str] = []  # every method called, in order
        self.offsets: list[int | None] = []  # the offset of every getUpdates
        self.failures: dict[str, deque[Failure]] = {}
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1)
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeTelegram:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeTelegram:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what tests do ----------------------------------------------------------------

    def push_message(self, chat_id: int, text: str, *, chat_type: str = "private") -> int:
        """Queue an update holding a text message from `chat_id`; returns its update_id."""
        update_id = next(self._update_ids)
        self.updates.append(
            {
                "update_id": update_id,
                "message": {
                    "message_id": next(self._message_ids),
                    "date": int(time.time()),
                    "chat": {"id": chat_id, "type": chat_type},
                    "from": {"id": chat_id, "is_bot": False, "first_name": "Tester"},
                    "text": text,
                },
            }
        )
        self._wake()
        return update_id

    def push_raw(self, update: dict[str, Any]) -> int:
        """Queue `update` as is, with the next update_id unless it names one."""
        update = {"update_id": next(self._update_ids), **update}
        self.updates.append(update)
        self._wake()
        return int(update["update_id"])

    def fail_next(
        self, method: str, status: int, description: str, *, retry_after: int | None = None
    ) -> None:
        """The next call of `method` gets this error instead of its answer."""
        self.failures.setdefault(method, deque()).append(Failure(status, description, retry_after))

    def texts_to(self, chat_id: int) -> list[str]:
        return [m["text"] for m in self.sent if m["chat"]["id"] == chat_id]

    async def wait_sent(self, count: int, timeout_s: float) -> None:
        """Until `count` messages have been sent in all (TimeoutError at the deadline)."""
        async with asyncio.timeout(timeout_s):
            while len(self.sent) < count:
                changed = self._changed
                await changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- the API ------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        self.calls.append(method)
        params = await _params(request)
        queued = self.failures.get(method)
        if queued:
            failure = queued.popleft()
            return _error(failure.status, failure.description, failure.retry_after)
        handler: Callable[[dict[str, Any]], Any] | None = {
            "getme": self._get_me,
            "getupdates": self._get_updates,
            "sendmessage": self._send_message,
        }.get(method.lower())
        if handler is None:
            return _error(404, "Not Found")
        try:
            result = await handler(params)
        except _BadRequest as e:
            return _error(400, f"Bad Request: {e}")
        return web.json_response({"ok": True, "result": result})

    async def _get_me(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"id": BOT_ID, "is_bot": True, "first_name": "Fake", "username": "fake_bot"}

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = _int(params.get("offset"))
        timeout_s = min(MAX_POLL_S, float(_int(params.get("timeout")) or 0))
        limit = _int(params.get("limit")) or 100
        self.offsets.append(offset)
        if offset is not None:
            # An offset confirms every update below it: Telegram forgets them.
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self.updates:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                break
        return self.updates[:limit]

    async def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = _int(params.get("chat_id"))
        text = params.get("text")
        if chat_id is None:
            raise _BadRequest("chat_id is empty")
        if not isinstance(text, str) or not text:
            raise _BadRequest("message text is empty")
        if len(text) > MAX_TEXT_CHARS:
            raise _BadRequest("message is too long")
        message = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private"},
            "from": {"id": BOT_ID, "is_bot": True, "first_name": "Fake"},
            "text": text,
        }
        self.sent.append(message)
        self._wake()
        return message


class _BadRequest(Exception):
    pass


def _error(status: int, description: str, retry_after: int | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return web.json_response(body, status=status)


async def _params(request: web.Request) -> dict[str, Any]:
    params: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        body = await request.json()
        if isinstance(body, dict):
            params.update(body)
    elif request.can_read_body:
        form = await request.post()
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
    return params


def _int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(json.loads(value) if isinstance(value, str) else value)
    except (ValueError, TypeError):
        return None


class ThreadedFakeTelegram:
    """A `FakeTelegram` on its own event loop in a thread (a context manager)."""

    def __init__(self, token: str = TOKEN) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.fake: FakeTelegram | None = None
        self._token = token

    def __enter__(self) -> ThreadedFakeTelegram:
        self._thread.start()
        self.fake = self._run(self._create())
        return self

    def __exit__(self, *exc: object) -> None:
        self._run(self.api.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _create(self) -> FakeTelegram:
        return await FakeTelegram(self._token).start()

    @property
    def api(self) -> FakeTelegram:
        assert self.fake is not None
        return self.fake

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` on the fake's loop (its state is the loop's)."""

        async def run() -> Any:
            return fn(*args, **kwargs)

        return self._run(run())

    @property
    def base_url(self) -> str:
        return self.api.base_url
