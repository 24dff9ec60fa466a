"""A call's way back to its client across the mesh: logs and server-to-client requests.

The entry node tells the provider, in the `InvokeRequest`, whether its caller can be
reached (`client`), which server-to-client capabilities it declared (`client_caps`) and
the log level it set (`log_level`). At the provider the call's `CallContext.client` is a
`MeshClientChannel`: a request the client cannot take (no such capability) is refused
there, without a round trip; the others travel to the entry node as CLIENT_REQUEST
items of the mesh's request path (`node.routing.calls`, so they are signed, coalesced
and cancelled like calls), keyed by the entry node's call id, and the answer (RESULT:
the client's result; ERROR: an `InvokeError` of `ClientRequestFailed`) comes back the
same way. A log message the client wants travels the same way as a request for
`notifications/message`, so it reaches the client before the call's result does.

The entry node answers only the provider that runs that call, while the call is in
flight (`ClientRelay.serve`), bounded by the call's deadline (less `ANSWER_MARGIN_S`);
the provider's own wait is bounded by it too, and a cancelled call cancels its requests
at both ends.
`ClientRelay.pending` counts the requests the entry node is relaying now.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

import msgspec
from msgspec import Meta

from vsmcp.mesh.envelope import Envelope, MsgType
from vsmcp.mesh.errors import MeshError
from vsmcp.mesh.transport import MAX_PAYLOAD_BYTES, RequestTimeoutError, TransportError
from vsmcp.node.peers.service import MeshService, Peer, PeerUnavailableError
from vsmcp.node.routing.calls import ITEM_OVERHEAD_BYTES
from vsmcp.node.routing.wire import (
    MAX_ID_CHARS,
    InvokeCodecError,
    InvokeRequest,
    decode_error,
    error_from_tool_error,
    tool_error_from,
)
from vsmcp.node.tools.client_channel import (
    INTERNAL_ERROR,
    REQUEST_CAPABILITY,
    UPDATED_METHOD,
    ClientChannel,
    ClientRequestFailed,
    check_answer,
    check_request,
    log_wanted,
)

LOG_METHOD: Final = "notifications/message"
# What a provider sends the client without waiting for an answer (bounded like logs).
NOTIFICATIONS: Final = (LOG_METHOD, UPDATED_METHOD)
# A log message waits at most this long for the entry node's ack (it is not worth more).
LOG_TIMEOUT_S: Final = 5.0
# A client that never answers is given up on this long (at least; a fifth of the time
# left when larger) before the call's deadline, so that the provider still gets to say
# so in the call's answer.
ANSWER_MARGIN_S: Final = 1.0
ANSWER_MARGIN_SHARE: Final = 0.2
# One call's requests (and log lines) served at once: each holds one of the mesh's
# per-peer handler slots meanwhile (an elicitation may wait on a human).
MAX_ASKS_PER_CALL: Final = 4
MAX_LOGS_PER_CALL: Final = 16
# What `ClientRelay.counts` counts (vsmcp_client_relay_total), besides the causes of
# the client's side refusing (`ClientRequestFailed.cause`).
RELAY_OUTCOMES: Final = (
    "answered",
    "logs",
    "updates",
    "malformed",
    "unknown_call",
    "no_client",
    "busy",
    "call_ended",
    "timeout",
    "unsent",
    "too_large",
)
# A client's answer travels back in one mesh reply: larger, it is refused here with the
# reason rather than lost in the mesh.
MAX_ANSWER_BYTES: Final = MAX_PAYLOAD_BYTES - ITEM_OVERHEAD_BYTES
_encoder = msgspec.msgpack.Encoder()


class ClientAsk(msgspec.Struct, array_like=True, frozen=True, kw_only=True):
    """A provider's request (or log message) for the client of the entry node's call."""

    call_id: Annotated[int, Meta(ge=0)]
    method: Annotated[str, Meta(max_length=MAX_ID_CHARS)]
    params: dict[str, Any]


_decode_ask = msgspec.msgpack.Decoder(ClientAsk).decode
_decode_result = msgspec.msgpack.Decoder(dict[str, Any]).decode


@dataclass(eq=False)
class RelayedCall:
    """An attempt of a call in flight, as the relay sees it: who runs it, its caller's
    channel, its deadline (loop clock), and the requests of it being served now (ended
    with the attempt: `end`)."""

    provider: str
    client: ClientChannel | None
    deadline: float
    asks: set[asyncio.Task[tuple[MsgType, bytes]]] = field(default_factory=set)
    logs: int = 0

    def end(self) -> None:
        """The attempt is over (answered, failed over, cancelled): so are its requests."""
        for task in self.asks:
            task.cancel()


Lookup = Callable[[int], RelayedCall | None]
"""`call_id -> the attempt in flight`, or None."""


def invoke_fields(client: ClientChannel | None) -> dict[str, Any]:
    """The `InvokeRequest` fields that describe the caller's way back."""
    if client is None:
        return {}
    return {
        "client": True,
        "client_caps": tuple(sorted(client.capabilities())),
        "log_level": client.log_level or "",
    }


class MeshClientChannel:
    """At the provider: the calling client, reached through the entry node."""

    def __init__(
        self, mesh: MeshService, entry: str, request: InvokeRequest, deadline: float | None
    ) -> None:
        self._mesh = mesh
        self._entry = entry
        self._call_id = request.call_id
        self._caps = frozenset(c for c in request.client_caps if c in REQUEST_CAPABILITY.values())
        self._level = request.log_level or None
        self._deadline = deadline

    @property
    def log_level(self) -> str | None:
        return self._level

    def wants_log(self, level: str) -> bool:
        return log_wanted(self._level, level)

    def capabilities(self) -> frozenset[str]:
        return self._caps

    async def log(self, params: Mapping[str, Any]) -> None:
        level = params.get("level")
        if not isinstance(level, str) or not self.wants_log(level):
            return
        await self.notify(LOG_METHOD, params)

    async def notify(self, method: str, params: Mapping[str, Any]) -> None:
        timeout = min(LOG_TIMEOUT_S, self._remaining() or LOG_TIMEOUT_S)
        # A lost notification does not fail the call (it is counted where it was lost).
        with contextlib.suppress(ClientRequestFailed):
            await self._ask(method, params, timeout)

    async def request(
        self, method: str, params: Mapping[str, Any], timeout_s: float | None
    ) -> dict[str, Any]:
        check_request(method, self._caps)
        remaining = self._remaining()
        if timeout_s is None or (remaining is not None and remaining < timeout_s):
            timeout_s = remaining
        return check_answer(method, await self._ask(method, params, timeout_s))

    def _remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return self._deadline - asyncio.get_running_loop().time()

    async def _ask(
        self, method: str, params: Mapping[str, Any], timeout_s: float | None
    ) -> dict[str, Any]:
        if timeout_s is not None and timeout_s <= 0:
            raise ClientRequestFailed(method, "the call's deadline has passed", cause="timeout")
        ask = ClientAsk(call_id=self._call_id, method=method, params=dict(params))
        try:
            reply = await self._mesh.request(
                self._entry,
                MsgType.CLIENT_REQUEST,
                _encoder.encode(ask),
                timeout_s=timeout_s if timeout_s is not None else LOG_TIMEOUT_S,
            )
        except RequestTimeoutError:
            raise ClientRequestFailed(
                method,
                f"no answer through the entry node within {timeout_s or LOG_TIMEOUT_S:g} s",
                cause="timeout",
            ) from None
        except (TransportError, PeerUnavailableError, MeshError) as e:
            raise ClientRequestFailed(
                method, f"the entry node {self._entry} is unreachable: {e}", cause="unreachable"
            ) from None
        if reply.type == MsgType.ERROR:
            try:
                error = tool_error_from(decode_error(reply.payload))
            except InvokeCodecError as e:
                raise ClientRequestFailed(method, str(e), cause="malformed_answer") from None
            if isinstance(error, ClientRequestFailed):
                raise error
            raise ClientRequestFailed(method, error.message, cause=error.reason)
        try:
            result: dict[str, Any] = _decode_result(reply.payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise ClientRequestFailed(
                method, f"the entry node's answer is malformed: {e}", cause="malformed_answer"
            ) from None
        return result


class ClientRelay:
    """At the entry node: serve providers' CLIENT_REQUEST items for calls in flight."""

    def __init__(self, lookup: Lookup) -> None:
        self._lookup = lookup
        self.pending = 0
        self.counts: Counter[str] = Counter()

    def channel(
        self, mesh: MeshService, entry: str, request: InvokeRequest, deadline: float | None
    ) -> MeshClientChannel | None:
        """The provider's channel for a served call (None: its caller has no way back)."""
        return MeshClientChannel(mesh, entry, request, deadline) if request.client else None

    async def serve(self, peer: Peer, envelope: Envelope) -> tuple[MsgType, bytes]:
        """The mesh's CLIENT_REQUEST handler."""
        return await self.serve_ask(peer.node_id, envelope.payload)

    async def serve_ask(self, sender: str, payload: bytes) -> tuple[MsgType, bytes]:
        """Serve one provider's (`sender`) ask: the answer to send back."""
        try:
            ask = _decode_ask(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            self.counts["malformed"] += 1
            return _refusal("?", f"malformed request: {e}", "malformed")
        call = self._lookup(ask.call_id)
        if call is None or call.provider != sender:
            # Only the provider running the call may reach its client, and only meanwhile.
            self.counts["unknown_call"] += 1
            return _refusal(ask.method, "no such call of yours is in flight", "unknown_call")
        if call.client is None:
            self.counts["no_client"] += 1
            return _refusal(ask.method, "the call's client cannot be reached", "no_client")
        if ask.method in NOTIFICATIONS:
            if call.logs >= MAX_LOGS_PER_CALL:
                self.counts["busy"] += 1
                return _refusal(ask.method, "too many log lines of this call at once", "busy")
        elif len(call.asks) - call.logs >= MAX_ASKS_PER_CALL:
            self.counts["busy"] += 1
            return _refusal(
                ask.method, f"{MAX_ASKS_PER_CALL} requests of this call already wait", "busy"
            )
        task = asyncio.create_task(
            self._relay(ask, call.client, call.deadline), name=f"client-relay-{ask.call_id}"
        )
        call.asks.add(task)
        logging = ask.method in NOTIFICATIONS
        call.logs += logging
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the mesh's handler itself is cancelled
            # The attempt ended (answered, failed over, cancelled): so did this request.
            self.counts["call_ended"] += 1
            return _refusal(ask.method, "the call attempt ended", "call_ended")
        finally:
            call.asks.discard(task)
            call.logs -= logging

    async def _relay(
        self, ask: ClientAsk, client: ClientChannel, deadline: float
    ) -> tuple[MsgType, bytes]:
        self.pending += 1
        try:
            if ask.method == LOG_METHOD:
                await client.log(ask.params)
                self.counts["logs"] += 1
                return MsgType.RESULT, _encoder.encode({})
            if ask.method == UPDATED_METHOD:
                await client.notify(ask.method, ask.params)
                self.counts["updates"] += 1
                return MsgType.RESULT, _encoder.encode({})
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                self.counts["timeout"] += 1
                return _refusal(ask.method, "the call's deadline has passed", "timeout")
            margin = max(ANSWER_MARGIN_S, ANSWER_MARGIN_SHARE * remaining)
            if remaining > 2 * margin:
                remaining -= margin  # the provider still answers the call in time
            result = await client.request(ask.method, ask.params, remaining)
        except ClientRequestFailed as e:
            self.counts[e.cause] += 1
            return MsgType.ERROR, _encoder.encode(error_from_tool_error(e))
        except ConnectionError as e:
            self.counts["unsent"] += 1
            return _refusal(ask.method, f"the client is gone: {e}", "unsent")
        finally:
            self.pending -= 1
        answer = _encoder.encode(result)
        if len(answer) > MAX_ANSWER_BYTES:
            self.counts["too_large"] += 1
            return _refusal(
                ask.method,
                f"the client's answer has {len(answer)} bytes, more than the mesh carries "
                f"({MAX_ANSWER_BYTES})",
                "too_large",
            )
        self.counts["answered"] += 1
        return MsgType.RESULT, answer


def _refusal(method: str, why: str, cause: str) -> tuple[MsgType, bytes]:
    error = ClientRequestFailed(method, why, code=INTERNAL_ERROR, cause=cause)
    return MsgType.ERROR, _encoder.encode(error_from_tool_error(error))
