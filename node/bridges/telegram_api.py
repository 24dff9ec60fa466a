"""The Bot API through aiogram 3, pointed at `api_base` (Telegram's, or a local server).

Two things aiogram does not do for us:
- cap what it reads: `CappedSession` refuses a response body over `MAX_RESPONSE_BYTES`;
- survive one bad update: aiogram's `GetUpdates` validates the whole batch at once, so a
  single malformed update would fail every poll and stall the offset forever. We fetch
  the batch as plain objects (`RawGetUpdates`) and validate each update on its own
  (`parse_update`): a bad one is skipped and counted, the offset still moves past it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    AiogramError,
    TelegramNetworkError,
    TelegramRetryAfter,
)
from aiogram.methods.base import TelegramMethod, TelegramType
from aiogram.types import Update
from aiohttp import ClientError, ClientTimeout
from pydantic import ValidationError

from vsmcp.node.bridges.telegram_commands import split_message

# A getUpdates answer holds at most 100 updates of at most ~4 KiB text each, plus
# entities: 4 MiB is far above any real answer and small enough to hold.
MAX_RESPONSE_BYTES: Final = 4 * 1024 * 1024
# A 429 asking to wait longer than this is an outage, not a pause: the send fails.
MAX_RETRY_AFTER_S: Final = 120.0
# How many 429s in a row one send waits out before it gives up.
MAX_RETRIES: Final = 3
# Extra time a long poll's HTTP request gets beyond the poll itself.
POLL_GRACE_S: Final = 10
# Requests other than long polls.
REQUEST_TIMEOUT_S: Final = 30
UPDATES_PER_POLL: Final = 100

# What the Bot API and aiogram raise for a request that failed (network, HTTP, decoding).
ApiFailure = (AiogramError, ClientError, asyncio.TimeoutError)


class CappedSession(AiohttpSession):
    """aiogram's aiohttp session, reading at most `MAX_RESPONSE_BYTES` of an answer."""

    async def make_request(
        self,
        bot: Bot,
        method: TelegramMethod[TelegramType],
        timeout: int | None = None,  # noqa: ASYNC109 - aiogram's signature
    ) -> TelegramType:
        session = await self.create_session()
        url = self.api.api_url(token=bot.token, method=method.__api_method__)
        form = self.build_form_data(bot=bot, method=method)
        try:
            async with session.post(
                url,
                data=form,
                timeout=ClientTimeout(total=self.timeout if timeout is None else timeout),
            ) as resp:
                body = await resp.content.read(MAX_RESPONSE_BYTES + 1)
                status = resp.status
        except TimeoutError as e:
            raise TelegramNetworkError(method=method, message="Request timeout error") from e
        except ClientError as e:
            raise TelegramNetworkError(method=method, message=f"{type(e).__name__}: {e}") from e
        if len(body) > MAX_RESPONSE_BYTES:
            raise TelegramNetworkError(
                method=method, message=f"answer larger than {MAX_RESPONSE_BYTES} bytes"
            )
        response = self.check_response(
            bot=bot, method=method, status_code=status, content=body.decode("utf-8", "replace")
        )
        return response.result  # type: ignore[return-value]


class RawGetUpdates(TelegramMethod[list[dict[str, Any]]]):
    """getUpdates, each update left as a plain object (see the module's docstring)."""

    __returning__ = list[dict[str, Any]]
    __api_method__ = "getUpdates"

    offset: int | None = None
    limit: int | None = None
    timeout: int | None = None
    allowed_updates: list[str] | None = None


class TelegramClient:
    """One bot: long polls, sends (split at 4096 characters, 429 waited out)."""

    def __init__(self, token: str, api_base: str) -> None:
        # The token's form was checked with the config (telegram.py: `TOKEN_FORM`).
        server = TelegramAPIServer.from_base(api_base)
        self.bot = Bot(token, session=CappedSession(api=server, timeout=REQUEST_TIMEOUT_S))
        # 429s waited out (a counter for the bridge's status).
        self.retries_after = 0

    async def close(self) -> None:
        await self.bot.session.close()

    async def check(self) -> str:
        """getMe: the bot's username (the token works)."""
        me = await self.bot.get_me(request_timeout=REQUEST_TIMEOUT_S)
        return me.username or str(me.id)

    async def get_updates(self, offset: int | None, timeout_s: int) -> list[dict[str, Any]]:
        method = RawGetUpdates(
            offset=offset, limit=UPDATES_PER_POLL, timeout=timeout_s, allowed_updates=["message"]
        )
        return await self.bot(method, request_timeout=timeout_s + POLL_GRACE_S)

    def parse_update(self, raw: object) -> Update | None:
        """The update, or None when it is not one (the caller counts and skips it)."""
        try:
            return Update.model_validate(raw, context={"bot": self.bot})
        except ValidationError:
            return None

    async def send(self, chat_id: int, text: str) -> int:
        """Send `text` (split into messages of at most 4096 characters, at most
        `MAX_REPLY_MESSAGES` of them); returns how many messages went out. Raises
        `ApiFailure` when one could not be sent."""
        parts = split_message(text)
        for part in parts:
            await self._send_one(chat_id, part)
        return len(parts)

    async def _send_one(self, chat_id: int, text: str) -> None:
        for attempt in range(MAX_RETRIES + 1):
            try:
                await self.bot.send_message(chat_id, text, request_timeout=REQUEST_TIMEOUT_S)
                return
            except TelegramRetryAfter as e:
                # Telegram says when to come back: wait exactly that, unless it is absurd.
                if attempt == MAX_RETRIES or e.retry_after > MAX_RETRY_AFTER_S:
                    raise
                self.retries_after += 1
                await asyncio.sleep(e.retry_after)
