"""Resource subscriptions of a 2025-11-25 session, kept across the mesh.

`resources/subscribe` from a session starts one task per URI (at most
`MAX_SUBSCRIPTIONS_PER_SESSION`) that keeps a call of the provider's offers tool
(`vsm.mcp.<unit>`, method `resources/subscribe`) running: the provider subscribes on
its server and passes each `notifications/resources/updated` back over the call's way to
its client (`ClientChannel.notify`, across the mesh as a CLIENT_REQUEST), until the
call's deadline; then the task calls again. The updates land in the session's
`SessionUpdates` and go out on its GET stream (`node.mcp.http`).
`resources/unsubscribe`, or the session's end, cancels the task and so the call.

A 2026-07-28 `subscriptions/listen` stream with `resourceSubscriptions` holds the same
tasks, one per URI it honours (`Subscriptions.listen`), for as long as the stream is open.

Both transports use them the same way: over HTTP the updates go out on the session's GET
stream or the listen stream (`node.mcp.http`), over stdio on stdout (`node.mcp.stdio`,
one connection being one session). Over stdio the provider is the bridge, which says
when the node holds a URI (`HELD_METHOD`): there `resources/subscribe` is answered only
then (an error if it cannot be held), and a subscription ending for good is told to the
client (`on_end`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Final

from vsmcp.node.mcp.protocol import (
    INVALID_PARAMS,
    PROVIDER_ERROR,
    Caller,
    McpCore,
    McpError,
    Message,
    notification,
)
from vsmcp.node.tools.client_channel import HELD_METHOD, UPDATED_METHOD, no_capability
from vsmcp.node.tools.errors import ToolError
from vsmcp.node.tools.offers import MAX_URI_CHARS, SUBSCRIBE_METHOD

log = logging.getLogger(__name__)

UNSUBSCRIBE_METHOD: Final = "resources/unsubscribe"
SUBSCRIPTION_METHODS: Final = frozenset((SUBSCRIBE_METHOD, UNSUBSCRIBE_METHOD))
MAX_SUBSCRIPTIONS_PER_SESSION: Final = 16
# Updates not yet written to the session's stream: the oldest are dropped beyond this.
MAX_PENDING_UPDATES: Final = 64
# A failed subscribe call is tried once more after this; a second failure in a row ends
# the subscription. A call that ended sooner than this (a short call timeout) is made
# again only this long after it started.
RETRY_S: Final = 1.0
# How long a subscribe (or a listen's subscriptions, together) may wait for its provider
# to say it holds the URIs (`confirm`) before it is refused: a provider that never says
# so would otherwise keep the request open for good.
CONFIRM_TIMEOUT_S: Final = 30.0


class SessionUpdates:
    """The `ClientChannel` of a session's subscribe calls: it takes resource updates
    only (no logs, no requests) and keeps them for the session's GET stream."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self.pending: deque[str] = deque(maxlen=MAX_PENDING_UPDATES)
        self._wake = wake
        # URI -> who waits to hear that the provider holds it (`HELD_METHOD`).
        self._held: dict[str, asyncio.Future[None]] = {}

    def expect_held(self, uri: str) -> asyncio.Future[None]:
        """Done once a provider says it holds `uri` (see `HELD_METHOD`)."""
        waiter = self._held[uri] = asyncio.get_running_loop().create_future()
        return waiter

    def forget_held(self, uri: str, waiter: asyncio.Future[None]) -> None:
        """`waiter` (from `expect_held`) is no longer waited on: a later notice for `uri`
        finds no entry (none kept for a refused or cancelled subscribe)."""
        if self._held.get(uri) is waiter:
            del self._held[uri]

    @property
    def log_level(self) -> str | None:
        return None

    def wants_log(self, level: str) -> bool:
        return False

    def capabilities(self) -> frozenset[str]:
        return frozenset()

    async def log(self, params: Mapping[str, Any]) -> None:
        return None

    async def notify(self, method: str, params: Mapping[str, Any]) -> None:
        uri = params.get("uri")
        if not isinstance(uri, str) or len(uri) > MAX_URI_CHARS:
            return
        if method == UPDATED_METHOD:
            self.pending.append(uri)
            self._wake()
        elif method == HELD_METHOD:
            waiter = self._held.pop(uri, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def request(
        self, method: str, params: Mapping[str, Any], timeout_s: float | None
    ) -> dict[str, Any]:
        raise no_capability(method)

    async def send(
        self,
        write: Callable[[dict[str, Any]], Awaitable[None]],
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the pending updates as `notifications/resources/updated` messages,
        oldest first (`meta`: the listen stream's `_meta`, when they belong to one). Each
        is taken only as it is written: those after a failed write stay pending, for the
        session's next stream."""
        while self.pending:
            params: dict[str, Any] = {"uri": self.pending.popleft()}
            if meta is not None:
                params["_meta"] = dict(meta)
            await write(notification(UPDATED_METHOD, params))


def declare_subscribe(result: dict[str, Any]) -> dict[str, Any]:
    """Declare `resources.subscribe` in an `initialize` or `server/discover` result: a
    session (2025-11-25: HTTP session, stdio connection) or a listen (2026-07-28) can
    hold subscriptions."""
    resources = {**result["capabilities"].get("resources", {}), "subscribe": True}
    result["capabilities"] = {**result["capabilities"], "resources": resources}
    return result


# How a session hears that one of its subscriptions ended for good: the URI, and why.
EndCallback = Callable[[str, str], None]


class Subscriptions:
    """One session's subscriptions: URI -> the task keeping its subscribe call running
    (its result: why it ended, if it failed).

    `confirm`: its provider says when it holds a URI (`HELD_METHOD`), and a subscribe is
    answered then, or refused if it cannot be held; `on_end`: told when a subscription
    ends for good (not when unsubscribed or closed)."""

    # The methods `handle` answers.
    METHODS: ClassVar[frozenset[str]] = SUBSCRIPTION_METHODS

    def __init__(
        self,
        core: McpCore,
        caller: Caller,
        updates: SessionUpdates,
        name: str,
        *,
        confirm: bool = False,
        confirm_timeout_s: float = CONFIRM_TIMEOUT_S,
        on_end: EndCallback | None = None,
    ) -> None:
        self._core = core
        self._caller = caller
        self._updates = updates
        self._name = name
        self._confirm = confirm
        self._confirm_timeout_s = confirm_timeout_s
        self._on_end = on_end
        self.tasks: dict[str, asyncio.Task[str | None]] = {}

    async def handle(self, message: Message) -> dict[str, Any]:
        """Answer `resources/subscribe` or `resources/unsubscribe`."""
        if message.method == UNSUBSCRIBE_METHOD:
            task = self.tasks.pop(str(message.params.get("uri")), None)
            if task is not None:
                task.cancel()
            return {}
        started = self._start(message)
        if started is not None:
            await self._confirm_all([started])
        return {}

    def _start(self, message: Message) -> _Unconfirmed | None:
        """Start the subscription `message` asks for, unless held already; with `confirm`,
        what to wait on until its provider holds it."""
        ctx = self._core.call_context(self._caller, message, None, SUBSCRIBE_METHOD)
        uri = self._core.offers.check_subscribable(message.params, ctx)
        if uri in self.tasks:
            return None
        if len(self.tasks) >= MAX_SUBSCRIPTIONS_PER_SESSION:
            raise McpError(
                INVALID_PARAMS,
                f"Too many subscriptions: a session holds at most {MAX_SUBSCRIPTIONS_PER_SESSION}",
                {"limit": MAX_SUBSCRIPTIONS_PER_SESSION},
            )
        held = self._updates.expect_held(uri) if self._confirm else None
        task = self.tasks[uri] = asyncio.create_task(
            self._keep(uri, message), name=f"mcp-subscription:{self._name}:{uri[:64]}"
        )
        return None if held is None else _Unconfirmed(uri, held, task)

    async def _confirm_all(self, started: list[_Unconfirmed]) -> None:
        """Wait until the provider holds each of `started`, all at once and for at most
        `confirm_timeout_s`: refused (`-32015`) if one could not be held or not in time.
        Those not held when the wait ends (timed out, cancelled) are ended here: their
        caller got no `{}` and must get no updates."""
        try:
            async with asyncio.timeout(self._confirm_timeout_s):
                outcomes = await asyncio.gather(
                    *(_confirmed(s.uri, s.held, s.task) for s in started),
                    return_exceptions=True,
                )
        except TimeoutError:
            late = [s for s in started if not s.is_held()]
            self._end_unheld(started)
            first = late[0].uri if late else started[0].uri
            raise McpError(
                PROVIDER_ERROR,
                f"Subscription to {first[:128]!r} could not be held: its provider did not "
                f"hold it within {self._confirm_timeout_s:g} s",
                {"uri": first[:MAX_URI_CHARS], "reason": "subscription_timeout"},
            ) from None
        except asyncio.CancelledError:
            self._end_unheld(started)
            raise
        finally:
            for s in started:
                self._updates.forget_held(s.uri, s.held)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    def _end_unheld(self, started: list[_Unconfirmed]) -> None:
        """End the subscriptions of `started` their provider has not said it holds."""
        for s in started:
            if s.is_held():
                continue
            s.task.cancel()
            if self.tasks.get(s.uri) is s.task:
                del self.tasks[s.uri]

    async def listen(self, listen: Message) -> list[str]:
        """Subscribe to the `resourceSubscriptions` of a `subscriptions/listen` request;
        answer the URIs honoured: those a provider the caller may use offers (the others
        are left out of the acknowledgement). More URIs than a session may hold, or a
        value that is not a list of strings, is refused `-32602`."""
        wanted = listen.params.get("notifications")
        uris = wanted.get("resourceSubscriptions") if isinstance(wanted, dict) else None
        if uris is None:
            return []
        if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
            raise McpError(
                INVALID_PARAMS,
                "Invalid params: notifications.resourceSubscriptions must be a list of URIs",
                {"field": "notifications.resourceSubscriptions"},
            )
        distinct = list(dict.fromkeys(uris))
        if len(distinct) > MAX_SUBSCRIPTIONS_PER_SESSION:
            raise McpError(
                INVALID_PARAMS,
                f"Too many subscriptions: a listen stream holds at most "
                f"{MAX_SUBSCRIPTIONS_PER_SESSION}",
                {"limit": MAX_SUBSCRIPTIONS_PER_SESSION},
            )
        honored: list[str] = []
        started: list[_Unconfirmed] = []
        for uri in distinct:
            params = {"uri": uri, "_meta": listen.meta}
            raw = {"jsonrpc": "2.0", "id": listen.id, "method": SUBSCRIBE_METHOD, "params": params}
            try:
                unconfirmed = self._start(Message.of(raw))
            except ToolError:  # unknown here, or not for this caller's zone
                continue
            honored.append(uri)
            if unconfirmed is not None:
                started.append(unconfirmed)
        # All started first, then confirmed together: one wait, not one per URI in turn.
        await self._confirm_all(started)
        return honored

    def cancel(self) -> list[asyncio.Task[str | None]]:
        """The session ended: so do its subscriptions (the tasks cancelled, returned)."""
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        self.tasks.clear()
        return tasks

    async def close(self) -> None:
        """`cancel`, and wait for the subscribe calls to have ended."""
        tasks = self.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _keep(self, uri: str, message: Message) -> str | None:
        failed = False
        try:
            while True:
                ctx = self._core.call_context(self._caller, message, None, SUBSCRIBE_METHOD)
                ctx = replace(ctx, client=self._updates)
                loop = asyncio.get_running_loop()
                started = loop.time()
                try:
                    await self._core.offers.handle(SUBSCRIBE_METHOD, {"uri": uri}, ctx)
                    failed = False
                except ToolError as exc:
                    if failed:
                        log.warning("subscription to %r ended: %s", uri[:128], exc)
                        if self._on_end is not None:
                            self._on_end(uri, exc.message)
                        return exc.message
                    failed = True
                await asyncio.sleep(max(0.0, started + RETRY_S - loop.time()))
        finally:
            with contextlib.suppress(KeyError):
                if self.tasks[uri] is asyncio.current_task():
                    del self.tasks[uri]


@dataclass(frozen=True)
class _Unconfirmed:
    """A subscription started and not yet held by its provider: `held` is done once it is."""

    uri: str
    held: asyncio.Future[None]
    task: asyncio.Task[str | None]

    def is_held(self) -> bool:
        return self.held.done() and not self.held.cancelled()


async def _confirmed(uri: str, held: asyncio.Future[None], task: asyncio.Task[str | None]) -> None:
    """Wait until the provider holds `uri`; refused (`-32015`) if its task ended first."""
    try:
        await asyncio.wait((held, task), return_when=asyncio.FIRST_COMPLETED)
        if held.done():
            return
    finally:
        held.cancel()
    if not task.cancelled():  # cancelled: unsubscribed meanwhile
        why = task.result() or "ended"
        raise McpError(
            PROVIDER_ERROR,
            f"Subscription to {uri[:128]!r} could not be held: {why}",
            {"uri": uri[:MAX_URI_CHARS], "reason": "subscription_failed"},
        )
