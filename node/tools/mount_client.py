"""A mounted server's logs and server-to-client requests, passed to the calling client.

The mount's SDK client declares sampling, elicitation and roots to the server and takes
its log notifications; each goes to the `ClientChannel` of the call it belongs to
(`node.tools.client_channel`), which reaches the client that made the call (through the
mesh when the call came from another node). Which call that is: the one whose task the
SDK runs the callback in (2026-07-28, where the SDK answers a server's input requests
inside the call). A 2025-11-25 server's request or log line over stdio does not say
which call it belongs to; it is refused with an error saying so (a log line is dropped,
`counts`), unless the mount sets `only_call_fallback`: then it goes to the mount's only
call in flight (with several, still refused). Off by default: a server that logs or
asks in the background, after its call returned, would reach another client's call.

The server is asked for log lines per call at the level that call's client set
(2026-07-28 `_meta`), not for every line at `debug`.

The client's answer is checked (`client_channel.check_answer`, then the SDK's model)
before the server sees it; every failure reaches the server as a JSON-RPC error whose
message says what went wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from vsmcp.node.tools.client_channel import INTERNAL_ERROR, ClientRequestFailed
from vsmcp.node.tools.model import CallContext

if TYPE_CHECKING:
    import mcp_types as types
    from mcp.client.session import ClientRequestContext

log = logging.getLogger(__name__)

# The mount's call running in this task (2026-07-28 callbacks run inside the call).
_CALL: ContextVar[CallContext | None] = ContextVar("vsmcp_mount_call", default=None)


# Updates of one subscribed URI waiting to be passed on, per subscribing call: more are
# dropped (an update says only "read it again").
MAX_QUEUED_UPDATES: Final = 8


@dataclass(slots=True)
class _Watched:
    """One URI's subscribing calls: their update queues, whether the server is
    subscribed, and the lock under which that is decided."""

    queues: set[asyncio.Queue[str]] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    subscribed: bool = False


class MountClient:
    """The client side of one mount towards its callers: calls in flight, callbacks."""

    def __init__(self, mount: str, *, only_call_fallback: bool = False) -> None:
        self._mount = mount
        self._fallback = only_call_fallback
        self._calls: dict[int, CallContext] = {}
        self._keys = itertools.count()
        # Subscribing calls in flight: URI -> the queues of their updates.
        self._watchers: dict[str, _Watched] = {}
        self.counts: Counter[str] = Counter()

    @contextlib.asynccontextmanager
    async def watching(
        self,
        uri: str,
        subscribe: Callable[[str], Awaitable[object]],
        unsubscribe: Callable[[str], Awaitable[object]],
    ) -> AsyncIterator[asyncio.Queue[str]]:
        """A queue of the server's updates of `uri` for one subscribing call. The server
        is subscribed (`subscribe(uri)`) unless it already is, and unsubscribed when the
        last call watching the URI leaves; both decisions are taken under the URI's lock,
        so a call joining while the last one unsubscribes subscribes again, and a
        failed subscribe leaves the URI unsubscribed for the next call to try."""
        queue: asyncio.Queue[str] = asyncio.Queue(MAX_QUEUED_UPDATES)
        watched = self._watchers.get(uri)
        if watched is None:
            watched = self._watchers[uri] = _Watched()
        watched.queues.add(queue)
        try:
            async with watched.lock:
                if not watched.subscribed:
                    await subscribe(uri)
                    watched.subscribed = True
            yield queue
        finally:
            watched.queues.discard(queue)
            if not watched.queues:
                async with watched.lock:
                    if not watched.queues and watched.subscribed:
                        watched.subscribed = False
                        await unsubscribe(uri)
            unused = not watched.queues and not watched.subscribed
            if unused and self._watchers.get(uri) is watched:
                del self._watchers[uri]

    def watchers(self, uri: str) -> int:
        """How many calls watch `uri` now."""
        watched = self._watchers.get(uri)
        return 0 if watched is None else len(watched.queues)

    @contextlib.contextmanager
    def calling(self, ctx: CallContext) -> Iterator[None]:
        """Mark `ctx` as a call of this mount in flight (in this task and for the mount)."""
        key = next(self._keys)
        self._calls[key] = ctx
        token = _CALL.set(ctx)
        try:
            yield
        finally:
            _CALL.reset(token)
            del self._calls[key]

    def client_kwargs(self) -> dict[str, Any]:
        """The SDK `Client` arguments that make the server's requests and logs ours."""
        return {
            "sampling_callback": self._sampling,
            "elicitation_callback": self._elicitation,
            "list_roots_callback": self._roots,
            "logging_callback": self._log,
            "message_handler": self._message,
        }

    async def _message(self, message: Any) -> None:
        """The server's notifications: a resource update goes to the calls watching it."""
        import mcp_types as types

        if isinstance(message, types.ResourceUpdatedNotification):
            watched = self._watchers.get(str(message.params.uri))
            for queue in () if watched is None else watched.queues:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(str(message.params.uri))

    def _call(self) -> CallContext | None:
        ctx = _CALL.get()
        if ctx is not None:
            return ctx
        if self._fallback and len(self._calls) == 1:
            return next(iter(self._calls.values()))
        return None

    def _unplaced(self) -> str:
        if not self._calls:
            return f"no call of mount {self._mount!r} is in flight"
        if not self._fallback:
            return (
                f"the request does not say which call of mount {self._mount!r} it belongs "
                "to (only_call_fallback is off)"
            )
        return (
            f"{len(self._calls)} calls of mount {self._mount!r} are in flight and the "
            "request does not say which one it belongs to"
        )

    async def _log(self, params: types.LoggingMessageNotificationParams) -> None:
        ctx = self._call()
        if ctx is None or ctx.client is None:
            self.counts["logs_dropped"] += 1
            return
        await ctx.client.log(params.model_dump(by_alias=True, mode="json", exclude_none=True))
        self.counts["logs"] += 1

    async def _sampling(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> Any:
        import mcp_types as types

        model: Any = types.CreateMessageResult
        if params.tools:
            model = types.CreateMessageResultWithTools
        return await self._relay("sampling/createMessage", params, model)

    async def _elicitation(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> Any:
        import mcp_types as types

        return await self._relay("elicitation/create", params, types.ElicitResult)

    async def _roots(self, context: ClientRequestContext) -> Any:
        import mcp_types as types

        return await self._relay("roots/list", None, types.ListRootsResult)

    async def _relay(self, method: str, params: Any, model: Any) -> Any:
        import mcp_types as types
        from pydantic import ValidationError

        ctx = self._call()
        if ctx is None or ctx.client is None:
            self.counts["refused"] += 1
            why = (
                self._unplaced()
                if ctx is None
                else "the call's client cannot be reached (no response stream)"
            )
            return types.ErrorData(code=INTERNAL_ERROR, message=f"vsmcp: {method}: {why}")
        body = {} if params is None else params.model_dump(by_alias=True, mode="json")
        body = {k: v for k, v in body.items() if v is not None}
        try:
            result = await ctx.client.request(method, body, ctx.remaining_s())
            answer = model.model_validate(result)
        except ClientRequestFailed as e:
            self.counts[e.cause] += 1
            return types.ErrorData(code=e.code, message=f"vsmcp: {e.message}")
        except ValidationError as e:
            self.counts["malformed_answer"] += 1
            problem = e.errors()[0].get("msg", "invalid") if e.errors() else "invalid"
            return types.ErrorData(
                code=INTERNAL_ERROR,
                message=f"vsmcp: {method}: the client's answer is malformed: {problem}",
            )
        self.counts["answered"] += 1
        return answer
