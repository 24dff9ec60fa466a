"""System 5's alerts from any node to a Telegram chat, through the mesh tool
`telegram.send` that a bridge node serves (`vsm.alert_telegram_chat`).

The bridge node sends its own alerts itself (`[bridges.telegram] alert_chat`); every other
node relays here: one call at a time, at most one alert per `ALERT_INTERVAL_S` (more are
counted, not sent: an alert storm must not become a storm of mesh calls), in the node's
own zone, so `telegram.send`'s zone (restricted by default) applies as to any caller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from vsmcp.mesh.service import Service
from vsmcp.node.tools.errors import ToolError
from vsmcp.node.tools.model import CallContext
from vsmcp.node.vsm.alerts import alert_text
from vsmcp.node.vsm.events import AlgedonicSignal, Event, ResponseTaken
from vsmcp.node.vsm.stream import EventStream

log = logging.getLogger(__name__)

SEND_TOOL: Final = "telegram.send"
SUBSCRIBER: Final = "alert-relay"
# At most one alert relayed per this many seconds (the bridge keeps the same pace).
ALERT_INTERVAL_S: Final = 10.0
SEND_TIMEOUT_S: Final = 30.0
_CAPACITY: Final = 256

CallTool = Callable[[str, Mapping[str, Any], CallContext], Awaitable[object]]


class AlertRelay(Service):
    def __init__(
        self,
        *,
        chat_id: str,
        events: EventStream,
        call_tool: CallTool,
        node_id: str,
        node_name: str,
        zone: str,
    ) -> None:
        self._chat_id = chat_id
        self._events = events
        self._call_tool = call_tool
        self._node_id = node_id
        self._node_name = node_name
        self._zone = zone
        self._last_signal: AlgedonicSignal | None = None
        self._last_sent = -ALERT_INTERVAL_S
        self._sending: asyncio.Task[None] | None = None
        self._started = False
        self.stats: Counter[str] = Counter()

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._events.subscribe(
            SUBSCRIBER, self._on_events, capacity=_CAPACITY, kinds=(AlgedonicSignal, ResponseTaken)
        )

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        await self._events.unsubscribe(SUBSCRIBER)
        task, self._sending = self._sending, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _on_events(self, batch: list[Event]) -> None:
        for event in batch:
            if isinstance(event, AlgedonicSignal):
                self._last_signal = event
            elif isinstance(event, ResponseTaken) and event.action == "alert":
                self._relay(event)

    def _relay(self, response: ResponseTaken) -> None:
        now = time.monotonic()
        busy = self._sending is not None and not self._sending.done()
        if busy or now - self._last_sent < ALERT_INTERVAL_S:
            self.stats["suppressed"] += 1
            return
        self._last_sent = now
        text = alert_text(self._node_name, response, self._last_signal)
        self._sending = asyncio.create_task(self._send(text), name="alert-relay-send")

    async def _send(self, text: str) -> None:
        ctx = CallContext(
            caller_id=self._node_id, caller_zone=self._zone, origin="vsm:alert"
        ).with_timeout(SEND_TIMEOUT_S)
        try:
            result = await self._call_tool(SEND_TOOL, {"chat_id": self._chat_id, "text": text}, ctx)
        except ToolError as e:
            self._failed(str(e))
            return
        if isinstance(result, Mapping) and result.get("isError"):
            self._failed(str(result.get("content")))
            return
        self.stats["sent"] += 1

    def _failed(self, why: str) -> None:
        self.stats["failed"] += 1
        log.warning("alert to Telegram chat %s not sent: %s", self._chat_id, why[:300])
