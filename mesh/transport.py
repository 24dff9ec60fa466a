"""Mesh transport: opaque byte frames between nodes over ZeroMQ, CURVE-encrypted.

The transport carries bytes (signed envelopes, produced elsewhere); it knows nothing of
signing or policy. It owns the CURVE keys, derived from the node's Ed25519 identity.

Sockets
    One ROUTER bound for inbound traffic (requests, one-way frames, cancels); responses
    go back on the connection the request came in on. One DEALER per peer for outbound,
    connected lazily on first use; libzmq reconnects it by itself (100 ms, backing off to
    2 s) after the peer restarts. ZMTP heartbeats (1 s, 5 s timeout) drop a connection
    whose peer stopped answering (a SIGSTOPped process), so later frames wait in our
    queue, not in libzmq's. Each Transport has its own zmq.Context (a ZAP handler is
    per context). Sockets are plain pyzmq sockets used with non-blocking calls and one
    owning task each, woken from ZMQ_FD (see `_transport_sockets`): zmq.asyncio's
    per-call futures cost more than the rest of the request path together.

Identity binding
    A peer is addressed by (Ed25519 public key, "tcp://host:port"). The DEALER's
    `curve_serverkey` is the peer's key converted to X25519, so an impostor at that
    endpoint fails the CURVE handshake and nothing is ever sent to it. Inbound, a ZAP
    handler sees each client's X25519 key, asks the admission callback (default: admit
    any) and stamps the key on the connection; every inbound frame is delivered with it,
    so the layer above can check it against the envelope's sender with
    `curve_public_key(sender_ed25519_key)`.

Peers and candidates
    Links (one DEALER each, a few descriptors) come from two budgets: at most
    `max_peers` for peers the layer above admitted, and a small one of their own,
    `max_candidate_links`, for the ones it is still asking to be admitted
    (`request(..., candidate=True)`): a flood of would-be peers (mDNS is open to anyone
    on the segment) cannot take the room of real ones. A candidate's link becomes a
    peer link the first time it is used without `candidate` (the peer was admitted);
    the layer above closes the links of candidates that were not (`forget`).

Delivery
    At most once. A request is answered once or fails (timeout, remote error, queue
    drop, peer forgotten, transport stopped). Frames already handed to libzmq when a
    connection drops (peer killed, heartbeat timeout, oversize frame) are lost; the
    layers above repeat what matters (SWIM probes, gossip rounds, request retries).

Queues, priorities and drops (every queue is bounded)
    - Per peer, a Python queue (`TransportConfig.queue_max_frames` / `queue_max_bytes`)
      with three classes: MEMBERSHIP (probes, acks, verdicts) first, then REQUEST
      (requests and cancels), then BULK (gossip, sync); FIFO within a class. When a new
      frame does not fit, the oldest frames of the lowest non-empty class are dropped
      until it fits, never a class more important than the new frame's; if even that
      could not make room, the new frame alone is dropped. Drops are counted by class in
      `stats.dropped`; a dropped request fails at once with `QueueFullError`. `send()`
      says whether its frame was kept; `flush()` is back-pressure for bulk senders.
    - Frames go to libzmq only when the socket is writable (non-blocking sends). DEALERs
      use ZMQ_IMMEDIATE, so nothing is queued inside libzmq toward a peer that is not
      connected, and a small SNDHWM (256) so the priority order above is not undone by a
      deep FIFO below it.
    - Responses leave through the shared ROUTER without a Python queue, at the priority
      of their request: when the caller's pipe is full (ROUTER SNDHWM) or the caller is
      gone, the response is dropped and counted under its class (the caller times out).
    - Inbound: RCVHWM per connection; ZMQ_MAXMSGSIZE caps every frame (libzmq drops an
      oversize frame and resets that connection, which then reconnects); the Python
      side re-checks the exact size cap and the frame count and counts garbage. Request
      handlers run as tasks, at most `max_concurrent_handlers` in all and
      `max_handlers_per_peer` per client key; beyond that the request is answered
      "busy" at once. Inbound frames are handled in arrival order, whatever their class.
    - One-way handlers are synchronous and are called inline on the receive path: hand
      the payload to your own bounded queue (and batch signature checks there).

Nothing here blocks the event loop on a slow peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import zmq
from nacl.signing import SigningKey
from zmq.utils import z85

from vsmcp.mesh._transport_errors import (
    FrameTooLargeError,
    InvalidPeerKeyError,
    PeerUnreachableError,
    QueueFullError,
    RemoteError,
    RequestRefused,
    RequestTimeoutError,
    TransportClosedError,
    TransportError,
)
from vsmcp.mesh._transport_keys import CurveIdentity, curve_identity, curve_public_key
from vsmcp.mesh._transport_queue import OutboundQueue
from vsmcp.mesh._transport_sockets import POLLIN, POLLOUT, SocketWaker, socket_events
from vsmcp.mesh._transport_wire import (
    HEADER_BYTES,
    Kind,
    Priority,
    decode_error,
    decode_frame,
    encode_error,
    encode_frame,
)
from vsmcp.mesh.loops import LoopFn, LoopSupervisor
from vsmcp.mesh.service import Service

__all__ = [
    "AdmissionCallback",
    "FrameTooLargeError",
    "InvalidPeerKeyError",
    "OnewayHandler",
    "PeerUnreachableError",
    "Priority",
    "QueueFullError",
    "RemoteError",
    "RequestHandler",
    "RequestRefused",
    "RequestTimeoutError",
    "Transport",
    "TransportClosedError",
    "TransportConfig",
    "TransportError",
    "TransportStats",
    "check_reachable",
    "curve_public_key",
    "request_peer_address",
]

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 1024 * 1024
QUEUE_MAX_FRAMES_PER_PEER = 1024
QUEUE_MAX_BYTES_PER_PEER = 16 * 1024 * 1024
MAX_CONCURRENT_HANDLERS = 256
MAX_HANDLERS_PER_PEER = 64
MAX_PEERS = 1024
MAX_CANDIDATE_LINKS = 32
DEALER_SNDHWM = 256
ROUTER_SNDHWM = 1000
RCVHWM = 1000
RECONNECT_IVL_S = 0.1
RECONNECT_IVL_MAX_S = 2.0
HEARTBEAT_IVL_S = 1.0
HEARTBEAT_TIMEOUT_S = 5.0
RECV_BATCH_FRAMES = 256
# libzmq checks ZMQ_MAXMSGSIZE against the encrypted CURVE frame (command name, nonce,
# MAC), so the socket cap has slack above our payload cap; Python enforces the exact one.
CURVE_FRAME_OVERHEAD_BYTES = 1024
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"vsmcp"
CURVE_KEY_BYTES = 32
# Plain ints: pyzmq's flag enums cost an enum construction per operation on the hot path.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)

RequestHandler = Callable[[bytes, bytes], Awaitable[bytes]]
"""`async (peer_curve_key, payload) -> response payload`; raising sends a RemoteError."""
OnewayHandler = Callable[[bytes, bytes], None]
"""`(peer_curve_key, payload) -> None`, called inline: must not block."""
AdmissionCallback = Callable[[bytes], bool]
"""`(client_curve_key) -> admit?`, asked once per inbound connection handshake."""

# Set in each request handler's own task (a task runs in a copy of the context).
_REQUEST_PEER_ADDRESS: contextvars.ContextVar[str] = contextvars.ContextVar(
    "request_peer_address", default=""
)


def request_peer_address() -> str:
    """Inside a request handler: the IP address its connection comes from ("" if unknown).

    Read from the TCP connection by libzmq, not from anything the peer sent.
    """
    return _REQUEST_PEER_ADDRESS.get()


@dataclass(frozen=True, slots=True)
class TransportConfig:
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    queue_max_frames: int = QUEUE_MAX_FRAMES_PER_PEER
    queue_max_bytes: int = QUEUE_MAX_BYTES_PER_PEER
    max_concurrent_handlers: int = MAX_CONCURRENT_HANDLERS
    max_handlers_per_peer: int = MAX_HANDLERS_PER_PEER
    max_peers: int = MAX_PEERS
    max_candidate_links: int = MAX_CANDIDATE_LINKS
    dealer_sndhwm: int = DEALER_SNDHWM
    router_sndhwm: int = ROUTER_SNDHWM
    rcvhwm: int = RCVHWM
    reconnect_ivl_s: float = RECONNECT_IVL_S
    reconnect_ivl_max_s: float = RECONNECT_IVL_MAX_S
    heartbeat_ivl_s: float = HEARTBEAT_IVL_S
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S


def _zero_per_class() -> dict[Priority, int]:
    return dict.fromkeys(Priority, 0)


@dataclass(slots=True)
class TransportStats:
    """Counters since start; read them, do not write them."""

    sent: int = 0  # frames handed to libzmq (requests, one-way, cancels, responses)
    received: int = 0  # well-formed frames delivered (requests, one-way, responses)
    dropped: dict[Priority, int] = field(default_factory=_zero_per_class)  # by class
    timeouts: int = 0  # our requests that timed out
    oversize: int = 0  # payloads over the cap: refused to send, or dropped on receipt
    garbage: int = 0  # malformed or unexpected frames, late responses
    rejected: int = 0  # inbound handshakes refused by the admission callback
    busy: int = 0  # inbound requests refused at the handler limits
    refused: int = 0  # inbound requests our handlers refused (RequestRefused)
    handler_errors: int = 0  # our handlers that raised
    cancelled: int = 0  # our handlers cancelled by the caller's CANCEL


@dataclass(slots=True, eq=False)
class _Outgoing:
    priority: Priority
    frame: bytes
    waiter: asyncio.Future[bytes] | None = None
    sent: bool = False
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = len(self.frame)


class _PeerLink:
    """The outbound side of one peer: its DEALER, its queue and the task owning both."""

    def __init__(
        self,
        ed25519_public: bytes,
        endpoint: str,
        sock: zmq.Socket[bytes],
        queue: OutboundQueue[_Outgoing],
    ) -> None:
        self.ed25519_public = ed25519_public
        self.endpoint = endpoint
        self.sock = sock
        self.waker = SocketWaker(sock)
        self.queue = queue
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.dequeued = asyncio.Event()
        self.candidate = False  # counted in the candidate budget, not the peer budget

    def close(self) -> None:
        self.closed = True
        self.dequeued.set()
        if self.task is not None:
            self.task.cancel()
        self.queue.clear()
        self.waker.close()
        self.sock.close(linger=0)

    @property
    def label(self) -> str:
        return self.ed25519_public.hex()[:12]


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[bytes]
    link: _PeerLink
    outgoing: _Outgoing


@dataclass(slots=True)
class _Inbound:
    routing_id: bytes
    peer: bytes
    kind: Kind
    priority: Priority
    request_id: int
    payload: bytes
    peer_address: str = ""  # requests only: where the connection comes from


class Transport(Service):
    """See the module docstring. Single use: `start()` after `stop()` raises."""

    def __init__(
        self,
        identity: bytes | SigningKey,
        *,
        bind_host: str = "127.0.0.1",
        port: int = 0,
        config: TransportConfig | None = None,
        loops: LoopSupervisor | None = None,
    ) -> None:
        self._identity: CurveIdentity = curve_identity(identity)
        # The node's supervisor, so a dead loop shows in its health; else one of our own.
        self._loops = loops or LoopSupervisor()
        self._bind_host = bind_host
        self._requested_port = port
        self._config = config or TransportConfig()
        self._max_frame_bytes = HEADER_BYTES + self._config.max_payload_bytes
        self._stats = TransportStats()
        self._request_handler: RequestHandler | None = None
        self._oneway_handler: OnewayHandler | None = None
        self._admission: AdmissionCallback | None = None
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._zap: zmq.Socket[bytes] | None = None
        self._router: zmq.Socket[bytes] | None = None
        self._wakers: list[SocketWaker] = []
        self._router_waker: SocketWaker | None = None
        self._port: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._links: dict[bytes, _PeerLink] = {}
        self._candidate_links = 0
        self._pending: dict[int, _Pending] = {}
        self._request_ids = itertools.count(1)
        self._handlers: dict[tuple[bytes, int], asyncio.Task[None]] = {}
        self._handlers_per_peer: dict[bytes, int] = {}
        self._state = "new"

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._state == "running":
            return
        if self._state == "stopped":
            raise TransportClosedError("a stopped Transport cannot be restarted")
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            zap = ctx.socket(zmq.REP)
            zap.linger = 0
            # Bound before the ROUTER exists, so no handshake ever skips admission.
            zap.bind(ZAP_ENDPOINT)
            self._zap = zap
            router = ctx.socket(zmq.ROUTER)
            self._router = router
            self._configure_router(router)
            port_spec = "*" if self._requested_port == 0 else str(self._requested_port)
            router.bind(f"tcp://{self._format_host(self._bind_host)}:{port_spec}")
        except zmq.ZMQError as exc:
            self._close_sockets(ctx)
            raise TransportError(f"cannot bind: {exc}", reason="bind") from exc
        last = router.last_endpoint
        last_endpoint = last.decode() if isinstance(last, bytes) else str(last)
        self._port = int(last_endpoint.rpartition(":")[2])
        self._ctx = ctx
        self._state = "running"
        zap_waker = SocketWaker(zap)
        router_waker = self._router_waker = SocketWaker(router)
        self._wakers = [zap_waker, router_waker]
        self._spawn(lambda: self._zap_loop(zap, zap_waker), "transport-zap")
        self._spawn(lambda: self._router_loop(router, router_waker), "transport-router")

    async def stop(self) -> None:
        if self._state != "running":
            self._state = "stopped"
            return
        self._state = "stopped"
        tasks = set(self._tasks) | set(self._handlers.values())
        current = asyncio.current_task()
        if current is not None:
            tasks.discard(current)  # a request handler may stop us: it must not await itself
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        closed = TransportClosedError("transport stopped")
        for pending in list(self._pending.values()):
            if not pending.future.done():
                pending.future.set_exception(closed)
        self._pending.clear()
        for link in self._links.values():
            link.close()
        self._links.clear()
        if self._ctx is not None:
            self._close_sockets(self._ctx)
            self._ctx = None

    def _close_sockets(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        for waker in self._wakers:
            waker.close()
        self._wakers = []
        self._router_waker = None
        for sock in (self._router, self._zap):
            if sock is not None:
                sock.close(linger=0)
        self._router = self._zap = None
        ctx.term()

    def _spawn(self, run: LoopFn, name: str, kind: str | None = None) -> asyncio.Task[None]:
        """A supervised loop (restarted if it raises); stopped by `stop()`."""
        task = self._loops.spawn(name, run, kind=kind)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- public properties and registration -----------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise TransportClosedError("transport not started")
        return self._port

    @property
    def endpoint(self) -> str:
        """The endpoint peers connect to (the bind host; a wildcard host is not useful)."""
        return f"tcp://{self._format_host(self._bind_host)}:{self.port}"

    @property
    def public_key(self) -> bytes:
        """This node's Ed25519 public key (how peers address it)."""
        return self._identity.ed25519_public

    @property
    def curve_public_key(self) -> bytes:
        """This node's X25519 key: what peers see as the sender of its frames."""
        return self._identity.curve_public

    @property
    def stats(self) -> TransportStats:
        return self._stats

    def on_request(self, handler: RequestHandler | None) -> None:
        self._request_handler = handler

    def on_oneway(self, handler: OnewayHandler | None) -> None:
        self._oneway_handler = handler

    def set_admission(self, callback: AdmissionCallback | None) -> None:
        """Decide which client X25519 keys may connect (None: admit any).

        Asked at each connection handshake; already connected clients stay connected.
        """
        self._admission = callback

    def link_counts(self) -> dict[str, int]:
        """Open outbound links by budget: {"peer": n, "candidate": m}."""
        return {
            "peer": len(self._links) - self._candidate_links,
            "candidate": self._candidate_links,
        }

    def queued(self, peer_pubkey: bytes) -> int:
        """Frames waiting in our queue toward the peer (0 if unknown)."""
        link = self._links.get(peer_pubkey)
        return len(link.queue) if link is not None else 0

    async def flush(self, peer_pubkey: bytes, *, max_queued: int = 0) -> None:
        """Wait until at most `max_queued` frames wait in our queue toward the peer.

        Back-pressure for bulk senders: frames past our queue are in libzmq's bounded
        pipe. Returns at once for an unknown or forgotten peer. Bound it with a timeout:
        toward an unreachable peer the queue never drains.
        """
        link = self._links.get(peer_pubkey)
        while link is not None and not link.closed and len(link.queue) > max_queued:
            link.dequeued.clear()
            await link.dequeued.wait()

    # -- outbound ---------------------------------------------------------------------

    async def request(
        self,
        peer_pubkey: bytes,
        endpoint: str,
        payload: bytes,
        *,
        timeout_s: float,
        priority: Priority = Priority.REQUEST,
        candidate: bool = False,
    ) -> bytes:
        """Send `payload` to the peer's request handler and return its response.

        `candidate`: the peer is not admitted yet; a new link to it comes from the
        candidate budget (see the module docstring).

        Raises RequestTimeoutError, RemoteError, QueueFullError, PeerUnreachableError,
        FrameTooLargeError, InvalidPeerKeyError, TransportClosedError, TransportError
        ("bad_endpoint", "too_many_peers", "too_many_candidates"). On timeout or
        cancellation of the caller, a CANCEL frame tells the peer to cancel its handler.
        A known peer addressed at a new endpoint gets a new connection; requests waiting
        on the old one fail with PeerUnreachableError.
        """
        self._check_outgoing(payload)
        link = self._link_for(peer_pubkey, endpoint, candidate=candidate)
        request_id = next(self._request_ids)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        outgoing = _Outgoing(
            priority, encode_frame(Kind.REQUEST, priority, request_id, payload), future
        )
        self._pending[request_id] = _Pending(future, link, outgoing)
        try:
            self._enqueue(link, outgoing)
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError:
            self._stats.timeouts += 1
            self._cancel_remote(link, request_id, outgoing)
            raise RequestTimeoutError(f"no response within {timeout_s} s") from None
        except asyncio.CancelledError:
            self._cancel_remote(link, request_id, outgoing)
            raise
        finally:
            self._pending.pop(request_id, None)

    def send(
        self,
        peer_pubkey: bytes,
        endpoint: str,
        payload: bytes,
        *,
        priority: Priority = Priority.BULK,
    ) -> bool:
        """Queue a one-way frame; never blocks. False if the queue policy dropped it."""
        self._check_outgoing(payload)
        link = self._link_for(peer_pubkey, endpoint)
        return self._enqueue(
            link, _Outgoing(priority, encode_frame(Kind.ONEWAY, priority, 0, payload))
        )

    def forget(self, peer_pubkey: bytes) -> None:
        """Close the connection to a peer; its queued frames go, its waiting requests fail."""
        link = self._links.pop(peer_pubkey, None)
        if link is None:
            return
        if link.candidate:
            self._candidate_links -= 1
        link.close()
        gone = PeerUnreachableError("peer forgotten")
        for request_id, pending in list(self._pending.items()):
            if pending.link is link:
                del self._pending[request_id]
                if not pending.future.done():
                    pending.future.set_exception(gone)

    async def check_reachable(self, endpoint: str, timeout_s: float) -> bool:
        """See `check_reachable` (module function)."""
        return await check_reachable(endpoint, timeout_s)

    def _check_outgoing(self, payload: bytes) -> None:
        if self._state != "running":
            raise TransportClosedError("transport not running")
        if len(payload) > self._config.max_payload_bytes:
            self._stats.oversize += 1
            raise FrameTooLargeError(
                f"payload of {len(payload)} bytes exceeds {self._config.max_payload_bytes}"
            )

    def _link_for(self, peer_pubkey: bytes, endpoint: str, *, candidate: bool = False) -> _PeerLink:
        link = self._links.get(peer_pubkey)
        if link is not None and link.endpoint == endpoint:
            if link.candidate and not candidate:
                self._promote(link)
            return link
        server_key = curve_public_key(peer_pubkey)
        try:
            _split_endpoint(endpoint)  # tcp:// only: a gossiped ipc:// or inproc:// is refused
        except ValueError as exc:
            raise TransportError(str(exc), reason="bad_endpoint") from None
        if link is not None:
            self.forget(peer_pubkey)  # the peer moved: its old connection goes
        self._check_budget(candidate)
        assert self._ctx is not None
        sock = self._ctx.socket(zmq.DEALER)
        try:
            self._configure_dealer(sock, server_key, endpoint)
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise TransportError(
                f"cannot connect to {endpoint!r}: {exc}", reason="connect"
            ) from exc
        queue: OutboundQueue[_Outgoing] = OutboundQueue(
            max_frames=self._config.queue_max_frames, max_bytes=self._config.queue_max_bytes
        )
        link = _PeerLink(bytes(peer_pubkey), endpoint, sock, queue)
        link.candidate = candidate
        link.task = self._spawn(
            lambda: self._link_loop(link), f"transport-peer-{link.label}", "transport-peer"
        )
        self._links[link.ed25519_public] = link
        self._candidate_links += candidate
        return link

    def _check_budget(self, candidate: bool) -> None:
        """Raise if a new link of this kind would exceed its budget."""
        if candidate:
            if self._candidate_links >= self._config.max_candidate_links:
                raise TransportError(
                    f"already {self._candidate_links} candidate links",
                    reason="too_many_candidates",
                )
        elif len(self._links) - self._candidate_links >= self._config.max_peers:
            raise TransportError(
                f"already {len(self._links) - self._candidate_links} peers",
                reason="too_many_peers",
            )

    def _promote(self, link: _PeerLink) -> None:
        """A candidate's link, now used for an admitted peer, moves to the peer budget."""
        self._check_budget(candidate=False)
        link.candidate = False
        self._candidate_links -= 1

    def _enqueue(self, link: _PeerLink, outgoing: _Outgoing) -> bool:
        if not link.queue and self._try_send(link, outgoing):
            return True
        dropped = link.queue.push(outgoing)
        for frame in dropped:
            self._count_drop(frame)
        link.waker.poke()
        return not any(frame is outgoing for frame in dropped)

    def _try_send(self, link: _PeerLink, outgoing: _Outgoing) -> bool:
        """Hand the frame to libzmq if it takes it now; False means "try again later"."""
        try:
            link.sock.send(outgoing.frame, _NOBLOCK)
        except zmq.Again:
            return False
        link.waker.after_foreign_io()
        outgoing.sent = True
        self._stats.sent += 1
        return True

    def _count_drop(self, frame: _Outgoing) -> None:
        self._stats.dropped[frame.priority] += 1
        if frame.waiter is not None and not frame.waiter.done():
            frame.waiter.set_exception(QueueFullError("request dropped by the outgoing queue"))

    def _cancel_remote(self, link: _PeerLink, request_id: int, outgoing: _Outgoing) -> None:
        # Not yet sent: the send loop skips it (its waiter is done). Sent: tell the peer.
        if outgoing.sent and not link.closed and self._state == "running":
            cancel = encode_frame(Kind.CANCEL, outgoing.priority, request_id, b"")
            self._enqueue(link, _Outgoing(outgoing.priority, cancel))

    async def _link_loop(self, link: _PeerLink) -> None:
        """Own the peer's DEALER: read responses, and send queued frames when writable."""
        sock = link.sock
        while True:
            link.waker.event.clear()
            events = socket_events(sock)
            received = self._drain_responses(link) if events & POLLIN else 0
            sent = self._drain(link) if link.queue and events & POLLOUT else 0
            if received >= RECV_BATCH_FRAMES:
                await asyncio.sleep(0)  # a busy peer must not starve the loop
            elif not (received or sent):
                await link.waker.wait_or_poke()

    def _drain(self, link: _PeerLink) -> int:
        sent = 0
        while (outgoing := link.queue.peek()) is not None:
            if outgoing.waiter is not None and outgoing.waiter.done():
                link.queue.pop()  # its caller gave up before it left
                continue
            try:
                link.sock.send(outgoing.frame, _NOBLOCK)
            except zmq.Again:
                break
            link.queue.pop()
            outgoing.sent = True
            self._stats.sent += 1
            sent += 1
        link.dequeued.set()
        return sent

    def _drain_responses(self, link: _PeerLink) -> int:
        for count in range(RECV_BATCH_FRAMES):
            try:
                frame = self._recv_single(link.sock)
            except zmq.Again:
                return count
            if frame is not None:
                self._on_response(link, frame.bytes)
        return RECV_BATCH_FRAMES

    def _on_response(self, link: _PeerLink, data: bytes) -> None:
        decoded = decode_frame(data)
        pending = None if decoded is None else self._pending.get(decoded[0].request_id)
        if (
            decoded is None
            or decoded[0].kind not in (Kind.RESPONSE, Kind.ERROR)
            or pending is None
            or pending.link is not link
        ):
            # Late responses (after a timeout) land here too: harmless, counted.
            self._stats.garbage += 1
            return
        header, payload = decoded
        self._stats.received += 1
        del self._pending[header.request_id]
        if pending.future.done():
            return
        if header.kind is Kind.RESPONSE:
            pending.future.set_result(payload)
        else:
            reason, detail = decode_error(payload)
            pending.future.set_exception(RemoteError(reason, detail))

    # -- inbound ----------------------------------------------------------------------

    async def _router_loop(self, router: zmq.Socket[bytes], waker: SocketWaker) -> None:
        while True:
            await waker.wait(POLLIN)
            for _ in range(RECV_BATCH_FRAMES):
                try:
                    frame = self._recv_router_frame(router)
                except zmq.Again:
                    break
                if frame is not None:
                    self._on_router_frame(frame)
            else:
                await asyncio.sleep(0)

    def _recv_single(self, sock: zmq.Socket[bytes]) -> zmq.Frame | None:
        """The next single-frame message, or None (counted) when malformed.

        Frames are received without copying (their `more` flag spares a getsockopt);
        extra frames are discarded unread, so a flood of frames costs no Python memory.
        Raises zmq.Again when nothing is waiting.
        """
        frame = sock.recv(_NOBLOCK, copy=False)
        if frame.more:
            while sock.recv(_NOBLOCK, copy=False).more:
                pass
            self._stats.garbage += 1
            return None
        if len(frame) > self._max_frame_bytes:
            self._stats.oversize += 1
            return None
        return frame

    def _recv_router_frame(self, sock: zmq.Socket[bytes]) -> _Inbound | None:
        routing_frame = sock.recv(_NOBLOCK, copy=False)
        if not routing_frame.more:
            self._stats.garbage += 1
            return None
        frame = self._recv_single(sock)
        if frame is None:
            return None
        decoded = decode_frame(frame.bytes)
        peer = _peer_key_of(frame)
        if decoded is None or peer is None:
            self._stats.garbage += 1
            return None
        header, payload = decoded
        # Only requests need it (admission decides on it): one-way frames skip the lookup.
        address = _peer_address_of(frame) if header.kind is Kind.REQUEST else ""
        return _Inbound(
            routing_frame.bytes,
            peer,
            header.kind,
            header.priority,
            header.request_id,
            payload,
            address,
        )

    def _on_router_frame(self, frame: _Inbound) -> None:
        if frame.kind is Kind.ONEWAY:
            self._stats.received += 1
            self._deliver_oneway(frame)
        elif frame.kind is Kind.REQUEST:
            self._stats.received += 1
            self._start_handler(frame)
        elif frame.kind is Kind.CANCEL:
            task = self._handlers.get((frame.routing_id, frame.request_id))
            if task is not None and not task.done():
                self._stats.cancelled += 1
                task.cancel()
        else:
            self._stats.garbage += 1

    def _deliver_oneway(self, frame: _Inbound) -> None:
        handler = self._oneway_handler
        if handler is None:
            return
        try:
            handler(frame.peer, frame.payload)
        except Exception:  # top-level: one bad handler call must not stop the receive loop
            self._stats.handler_errors += 1
            log.exception("one-way handler failed")

    def _start_handler(self, frame: _Inbound) -> None:
        handler = self._request_handler
        key = (frame.routing_id, frame.request_id)
        if handler is None:
            self._reply_error(frame, "no_handler")
            return
        if key in self._handlers:
            self._stats.garbage += 1  # a request id reused while still running
            return
        peer_count = self._handlers_per_peer.get(frame.peer, 0)
        if (
            len(self._handlers) >= self._config.max_concurrent_handlers
            or peer_count >= self._config.max_handlers_per_peer
        ):
            self._stats.busy += 1
            self._reply_error(frame, "busy")
            return
        self._handlers_per_peer[frame.peer] = peer_count + 1
        task = asyncio.ensure_future(self._run_handler(handler, frame))
        task.set_name(f"transport-handler-{frame.request_id}")
        self._handlers[key] = task
        task.add_done_callback(lambda _t: self._handler_done(key, frame.peer))

    def _handler_done(self, key: tuple[bytes, int], peer: bytes) -> None:
        self._handlers.pop(key, None)
        remaining = self._handlers_per_peer.get(peer, 1) - 1
        if remaining > 0:
            self._handlers_per_peer[peer] = remaining
        else:
            self._handlers_per_peer.pop(peer, None)

    async def _run_handler(self, handler: RequestHandler, frame: _Inbound) -> None:
        _REQUEST_PEER_ADDRESS.set(frame.peer_address)  # this task's context only
        try:
            response = await handler(frame.peer, frame.payload)
        except asyncio.CancelledError:
            raise  # the caller cancelled (no reply wanted) or we are stopping
        except RequestRefused as exc:
            self._stats.refused += 1
            log.debug("request refused: %s", exc)
            self._reply_error(frame, exc.reason, exc.detail)
            return
        except Exception as exc:  # top-level: a handler failure becomes the caller's error
            self._stats.handler_errors += 1
            log.warning("request handler failed: %r", exc, exc_info=True)
            self._reply_error(frame, "handler_error", type(exc).__name__)
            return
        if not isinstance(response, bytes):  # untyped callers: never let a str through
            self._stats.handler_errors += 1
            self._reply_error(frame, "handler_error", f"returned {type(response).__name__}")
            return
        if len(response) > self._config.max_payload_bytes:
            self._stats.oversize += 1
            self._reply_error(frame, "response_too_large")
            return
        self._reply(frame, Kind.RESPONSE, response)

    def _reply_error(self, frame: _Inbound, reason: str, detail: str = "") -> None:
        self._reply(frame, Kind.ERROR, encode_error(reason, detail))

    def _reply(self, frame: _Inbound, kind: Kind, payload: bytes) -> None:
        router = self._router
        if router is None:
            return
        data = encode_frame(kind, frame.priority, frame.request_id, payload)
        try:
            # ROUTER_MANDATORY: an unroutable or full peer fails on the first frame.
            router.send(frame.routing_id, _NOBLOCK | _SNDMORE)
            router.send(data, _NOBLOCK)
        except zmq.Again:
            self._stats.dropped[frame.priority] += 1  # the caller's pipe is full
        except zmq.ZMQError as exc:
            self._stats.dropped[frame.priority] += 1  # EHOSTUNREACH: the caller is gone
            if exc.errno != errno.EHOSTUNREACH:
                log.warning("response dropped: %s", exc)
        else:
            self._stats.sent += 1
        if self._router_waker is not None:
            self._router_waker.after_foreign_io()

    async def _zap_loop(self, zap: zmq.Socket[bytes], waker: SocketWaker) -> None:
        while True:
            await waker.wait(POLLIN)
            request = zap.recv_multipart(zmq.NOBLOCK)
            # libzmq's ZAP client reads replies at once over inproc: this never blocks.
            zap.send_multipart(self._zap_reply(request), zmq.NOBLOCK)

    def _zap_reply(self, request: list[bytes]) -> list[bytes]:
        """ZAP (RFC 27): admit a CURVE client and stamp its key as the User-Id."""
        if len(request) < 6:
            request_id = request[1] if len(request) > 1 else b""
            return [b"1.0", request_id, b"400", b"malformed", b"", b""]
        version, request_id, _domain, _address, _identity, mechanism, *credentials = request
        if version != b"1.0" or mechanism != b"CURVE" or len(credentials) != 1:
            return [b"1.0", request_id, b"400", b"CURVE only", b"", b""]
        client_key = credentials[0]
        if len(client_key) != CURVE_KEY_BYTES or not self._admits(client_key):
            self._stats.rejected += 1
            return [b"1.0", request_id, b"400", b"not admitted", b"", b""]
        return [b"1.0", request_id, b"200", b"OK", client_key.hex().encode(), b""]

    def _admits(self, client_key: bytes) -> bool:
        admission = self._admission
        if admission is None:
            return True
        try:
            return bool(admission(client_key))
        except Exception:  # top-level: a failing admission callback refuses, it never crashes
            log.exception("admission callback failed; refusing %s", client_key.hex())
            return False

    # -- socket options ---------------------------------------------------------------

    def _configure_router(self, router: zmq.Socket[bytes]) -> None:
        cfg = self._config
        router.linger = 0
        router.curve_server = True
        router.curve_secretkey = self._identity.curve_secret_z85
        router.curve_publickey = self._identity.curve_public_z85
        router.zap_domain = ZAP_DOMAIN
        router.maxmsgsize = self._max_frame_bytes + CURVE_FRAME_OVERHEAD_BYTES
        router.sndhwm = cfg.router_sndhwm
        router.rcvhwm = cfg.rcvhwm
        router.router_mandatory = True
        router.heartbeat_ivl = int(cfg.heartbeat_ivl_s * 1000)
        router.heartbeat_timeout = int(cfg.heartbeat_timeout_s * 1000)
        if ":" in self._bind_host:
            router.ipv6 = True

    def _configure_dealer(self, sock: zmq.Socket[bytes], server_key: bytes, endpoint: str) -> None:
        cfg = self._config
        sock.linger = 0
        sock.curve_serverkey = z85.encode(server_key)
        sock.curve_publickey = self._identity.curve_public_z85
        sock.curve_secretkey = self._identity.curve_secret_z85
        sock.immediate = True
        sock.maxmsgsize = self._max_frame_bytes + CURVE_FRAME_OVERHEAD_BYTES
        sock.sndhwm = cfg.dealer_sndhwm
        sock.rcvhwm = cfg.rcvhwm
        sock.reconnect_ivl = int(cfg.reconnect_ivl_s * 1000)
        sock.reconnect_ivl_max = int(cfg.reconnect_ivl_max_s * 1000)
        sock.heartbeat_ivl = int(cfg.heartbeat_ivl_s * 1000)
        sock.heartbeat_timeout = int(cfg.heartbeat_timeout_s * 1000)
        if endpoint.startswith("tcp://["):
            sock.ipv6 = True

    @staticmethod
    def _format_host(host: str) -> str:
        return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _peer_key_of(frame: zmq.Frame) -> bytes | None:
    """The client's X25519 key our ZAP handler stamped on its connection."""
    try:
        user_id = frame.get("User-Id")
    except zmq.ZMQError:
        return None
    try:
        key = bytes.fromhex(user_id) if isinstance(user_id, str) else b""
    except ValueError:
        return None
    return key if len(key) == CURVE_KEY_BYTES else None


def _peer_address_of(frame: zmq.Frame) -> str:
    """The remote IP address of the connection a frame arrived on ("" if unknown)."""
    try:
        address = frame.get("Peer-Address")
    except zmq.ZMQError:
        return ""
    return address if isinstance(address, str) else ""


def _split_endpoint(endpoint: str) -> tuple[str, int]:
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"not a tcp:// endpoint: {endpoint!r}")
    host, sep, port = endpoint[len("tcp://") :].rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"endpoint needs a host and a port: {endpoint!r}")
    return host.strip("[]"), int(port)


async def check_reachable(endpoint: str, timeout_s: float) -> bool:
    """True if a plain TCP connect to the endpoint succeeds within `timeout_s`.

    The kernel completes the handshake even for a SIGSTOPped process, so True means
    "the process exists and holds the port", not "it is making progress": a reachable
    peer whose requests time out is a zombie. A killed process refuses: False.
    """
    host, port = _split_endpoint(endpoint)
    try:
        async with asyncio.timeout(timeout_s):
            _reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
