"""Server-to-client requests and log notifications at the gateway: the client end of a
call's `ClientChannel` (`node.tools.client_channel`).

A 2025-11-25 session (Streamable HTTP) or the stdio client declares its capabilities at
`initialize` and sets its log level with `logging/setLevel`; that is its `ClientState`.
During a call, a provider's request (`sampling/createMessage`, `elicitation/create`,
`roots/list`) is written to the call's own response stream (SSE) with an id of ours,
and the client's answer, POSTed (or written to stdin) as a JSON-RPC response, is matched
by that id and by the session it came from: another session cannot answer it.

Every request waits in `ClientRequests` (bounded) until its answer, the call's deadline,
or the call's end; `pending` (the `vsmcp_mcp_client_requests_pending` gauge) goes back
to 0 whatever happens. An answer that is not a result of the method's shape is refused
(`malformed_answer`) rather than passed on to the provider.

At 2026-07-28 there is no back channel: a request carries its own capabilities and log
level (`_meta` `io.modelcontextprotocol/logLevel`); logs are delivered on the call's
stream, and over HTTP a `tools/call`'s requests go to the client as `input_required`
rounds (`node.mcp.input_rounds`), through these same pending requests. Elsewhere at
that revision (stdio) they are refused with a clear error.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from vsmcp.node.tools.client_channel import (
    INVALID_PARAMS,
    LOG_LEVELS,
    META_LOG_LEVEL,
    METHOD_NOT_FOUND,
    REQUEST_CAPABILITY,
    ClientRequestFailed,
    check_answer,
    check_request,
    level_rank,
    log_wanted,
)

MAX_PENDING: Final = 1024
# One session's share of them (one call's, relayed from another node: `client_relay`).
MAX_PENDING_PER_SESSION: Final = 64
ID_PREFIX: Final = "vsmcp-"
MAX_ERROR_MESSAGE_CHARS: Final = 300

Notify = Callable[[dict[str, Any]], Awaitable[None]]

# What `ClientRequests.counts` counts (labels of vsmcp_mcp_client_requests_total).
COUNTED_OUTCOMES: Final = (
    "sent",
    "answered",
    "client_error",
    "malformed_answer",
    "timeout",
    "cancelled",
    "no_capability",
    "unsupported",
    "busy",
    "unsent",
    "malformed",
    "unmatched_answer",
    "call_ended",
    "session_ended",
)


@dataclass(slots=True)
class ClientState:
    """One client's side of the conversation: who it is (`owner`: its session), what it
    declared, the log level it set, and why it cannot be asked (None: it can)."""

    owner: str
    capabilities: frozenset[str]
    log_level: str | None = None
    no_ask_reason: str | None = None


def declared(capabilities: Any) -> frozenset[str]:
    """The server-to-client capabilities in a client's `capabilities` object."""
    if not isinstance(capabilities, Mapping):
        return frozenset()
    return frozenset(c for c in REQUEST_CAPABILITY.values() if capabilities.get(c) is not None)


def set_level(state: ClientState | None, params: Mapping[str, Any]) -> str | None:
    """`logging/setLevel`: the problem with `params`, or None once the level is set."""
    level = params.get("level")
    if not isinstance(level, str) or level_rank(level) is None:
        return f"'level' must be one of {', '.join(LOG_LEVELS)}"
    if state is not None:
        state.log_level = level
    return None


def modern_state(meta: Mapping[str, Any], capabilities: Any) -> ClientState:
    """A 2026-07-28 request's client: its own capabilities and log level, no back channel."""
    level = meta.get(META_LOG_LEVEL)
    return ClientState(
        owner="",
        capabilities=declared(capabilities),
        log_level=level if isinstance(level, str) and level_rank(level) is not None else None,
        no_ask_reason=(
            "server-to-client requests are not passed on at protocol revision 2026-07-28 "
            "here (input_required rounds are served over HTTP only); connect with 2025-11-25"
        ),
    )


@dataclass(slots=True)
class _Waiting:
    owner: str
    method: str
    future: asyncio.Future[dict[str, Any]]


class ClientRequests:
    """The gateway's server-to-client requests waiting for an answer (all sessions)."""

    def __init__(
        self, max_pending: int = MAX_PENDING, max_per_session: int = MAX_PENDING_PER_SESSION
    ) -> None:
        self._max_pending = max_pending
        self._max_per_session = max_per_session
        self._waiting: dict[str, _Waiting] = {}
        self._per_owner: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()

    @property
    def pending(self) -> int:
        return len(self._waiting)

    def channel(self, state: ClientState, notify: Notify) -> GatewayChannel:
        return GatewayChannel(self, state, notify)

    def answer(self, owner: str, message: Mapping[str, Any]) -> bool:
        """A client's JSON-RPC response: hand it to the request it answers (same session)."""
        waiting = self._waiting.get(message.get("id"))  # type: ignore[arg-type]
        if waiting is None or waiting.owner != owner or waiting.future.done():
            self.counts["unmatched_answer"] += 1
            return False
        waiting.future.set_result(dict(message))
        return True

    def cancel_owner(self, owner: str) -> None:
        """The session ended: its requests will not be answered."""
        for waiting in self._waiting.values():
            if waiting.owner == owner and not waiting.future.done():
                waiting.future.set_exception(
                    ClientRequestFailed(
                        waiting.method, "the client's session ended", cause="session_ended"
                    )
                )

    def end_requests(self, request_ids: set[str]) -> None:
        """A call ended: its requests still waiting will not be answered."""
        for request_id in request_ids:
            waiting = self._waiting.get(request_id)
            if waiting is not None and not waiting.future.done():
                waiting.future.set_exception(_call_ended(waiting.method))

    def refuse(self, method: str, error: ClientRequestFailed) -> ClientRequestFailed:
        self.counts[error.cause] += 1
        return error

    async def ask(
        self,
        state: ClientState,
        notify: Notify,
        method: str,
        params: Mapping[str, Any],
        timeout_s: float | None,
        mine: set[str] | None = None,
    ) -> dict[str, Any]:
        if len(self._waiting) >= self._max_pending:
            raise self.refuse(
                method,
                ClientRequestFailed(
                    method, f"{self._max_pending} requests already wait for clients", cause="busy"
                ),
            )
        if self._per_owner[state.owner] >= self._max_per_session:
            raise self.refuse(
                method,
                ClientRequestFailed(
                    method,
                    f"{self._max_per_session} requests already wait for this client",
                    cause="busy",
                ),
            )
        request_id = ID_PREFIX + secrets.token_hex(12)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = _Waiting(state.owner, method, future)
        self._per_owner[state.owner] += 1
        if mine is not None:
            mine.add(request_id)
        try:
            request = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
            try:
                await notify(request)
                self.counts["sent"] += 1
                async with asyncio.timeout(timeout_s):
                    answer = await future
            except TimeoutError:
                await _tell_cancelled(notify, request_id, "no answer in time")
                raise self.refuse(
                    method,
                    ClientRequestFailed(
                        method,
                        f"the client did not answer within {timeout_s or 0:g} s",
                        cause="timeout",
                    ),
                ) from None
            except ConnectionError as e:
                raise self.refuse(
                    method,
                    ClientRequestFailed(method, f"the client is gone: {e}", cause="unsent"),
                ) from None
            except asyncio.CancelledError:
                self.counts["cancelled"] += 1
                await _tell_cancelled(notify, request_id, "the call ended")
                raise
            except ClientRequestFailed as e:
                raise self.refuse(method, e) from None
        finally:
            del self._waiting[request_id]
            self._per_owner[state.owner] -= 1
            if not self._per_owner[state.owner]:
                del self._per_owner[state.owner]
            if mine is not None:
                mine.discard(request_id)
        return self._result(method, answer)

    def _result(self, method: str, answer: Mapping[str, Any]) -> dict[str, Any]:
        error = answer.get("error")
        if error is not None:
            code = error.get("code") if isinstance(error, dict) else None
            text = error.get("message") if isinstance(error, dict) else None
            raise self.refuse(
                method,
                ClientRequestFailed(
                    method,
                    f"the client answered error {code}: {str(text)[:MAX_ERROR_MESSAGE_CHARS]}",
                    code=code if isinstance(code, int) and not isinstance(code, bool) else -32603,
                    cause="client_error",
                ),
            )
        try:
            result = check_answer(method, answer.get("result"))
        except ClientRequestFailed as e:
            raise self.refuse(method, e) from None
        self.counts["answered"] += 1
        return result


def _call_ended(method: str) -> ClientRequestFailed:
    return ClientRequestFailed(method, "the call ended", cause="call_ended")


async def _tell_cancelled(notify: Notify, request_id: str, reason: str) -> None:
    """Tell the client to stop working on a request (best effort: it may be gone)."""
    message = {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": request_id, "reason": reason},
    }
    with contextlib.suppress(ConnectionError, RuntimeError):
        await notify(message)


class GatewayChannel:
    """The `ClientChannel` of one call at its entry gateway."""

    def __init__(self, registry: ClientRequests, state: ClientState, notify: Notify) -> None:
        self._registry = registry
        self._state = state
        self._notify = notify
        self._closed = False
        self._asking: set[str] = set()

    def close(self) -> None:
        """The call ended (its reply is finished): later logs are dropped, later requests
        refused, and requests still waiting end now."""
        self._closed = True
        self._registry.end_requests(self._asking)

    def wants_log(self, level: str) -> bool:
        return log_wanted(self._state.log_level, level)

    def capabilities(self) -> frozenset[str]:
        # Declared even when it cannot be asked: the request is then refused here, with
        # the reason (rather than as a capability the client did declare).
        return self._state.capabilities

    @property
    def log_level(self) -> str | None:
        return self._state.log_level

    async def log(self, params: Mapping[str, Any]) -> None:
        level = params.get("level")
        if not self._closed and isinstance(level, str) and self.wants_log(level):
            await self._notify(
                {"jsonrpc": "2.0", "method": "notifications/message", "params": dict(params)}
            )

    async def notify(self, method: str, params: Mapping[str, Any]) -> None:
        if not self._closed:
            await self._notify({"jsonrpc": "2.0", "method": method, "params": dict(params)})

    async def request(
        self, method: str, params: Mapping[str, Any], timeout_s: float | None
    ) -> dict[str, Any]:
        registry, state = self._registry, self._state
        if self._closed:
            raise registry.refuse(method, _call_ended(method))
        try:
            check_request(method, state.capabilities)
        except ClientRequestFailed as e:
            raise registry.refuse(method, e) from None
        if state.no_ask_reason is not None:
            raise registry.refuse(
                method,
                ClientRequestFailed(
                    method, state.no_ask_reason, code=METHOD_NOT_FOUND, cause="unsupported"
                ),
            )
        if not isinstance(params, Mapping):
            raise registry.refuse(
                method,
                ClientRequestFailed(
                    method, "params must be an object", code=INVALID_PARAMS, cause="malformed"
                ),
            )
        return await registry.ask(state, self._notify, method, params, timeout_s, self._asking)
