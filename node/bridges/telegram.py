"""The Telegram bridge: chats talk to the mesh, the mesh reaches chats (docs/bridges.md).

- A supervised loop long-polls getUpdates (offset kept in the store, so a restart does
  not answer twice). Each message is handled in its own task, at most
  `MAX_HANDLERS` at once (the poll waits for a slot: bounded, not queued).
- A chat is in `chats` (-> its zone) or is refused politely, no tool called. Each chat
  has a token bucket; beyond it the chat is told once to slow down, then ignored until
  it refills.
- Commands (`/tools`, `/call`, `/status`, `/peers`, `/history`, `/help`) run through the
  mesh catalog under the chat's zone; free text goes to System 4's planner when the node
  has one. Each turn is recorded in the context graph (`telegram_context.py`).
- The mesh tool `telegram.send` (zone `send_zone`, chats of this config only) lets any
  node message a chat; System 5's `alert` responses on this node go to `alert_chat`.
- `connected` while polls succeed; polls failing `PAIN_AFTER_FAILURES` times in a row
  raise pain (at most every `PAIN_INTERVAL_S`).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from vsmcp.node.bridges.model import BridgeContext, BridgeState, BridgeStatus
from vsmcp.node.bridges.telegram_commands import (
    MAX_MESSAGE_CHARS,
    MAX_REPLY_MESSAGES,
    CommandError,
    error_text,
    help_text,
    history_text,
    no_planner_text,
    parse_call,
    parse_command,
    result_text,
    status_text,
    tools_text,
    view_text,
)
from vsmcp.node.bridges.telegram_config import KEY, TelegramSection
from vsmcp.node.bridges.telegram_context import ChatContext
from vsmcp.node.errors import ConfigError
from vsmcp.node.tools.errors import ToolError
from vsmcp.node.tools.functions import FunctionProvider, PluginTool
from vsmcp.node.tools.model import CallContext, ToolResult, text_result, to_result
from vsmcp.node.vsm.alerts import alert_text
from vsmcp.node.vsm.events import AlgedonicSignal, Event, ResponseTaken
from vsmcp.node.vsm.limits import BucketMap, RateLimit

if TYPE_CHECKING:
    from vsmcp.node.bridges.telegram_api import TelegramClient

log = logging.getLogger(__name__)

# aiogram lives there; it takes seconds to import (it builds ~300 pydantic models), so it
# is imported by the poll loop in a thread, after the node is up, not by `create`.
API_MODULE: Final = "vsmcp.node.bridges.telegram_api"
# What Telegram's tokens look like (and what aiogram refuses otherwise): `<bot id>:<secret>`.
TOKEN_FORM: Final = re.compile(r"[0-9]+:\S+")
NAME: Final = "telegram"
SEND_TOOL: Final = "telegram.send"
UNIT_NAME: Final = "bridge-telegram"
PAIN_SOURCE: Final = "bridge:telegram"
# Commands that only read (help, the history itself): not turns of the conversation, so
# asking for the history does not push the turns it should show out of its window.
UNRECORDED_COMMANDS: Final = frozenset({"/history", "/help", "/start"})
KV_OFFSET: Final = "telegram_offset"
MAX_HANDLERS: Final = 16
# A chat's message longer than Telegram allows is not one Telegram sent.
MAX_INPUT_CHARS: Final = MAX_MESSAGE_CHARS
MAX_TRACKED_CHATS: Final = 4096
PAIN_AFTER_FAILURES: Final = 3
PAIN_INTERVAL_S: Final = 30.0
BACKOFF_MIN_S: Final = 0.5
BACKOFF_MAX_S: Final = 30.0
# Alerts sent to alert_chat at most this often; more in between are counted, not sent.
ALERT_INTERVAL_S: Final = 10.0
ALERT_BUFFER: Final = 256

SEND_SCHEMA: Final[Mapping[str, Any]] = {
    "type": "object",
    "properties": {
        "chat_id": {
            "type": ["integer", "string"],
            "description": "a chat of this bridge's config (chats or alert_chat)",
        },
        "text": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_MESSAGE_CHARS * MAX_REPLY_MESSAGES,
            "description": "split into messages of at most 4096 characters",
        },
    },
    "required": ["chat_id", "text"],
    "additionalProperties": False,
}


def create(section: TelegramSection, context: BridgeContext) -> TelegramBridge:
    """Build the bridge; a config it cannot use is a `ConfigError` naming the key."""
    section.check(context.zones)
    chats = section.chat_zones()
    alert_chat = section.alert_chat_id()
    if importlib.util.find_spec("aiogram") is None:
        raise ConfigError(KEY, "needs aiogram: pip install 'vsmcp[telegram]'")
    token = os.environ.get(section.token_env, "").strip()
    if not token:
        raise ConfigError(
            f"{KEY}.token_env", f"the environment variable {section.token_env} is not set"
        )
    if TOKEN_FORM.fullmatch(token) is None:
        raise ConfigError(
            f"{KEY}.token_env", f"{section.token_env} does not hold a bot token (<id>:<secret>)"
        )
    return TelegramBridge(section, context, token, chats, alert_chat)


class TelegramBridge:
    name = NAME

    def __init__(
        self,
        section: TelegramSection,
        context: BridgeContext,
        token: str,
        chats: Mapping[int, str],
        alert_chat: int | None,
    ) -> None:
        self._section = section
        self._context = context
        self._token = token
        # The Bot API client and its module (`API_MODULE`), once the poll loop made them.
        self.client: TelegramClient | None = None
        self._api: Any = None
        self._connecting = asyncio.Lock()
        self._chats = dict(chats)
        self._alert_chat = alert_chat
        self._limits = BucketMap(
            RateLimit(section.rate_per_s, section.burst), max_buckets=MAX_TRACKED_CHATS
        )
        self._warned: set[int] = set()  # chats told to slow down, until they may again
        self.conversations = ChatContext(context.state.graph, context.signer, section.context_turns)
        self._state: BridgeState = "connecting"
        self._since = time.time()
        self._errors = 0
        self._last_error = ""
        self.counters: Counter[str] = Counter()
        self._offset: int | None = None
        self._failures = 0
        self._last_pain = -PAIN_INTERVAL_S
        self._slots = asyncio.Semaphore(MAX_HANDLERS)
        self._handlers: set[asyncio.Task[None]] = set()
        self._poll: asyncio.Task[None] | None = None
        self._started = False
        self._last_alert = -ALERT_INTERVAL_S
        self._last_signal: AlgedonicSignal | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> TelegramBridge:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        stored = await self._context.store.kv_get(KV_OFFSET)
        if stored is not None:
            try:
                self._offset = int(stored.decode())
            except (UnicodeDecodeError, ValueError):
                # Telegram then resends what was not confirmed: better than not starting.
                log.warning("telegram: stored offset %r unusable; starting without", stored[:40])
        self._context.tools.local.add(FunctionProvider(UNIT_NAME, self._tools, kind="builtin"))
        if self._alert_chat is not None:
            self._context.events.subscribe(
                "telegram-alerts",
                self._on_events,
                capacity=ALERT_BUFFER,
                kinds=(AlgedonicSignal, ResponseTaken),
            )
        self._poll = self._context.loops.spawn("bridge-telegram-poll", self._poll_loop)

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        tasks = [t for t in (self._poll, *self._handlers) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._alert_chat is not None:
            await self._context.events.unsubscribe("telegram-alerts")
        await self._context.tools.local.supervisor.remove(UNIT_NAME)
        if self.client is not None:
            await self.client.close()
        self._set_state("stopped")

    @property
    def context(self) -> BridgeContext:
        return self._context

    def status(self) -> BridgeStatus:
        return BridgeStatus(
            name=NAME,
            state=self._state,
            outbox_depth=len(self._handlers),
            errors=self._errors,
            last_error=self._last_error,
            since=self._since,
            counters={
                **self.counters,
                "send_retry_after": self.client.retries_after if self.client else 0,
            },
        )

    def _set_state(self, state: BridgeState) -> None:
        if state != self._state:
            self._state = state
            self._since = time.time()

    def _error(self, what: str) -> None:
        self._errors += 1
        self._last_error = what[:500]

    # -- polling --------------------------------------------------------------------------

    async def _connect(self) -> TelegramClient:
        """The client, made at the first need (the poll loop's start, or a send before it)."""
        async with self._connecting:
            if self.client is None:
                self._api = await asyncio.to_thread(importlib.import_module, API_MODULE)
                self.client = self._api.TelegramClient(self._token, self._section.api_base)
            return self.client

    async def _poll_loop(self) -> None:
        client = await self._connect()
        api = self._api
        backoff = BACKOFF_MIN_S
        while True:
            try:
                updates = await client.get_updates(self._offset, self._section.poll_timeout_s)
            except api.TelegramRetryAfter as e:
                self.counters["retry_after"] += 1
                self._poll_failed(f"getUpdates: {e.message}")
                await asyncio.sleep(e.retry_after)
                continue
            except api.ApiFailure as e:
                self._poll_failed(f"getUpdates: {e}")
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)
                continue
            backoff = BACKOFF_MIN_S
            self._failures = 0
            self._set_state("connected")
            if updates:
                await self._take(client, updates)

    def _poll_failed(self, why: str) -> None:
        self._error(why)
        self._failures += 1
        self._set_state("down")
        log.warning("telegram: %s", why)
        now = time.monotonic()
        if self._failures >= PAIN_AFTER_FAILURES and now - self._last_pain >= PAIN_INTERVAL_S:
            self._last_pain = now
            intensity = min(1.0, 0.2 * self._failures)
            self._context.pain(
                PAIN_SOURCE,
                intensity,
                f"Telegram API failing ({self._failures} polls in a row): {why}",
            )

    async def _take(self, client: TelegramClient, updates: list[dict[str, Any]]) -> None:
        messages = []
        for raw in updates:
            update_id = raw.get("update_id") if isinstance(raw, dict) else None
            if isinstance(update_id, int) and not isinstance(update_id, bool):
                self._offset = max(self._offset or 0, update_id + 1)
            update = client.parse_update(raw)
            if update is None or update.message is None:
                self.counters["malformed" if update is None else "ignored"] += 1
                continue
            messages.append((update.message.chat.id, update.message.text or ""))
        # The offset is kept before anything is handled: after a crash or a restart a
        # message is lost at worst, never handled twice (a tool call may not be
        # idempotent).
        if self._offset is not None:
            await self._context.store.kv_set(KV_OFFSET, str(self._offset).encode())
        for chat_id, text in messages:
            self.counters["received"] += 1
            await self._slots.acquire()
            task = asyncio.create_task(self._handle(client, chat_id, text), name="telegram-message")
            self._handlers.add(task)
            task.add_done_callback(self._handled)

    def _handled(self, task: asyncio.Task[None]) -> None:
        self._handlers.discard(task)
        self._slots.release()

    # -- one message ----------------------------------------------------------------------

    async def _handle(self, client: TelegramClient, chat_id: int, text: str) -> None:
        try:
            reply = await self._reply(chat_id, text)
        except Exception:  # top-level handler of one message: the others go on
            self._error(f"handling a message of chat {chat_id} failed")
            log.exception("telegram: handling a message of chat %s failed", chat_id)
            reply = f"Sorry, that failed on node {self._context.node_name} (it is logged there)."
        if reply is None:
            return
        try:
            await client.send(chat_id, reply)
        except self._api.ApiFailure as e:
            self._error(f"sendMessage to {chat_id}: {e}")
            log.warning("telegram: reply to chat %s failed: %s", chat_id, e)
            return
        self.counters["replies"] += 1

    async def _reply(self, chat_id: int, text: str) -> str | None:
        """What to answer (None: nothing, e.g. a chat over its rate limit again)."""
        bucket = self._limits.bucket(str(chat_id), time.monotonic())
        wait = bucket.take(time.monotonic()) if bucket is not None else 0.0
        if wait > 0:
            self.counters["rate_limited"] += 1
            if chat_id in self._warned:
                return None
            if len(self._warned) >= MAX_TRACKED_CHATS:
                self._warned.clear()  # bounded: at worst a chat is told twice
            self._warned.add(chat_id)
            return f"Slow down: this chat may send again in {wait:.0f} s."
        self._warned.discard(chat_id)
        zone = self._chats.get(chat_id)
        if zone is None:
            self.counters["refused_chats"] += 1
            return (
                "Sorry, this chat is not connected to the mesh, so I cannot act on it. "
                f"An operator can add it (chat id {chat_id}) to [bridges.telegram] chats."
            )
        if len(text) > MAX_INPUT_CHARS:
            return f"That message is longer than {MAX_INPUT_CHARS} characters; please shorten it."
        if not text.strip():
            return help_text(zone, self._context.planner is not None)
        reply = await self._answer(chat_id, zone, text)
        # What the chat asked the mesh is the conversation; reading it back is not.
        if parse_command(text).name not in UNRECORDED_COMMANDS:
            self.conversations.record(chat_id, text, reply, self._context.node_name)
        return reply

    def _call_context(self, chat_id: int, zone: str) -> CallContext:
        return CallContext(
            caller_id=f"telegram:{chat_id}", caller_zone=zone, origin=f"telegram:{chat_id}"
        )

    async def _answer(self, chat_id: int, zone: str, text: str) -> str:
        command = parse_command(text)
        ctx = self._call_context(chat_id, zone)
        planner = self._context.planner
        if command.name == "":
            if planner is None:
                return no_planner_text(zone)
            self.counters["planned"] += 1
            try:
                answer = await planner.answer(command.rest, ctx)
            except ToolError as e:
                self.counters["call_errors"] += 1
                return error_text("plan", e)
            return str(answer.text)
        if command.name in ("/help", "/start"):
            return help_text(zone, planner is not None)
        if command.name == "/tools":
            return tools_text(self._context.tools.list_tools(ctx), zone)
        if command.name == "/history":
            return history_text(self.conversations.history(chat_id))
        if command.name == "/status":
            return await self._call(
                ctx, "vsm.status", {}, title=f"{self._context.node_name}:", view=status_text
            )
        if command.name == "/peers":
            return await self._call(ctx, "vsm.peers", {}, title="Peers:")
        if command.name == "/call":
            try:
                tool, arguments = parse_call(command.rest)
            except CommandError as e:
                return f"✗ {e}"
            return await self._call(ctx, tool, arguments)
        return f"Unknown command {command.name}. " + help_text(zone, planner is not None)

    async def _call(
        self,
        ctx: CallContext,
        tool: str,
        arguments: dict[str, Any],
        *,
        title: str = "",
        view: Callable[[str, Any], str] = view_text,
    ) -> str:
        self.counters["calls"] += 1
        try:
            result = await self._context.tools.call_tool(tool, arguments, ctx)
        except ToolError as e:
            self.counters["call_errors"] += 1
            return error_text(tool, e)
        if title and not result.get("isError") and "structuredContent" in result:
            return view(title, result["structuredContent"])
        return result_text(tool, result)

    # -- telegram.send and alerts ---------------------------------------------------------

    def _tools(self) -> list[PluginTool]:
        return [
            PluginTool(
                name=SEND_TOOL,
                fn=self._send_tool,
                description=(
                    "Send a text message to a Telegram chat this bridge knows "
                    f"(served by node {self._context.node_name})."
                ),
                input_schema=SEND_SCHEMA,
                zone=self._section.send_zone,
            )
        ]

    async def _send_tool(self, arguments: Mapping[str, Any], ctx: CallContext) -> ToolResult:
        try:
            chat_id = int(arguments["chat_id"])
        except ValueError:
            return _error_result(f"{arguments['chat_id']!r} is not a chat id")
        known = set(self._chats) | ({self._alert_chat} if self._alert_chat is not None else set())
        if chat_id not in known:
            return _error_result(f"chat {chat_id} is not one of this bridge's chats")
        client = await self._connect()
        try:
            sent = await client.send(chat_id, str(arguments["text"]))
        except self._api.ApiFailure as e:
            self._error(f"telegram.send to {chat_id}: {e}")
            return _error_result(f"Telegram refused the message: {e}")
        self.counters["sent"] += 1
        return to_result({"chat_id": chat_id, "messages": sent})

    async def _on_events(self, batch: list[Event]) -> None:
        for event in batch:
            if isinstance(event, AlgedonicSignal):
                self._last_signal = event
            elif isinstance(event, ResponseTaken) and event.action == "alert":
                await self._alert(event)

    async def _alert(self, event: ResponseTaken) -> None:
        signal = self._last_signal
        if signal is not None and signal.source == PAIN_SOURCE:
            return  # Telegram being down is not news to send through Telegram
        now = time.monotonic()
        if now - self._last_alert < ALERT_INTERVAL_S:
            self.counters["alerts_suppressed"] += 1
            return
        self._last_alert = now
        text = alert_text(self._context.node_name, event, signal)
        assert self._alert_chat is not None
        client = await self._connect()
        try:
            await client.send(self._alert_chat, text)
        except self._api.ApiFailure as e:
            self._error(f"alert to {self._alert_chat}: {e}")
            return
        self.counters["alerts"] += 1


def _error_result(text: str) -> ToolResult:
    return text_result(text, is_error=True)
