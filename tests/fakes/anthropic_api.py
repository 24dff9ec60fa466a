"""A local stand-in for the Anthropic Messages API (`POST /v1/messages`), speaking its
wire format: the key as `x-api-key` or `Authorization: Bearer` (the SDK 2.x sends the
latter), an `anthropic-version` header, `message` objects with `text`
and `tool_use` content blocks, `stop_reason`, `usage`, and the API's error objects
(`{"type": "error", "error": {"type": "overloaded_error", ...}}` with status 529, ...).

Tests point the official `anthropic` client at it by base URL. What it answers is a
script: each request takes the next `Turn` (a reply, an error, or a hang that outlasts
the client's timeout); with the script spent it answers from `fallback`. Every request's
JSON body is kept in `requests`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

API_KEY = "sk-ant-test-0123456789"
MAX_BODY_BYTES = 1 << 20
_ids = itertools.count(1)


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def tool_use_block(name: str, arguments: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_{next(_ids):06d}", "name": name, "input": arguments}


@dataclass
class Turn:
    """One answer: `content` and `stop_reason`, or an error (`status`, `error_type`), or
    `hang_s` seconds of silence first."""

    content: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = "end_turn"
    status: int = 200
    error_type: str = ""
    message: str = ""
    hang_s: float = 0.0


def reply(*content: dict[str, Any], stop_reason: str | None = None) -> Turn:
    uses_tools = any(block["type"] == "tool_use" for block in content)
    return Turn(list(content), stop_reason or ("tool_use" if uses_tools else "end_turn"))


def error(status: int, error_type: str, message: str) -> Turn:
    return Turn(status=status, error_type=error_type, message=message)


def overloaded() -> Turn:
    return error(529, "overloaded_error", "Overloaded")


def tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The `tool_result` blocks of a request's last user message."""
    last = body["messages"][-1]
    content = last.get("content")
    if last.get("role") != "user" or not isinstance(content, list):
        return []
    return [block for block in content if block.get("type") == "tool_result"]


def echo_results(body: dict[str, Any]) -> Turn:
    """A final turn that repeats what the tools returned (as a model summarising would)."""
    results = tool_results(body)
    said = "; ".join(
        f"{'error: ' if r.get('is_error') else ''}{_text(r.get('content'))}" for r in results
    )
    return reply(text_block(f"Here is what I found: {said}" if results else "I cannot help."))


def _text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
    return str(content)


class FakeAnthropic:
    def __init__(self, script: list[Turn] | None = None, port: int = 0) -> None:
        self.script = list(script or [])
        self.fallback: Callable[[dict[str, Any]], Turn] = echo_results
        self.requests: list[dict[str, Any]] = []
        # Clients to close before the server goes (a test's planners).
        self.planners: list[Any] = []
        self._runner: web.AppRunner | None = None
        # 0: a free one; a fixed one for a node configured before the fake starts.
        self.port = port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeAnthropic:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/messages", self._messages)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for planner in self.planners:
            await planner.aclose()
        if self._runner is not None:
            await self._runner.cleanup()

    @staticmethod
    def _error(status: int, error_type: str, message: str) -> web.Response:
        body = {"type": "error", "error": {"type": error_type, "message": message}}
        return web.json_response(body, status=status, headers={"request-id": "req_fake"})

    async def _messages(self, request: web.Request) -> web.Response:
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if API_KEY not in (request.headers.get("x-api-key"), bearer):
            return self._error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return self._error(400, "invalid_request_error", "anthropic-version header required")
        try:
            body = json.loads(await request.read())
        except ValueError:
            return self._error(400, "invalid_request_error", "the body is not JSON")
        for key in ("model", "max_tokens", "messages"):
            if key not in body:
                return self._error(400, "invalid_request_error", f"{key}: Field required")
        self.requests.append(body)
        turn = self.script.pop(0) if self.script else self.fallback(body)
        if turn.hang_s:
            await asyncio.sleep(turn.hang_s)
        if turn.status != 200:
            return self._error(turn.status, turn.error_type, turn.message)
        return web.json_response(
            {
                "id": f"msg_{next(_ids):06d}",
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": turn.content,
                "stop_reason": turn.stop_reason,
                "stop_sequence": None,
                "usage": {"input_tokens": 50 * len(body["messages"]), "output_tokens": 20},
            }
        )
