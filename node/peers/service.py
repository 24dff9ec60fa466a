"""The node in the mesh: admission, membership, discovery, wired onto the transport.

Admission. A peer is admitted only after a signed HELLO exchange proves its identity
(the envelope is signed by the key its node id names, and arrives on the CURVE
connection of that same key) and its certificate verifies against our mesh authority.
In dev mode, self-certified peers are admitted, but only on loopback: the connection
must really come from (inbound) or go to (outbound) a loopback address, and the peer
must say it lives there too; the address a peer reports alone proves nothing. Envelopes from
peers that are not admitted are dropped and counted; if we know where the sender
lives, we say HELLO to it, which admits both sides at once.

Membership. `mesh.membership.Membership` is a sans-I/O state machine; one task here
drives its timers, one task feeds it inbound messages, and short tasks answer its
transport reachability checks. Its messages travel as signed MEMBERSHIP envelopes,
one-way, in the transport's highest priority class. Liveness never enters a CRDT.

Discovery. mDNS (zeroconf), static seeds and membership gossip produce candidates;
a connector task says HELLO to each candidate it has not admitted, with backoff.
Anyone on the segment can advertise on mDNS, so its candidates wait in a bounded
backlog and are taken at a bounded rate, with a bounded number of HELLO loops of their
own; and a candidate that was not admitted keeps no connection (its transport link
comes from the transport's small candidate budget and is closed after each try).
The membership table doubles as peer exchange: a node that knows one peer learns every
member (with its signed endpoint) from that peer's push-pull state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import random
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, get_args

import msgspec

from vsmcp.mesh.certs import (
    Certificate,
    SignedCertificate,
    ZoneOrder,
    decode_certificate,
    encode_certificate,
    peek_certificate,
    verify_certificate,
)
from vsmcp.mesh.discovery import Candidate, Discovery, SeedDiscovery, prefer_zeroconf_sources
from vsmcp.mesh.envelope import Context, Envelope, MsgType, Opener, Sealer, wall_clock_ms
from vsmcp.mesh.errors import CertificateError, EnvelopeError, MeshError
from vsmcp.mesh.identity import (
    NodeKey,
    node_id_from_public_key,
    public_key_from_node_id,
    verify_detached,
)
from vsmcp.mesh.loops import LoopFn, LoopSupervisor
from vsmcp.mesh.membership import (
    CheckReachability,
    MemberInfo,
    MemberReaped,
    Membership,
    MembershipConfig,
    MemberState,
    MemberStateChanged,
    Output,
    Send,
)
from vsmcp.mesh.membership import (
    encode as encode_membership,
)
from vsmcp.mesh.service import Service
from vsmcp.mesh.transport import (
    Priority,
    RemoteError,
    RequestRefused,
    Transport,
    TransportError,
    curve_public_key,
    request_peer_address,
)
from vsmcp.mesh.whois import WhoisError, WhoisResponder, whois
from vsmcp.node.errors import NodeError
from vsmcp.node.routing.calls import ITEM_OVERHEAD_BYTES, MeshCalls, ReplyItem
from vsmcp.node.vsm.events import EnvelopeRejected, EventSink

if TYPE_CHECKING:
    from vsmcp.mesh.discovery import MdnsDiscovery

log = logging.getLogger(__name__)

MESH_PROTOCOL_VERSION = 1
INBOUND_QUEUE_FRAMES = 4096
HELLO_TIMEOUT_S = 3.0
HELLO_BACKOFF_MIN_S = 0.5
HELLO_BACKOFF_MAX_S = 30.0
# A failed HELLO is tried again this many times, on the backoff (0.5 + 1 + 2 + 4 + 8 s):
# long enough to outlast the replay floor of a peer, or our own, just restarted after a
# crash (envelope.max_future_skew_s).
HELLO_RETRIES = 5
# Refusals that another HELLO soon may get past: the peer could not open our HELLO yet
# (its replay floor after a crash), a test cut the link, or it was overloaded. Any
# other refusal is about who we are (mesh, version, certificate): retrying won't help.
TRANSIENT_HELLO_REFUSALS = frozenset(
    {"bad_envelope", "blocked", "busy", "handler_error", "no_handler", "unadmitted"}
)
SEED_REOFFER_INTERVAL_S = 5.0
LEAVE_SPREAD_S = 0.3
MAX_REACHABILITY_CHECKS = 64
MAX_HELLOS_IN_FLIGHT = 16
# mDNS candidates (anyone on the segment can make them up): a backlog of their own, taken
# oldest first at most every MDNS_HELLO_INTERVAL_S into at most MAX_MDNS_HELLO_LOOPS
# HELLO loops (one HELLO in flight each). With the MAX_HELLOS_IN_FLIGHT of every other
# source, at most 32 candidate links are open at once: the transport's candidate budget.
MAX_MDNS_BACKLOG = 256
MAX_MDNS_HELLO_LOOPS = 16
MDNS_HELLO_INTERVAL_S = 0.1
# Our own mDNS service: off, or registering in the background, registered, failed.
MdnsState = Literal["off", "registering", "registered", "failed"]
MDNS_STATES: tuple[MdnsState, ...] = get_args(MdnsState)
# Backoff states of peers not admitted (yet): the oldest idle one goes beyond this.
MAX_HELLO_BACKOFFS = 4096
MAX_HELLO_BYTES = 16 << 10
MAX_META_BYTES = 1024
# node.name travels in the node's signed membership record, whose metadata (host, ports,
# certificate fingerprint, name) must fit in 512 bytes (mesh/_membership_wire.py).
MAX_NODE_NAME_BYTES = 64
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# A node without a configured name goes by its id's last this many characters.
DEFAULT_NAME_CHARS = 8
# Envelope header, signature and fields around the payload, with room for a context.
ENVELOPE_OVERHEAD_BYTES = 4096

WHOIS_TIMEOUT_S = 1.0

PeerRequestHandler = Callable[["Peer", Envelope], Awaitable[tuple[MsgType, bytes]]]
"""Answers a request envelope from an admitted peer with (response type, payload)."""
PeerOnewayHandler = Callable[["Peer", Envelope], None]
"""Takes a one-way envelope from an admitted peer; must not block."""

MEMBERSHIP_PRESETS: dict[str, Callable[[], MembershipConfig]] = {
    "local": MembershipConfig.local,
    "lan": MembershipConfig.lan,
    "wan": MembershipConfig.wan,
}


class PeerUnavailableError(NodeError):
    """The peer is not admitted (or not reachable) for a request."""


class AdmissionError(NodeError):
    """A peer's HELLO was refused. `reason` is the counter label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class PeerMeta(msgspec.Struct, array_like=True, frozen=True):
    """What a member publishes about itself (signed, in its membership Alive)."""

    host: str
    mesh_port: int
    http_port: int | None
    fingerprint: str
    # Appended field (older peers omit it, older decoders ignore it): the node's configured
    # `node.name`, "" when it has none. Calls may be pinned to a node by it (`vsmcp/node`).
    name: str = ""

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.mesh_port}"


class Hello(msgspec.Struct, array_like=True, frozen=True):
    protocol_version: int
    certificate: bytes
    meta: PeerMeta
    # Appended field (older peers omit it): meshes sharing a LAN or an authority stay apart.
    mesh_name: str = ""


_encode = msgspec.msgpack.Encoder().encode
_decode_meta = msgspec.msgpack.Decoder(PeerMeta).decode
_decode_hello = msgspec.msgpack.Decoder(Hello).decode


def peer_name(node_id: str, meta: PeerMeta | None) -> str:
    """A node's name as shown: the one it announced, else its id's last 8 characters."""
    return meta.name if meta is not None and meta.name else node_id[-DEFAULT_NAME_CHARS:]


def is_node_name(name: str) -> bool:
    """Whether `name` may be a node's name (`node.name`; announced by a peer)."""
    return len(name.encode()) <= MAX_NODE_NAME_BYTES and not _CONTROL_CHARS.search(name)


def _named_properly(meta: PeerMeta) -> PeerMeta:
    # A peer's name is shown (/api/peers, `vsmcp peers`) and pinned by: one that no node
    # could be configured with (too long, terminal escapes) is dropped, not passed on.
    return meta if is_node_name(meta.name) else msgspec.structs.replace(meta, name="")


def decode_meta(data: bytes) -> PeerMeta | None:
    if len(data) > MAX_META_BYTES:
        return None
    try:
        return _named_properly(_decode_meta(data))
    except msgspec.DecodeError:
        return None


@dataclass
class Peer:
    node_id: str
    public_key: bytes
    certificate: Certificate
    meta: PeerMeta
    admitted_at: float


@dataclass
class _Backoff:
    next_at: float = 0.0
    delay_s: float = HELLO_BACKOFF_MIN_S
    endpoint: str = ""  # the latest endpoint offered for this peer

    def take(self, now: float) -> None:
        self.next_at = now + self.delay_s
        self.delay_s = min(self.delay_s * 2, HELLO_BACKOFF_MAX_S)


@dataclass
class MeshStats:
    refused: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    hellos_sent: int = 0
    hellos_answered: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0


@lru_cache(maxsize=8192)
def _public_key(node_id: str) -> bytes:
    return public_key_from_node_id(node_id)


@lru_cache(maxsize=8192)
def _curve_key(ed25519_public_key: bytes) -> bytes:
    """X25519 key of a peer (what the transport reports): a conversion costs ≈70 µs."""
    return curve_public_key(ed25519_public_key)


# Asked on every routed call: no str.lower() per call.
_STATE_NAMES: dict[MemberState, str] = {state: state.name.lower() for state in MemberState}


def is_loopback_host(host: str) -> bool:
    """A loopback address (an IPv4-mapped one too), or "localhost"."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host == "localhost"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def endpoint_host(endpoint: str) -> str:
    """The host of "tcp://host:port" (brackets of an IPv6 address removed)."""
    host = endpoint.removeprefix("tcp://").rpartition(":")[0]
    return host.strip("[]")


class MeshService(Service):
    """The node's presence in the mesh. An async context manager; start/stop idempotent."""

    def __init__(
        self,
        *,
        key: NodeKey,
        certificate: bytes,
        authority_public_key: bytes,
        zones: ZoneOrder,
        dev: bool,
        sealer: Sealer,
        opener: Opener,
        host: str,
        port: int,
        http_port: int | None,
        fingerprint: str,
        seeds: list[str],
        mdns: bool,
        mdns_compiled: bool = False,
        mesh_name: str = "default",
        node_name: str = "",
        preset: str = "lan",
        dead_reap_after_s: float = 0.0,
        left_reap_after_s: float = 0.0,
        on_member_change: Callable[[MemberStateChanged | MemberReaped], None] | None = None,
        loops: LoopSupervisor | None = None,
    ) -> None:
        self._loops = loops or LoopSupervisor()
        self._key = key
        self.node_id = key.node_id
        self.public_key = key.public_key
        self._certificate = certificate
        self._authority = authority_public_key
        self._zones = zones
        self._dev = dev
        self._sealer = sealer
        self._opener = opener
        self._host = host
        self._requested_port = port
        self.http_port = http_port
        self._fingerprint = fingerprint
        self._mesh_name = mesh_name
        self._node_name = node_name
        self._seeds = SeedDiscovery(seeds)
        self._use_mdns = mdns
        self._mdns_compiled = mdns_compiled
        self._membership_config = _membership_config(preset, dead_reap_after_s, left_reap_after_s)
        self._on_member_change = on_member_change
        self.stats = MeshStats()
        # Where rejected envelopes are published (the node's event stream); set by the node.
        self.events: EventSink | None = None
        self.peers: dict[str, Peer] = {}
        # Peers whose links are cut: by fault injection (`block`, tests only), or for as
        # long as `refuses` says so (the node's immune system: a node block). Their
        # envelopes are dropped, their HELLOs refused, none are sent to them.
        self.blocked: set[str] = set()
        self.refuses: Callable[[str], bool] | None = None
        # Told each peer newly admitted (a quorum counted over `members_alive` may have
        # grown without a membership change: a known member saying HELLO again).
        self.on_admit: Callable[[str], None] | None = None
        self._transport: Transport | None = None
        self._membership: Membership | None = None
        self._discovery: Discovery | None = None
        self._mdns: MdnsDiscovery | None = None
        self._mdns_registration: asyncio.Task[None] | None = None
        # Off, or how registering our mDNS service went (MDNS_STATES).
        self.mdns_state: MdnsState = "off"
        self._inbound: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue(INBOUND_QUEUE_FRAMES)
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._helper_tasks: set[asyncio.Task[Any]] = set()
        self._hello_backoff: dict[str, _Backoff] = {}
        self._hello_loops: set[str] = set()  # node ids with a HELLO retry loop running
        self._hello_slots = asyncio.Semaphore(MAX_HELLOS_IN_FLIGHT)
        self._mdns_backlog: OrderedDict[str, str] = OrderedDict()  # node id -> endpoint
        self._mdns_backlog_ready = asyncio.Event()
        self._mdns_slots = asyncio.Semaphore(MAX_MDNS_HELLO_LOOPS)
        self._reach_slots = asyncio.Semaphore(MAX_REACHABILITY_CHECKS)
        self._started = False
        self._stopped = False
        self._meta: PeerMeta | None = None
        self._request_handlers: dict[MsgType, PeerRequestHandler] = {}
        self._calls = MeshCalls(
            self._send_calls,
            self._request_handlers,
            max_payload_bytes=sealer.max_size - ENVELOPE_OVERHEAD_BYTES,
        )
        self._oneway_handlers: dict[MsgType, PeerOnewayHandler] = {
            MsgType.CALLS: lambda peer, envelope: self._calls.on_calls(
                peer, peer.node_id, envelope
            ),
            MsgType.REPLIES: lambda peer, envelope: self._calls.on_replies(peer.node_id, envelope),
        }
        self._whois: WhoisResponder | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        transport = Transport(
            self._key.seed, bind_host=self._host, port=self._requested_port, loops=self._loops
        )
        await transport.start()
        self._transport = transport
        transport.on_request(self._on_request)
        transport.on_oneway(self._on_oneway)
        self._meta = PeerMeta(
            self._host, transport.port, self.http_port, self._fingerprint, self._node_name
        )
        self._membership = Membership(
            self.node_id,
            meta=_encode(self._meta),
            sign=self._key.sign_detached,
            verify=self._verify_member,
            config=self._membership_config,
            now=time.monotonic(),
        )
        self._discovery = Discovery(self_node_id=self.node_id)
        self._spawn_loop(self._drive_membership, "mesh-membership")
        self._spawn_loop(self._process_inbound, "mesh-inbound")
        self._spawn_loop(self._connect_candidates, "mesh-connector")
        self._spawn_loop(self._connect_mdns_candidates, "mesh-mdns-connector")
        self._spawn_loop(self._offer_seeds, "mesh-seeds")
        if self._use_mdns:
            await self._start_mdns()
        await self._start_whois(transport.port)
        log.info("mesh listening on %s", transport.endpoint)

    async def _start_whois(self, port: int) -> None:
        whois = WhoisResponder(self._host, port, self._whois_answer)
        try:
            await whois.start()
        except WhoisError as e:
            log.warning("whois unavailable (plain HOST:PORT seeds cannot find us): %s", e)
            return
        self._whois = whois

    def _whois_answer(self, nonce: bytes) -> bytes:
        """A signed HELLO naming the nonce: proves who answers at this port."""
        return self._sealer.seal(MsgType.HELLO, self._hello_payload(), msg_id=nonce)

    async def _start_mdns(self) -> None:
        """Browse at once; register (zeroconf's ≈1.1 s probe) in the background.

        The node is healthy and finds peers (mDNS, seeds, gossip) without waiting for the
        probe; `mdns_state` (and the vsmcp_mdns_state metric) tells how registration went.
        """
        assert self._meta is not None and self._discovery is not None
        if not self._mdns_compiled and not prefer_zeroconf_sources():
            log.info(
                "zeroconf keeps its compiled modules (imported before the mesh started, "
                "or installed without all of its sources)"
            )
        try:
            from vsmcp.mesh.discovery import MdnsDiscovery  # zeroconf: only with mDNS on
        except ImportError as e:  # a broken install: seeds and gossip still work
            self.mdns_state = "failed"
            log.warning("mDNS unavailable (python-zeroconf does not import: %s)", e)
            return

        interfaces = ["127.0.0.1"] if is_loopback_host(self._host) else None
        mdns = MdnsDiscovery(
            node_id=self.node_id,
            cert_fingerprint=self._fingerprint,
            mesh_port=self._meta.mesh_port,
            http_port=self.http_port,
            protocol_version=MESH_PROTOCOL_VERSION,
            on_candidate=self._offer_candidate,
            on_lost=self._mdns_lost,
            interfaces=interfaces,
            advertise_addresses=[self._host] if interfaces else None,
        )
        try:
            await mdns.start(register=False)
        except MeshError as e:
            self.mdns_state = "failed"
            log.warning("mDNS unavailable, continuing with seeds and gossip: %s", e)
            return
        self._mdns = mdns
        self.mdns_state = "registering"
        self._mdns_registration = self._spawn(self._register_mdns(mdns), "mesh-mdns-register")

    async def _register_mdns(self, mdns: MdnsDiscovery) -> None:
        registered = False
        try:
            await mdns.register()
            registered = True
        except MeshError as e:
            # Still browsing: this node finds others; they find it by seeds and gossip.
            log.warning("mDNS registration failed, others find us by seeds and gossip: %s", e)
        finally:
            self.mdns_state = "registered" if registered else "failed"

    def _offer_candidate(self, candidate: Candidate) -> None:
        if self._discovery is not None:
            self._discovery.offer(candidate)

    def _mdns_lost(self, node_id: str) -> None:
        self._mdns_backlog.pop(node_id, None)
        if self._discovery is not None:
            self._discovery.lost(node_id)

    async def stop(self) -> None:
        if not self._started or self._stopped:
            return
        self._stopped = True
        membership = self._membership
        if membership is not None:
            self._carry_out(membership.leave(time.monotonic()))
            # Let the Left spread a little: the transport sends from its own queues.
            await asyncio.sleep(LEAVE_SPREAD_S)
        registration, self._mdns_registration = self._mdns_registration, None
        if registration is not None:  # still probing: end it before closing the sockets
            registration.cancel()
            await asyncio.gather(registration, return_exceptions=True)
        if self._mdns is not None:
            await self._mdns.stop()
        if self._whois is not None:
            await self._whois.stop()
        if self._discovery is not None:
            self._discovery.close()
        await self._calls.stop()
        for task in (*self._tasks, *self._helper_tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._helper_tasks, return_exceptions=True)
        if self._transport is not None:
            await self._transport.stop()

    def _spawn_loop(self, run: LoopFn, name: str) -> None:
        """A long-lived loop of the service: supervised (restarted, or the node unhealthy)."""
        task = self._loops.spawn(name, run)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn(self, coro: Any, name: str, *, helper: bool = False) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        owner = self._helper_tasks if helper else self._tasks
        owner.add(task)
        task.add_done_callback(owner.discard)
        if not helper:
            task.add_done_callback(self._service_task_done)
        return task

    def _service_task_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("mesh task %s failed", task.get_name(), exc_info=task.exception())

    # -- views ---------------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        return self._transport.port if self._transport else None

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            raise NodeError("mesh not started")
        return self._transport

    def members(self) -> list[MemberInfo]:
        return self._membership.members() if self._membership else []

    def peer_view(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        out: list[dict[str, Any]] = []
        for m in self.members():
            if m.is_self:
                continue
            meta = decode_meta(m.meta)
            peer = self.peers.get(m.id)
            out.append(
                {
                    "id": m.id,
                    "name": peer_name(m.id, meta),
                    "state": m.state.name.lower(),
                    "incarnation": m.incarnation,
                    "admitted": peer is not None,
                    "zone": peer.certificate.zone if peer else None,
                    # Child VSMs (node/children) hold certificates their parent issued.
                    "parent": parent_node_id(peer.certificate) if peer else None,
                    "depth": peer.certificate.depth if peer else None,
                    "certificate_expires_at_s": peer.certificate.expires_at_s if peer else None,
                    "endpoint": meta.endpoint if meta else None,
                    "http_port": meta.http_port if meta else None,
                    "since_s": round(max(0.0, now - m.changed_at), 3),
                }
            )
        return sorted(out, key=lambda p: p["id"])

    def peer_names(self) -> dict[str, str]:
        """The configured name of each admitted peer that announced one (node id -> name)."""
        return {node_id: p.meta.name for node_id, p in self.peers.items() if p.meta.name}

    def transport_counts(self) -> dict[str, int]:
        stats = self._transport.stats if self._transport else None
        if stats is None:
            return {}
        return {
            "sent": stats.sent,
            "received": stats.received,
            "timeouts": stats.timeouts,
            "garbage": stats.garbage,
            "dropped": sum(stats.dropped.values()),
        }

    def membership_counts(self) -> dict[str, int]:
        """The membership protocol's own counts (probes, suspicions, rounds, verdicts)."""
        membership = self._membership
        return dict(membership.stats) if membership is not None else {}

    def call_counts(self) -> dict[str, int]:
        """Coalesced request/reply events (`node.mesh_calls.COUNTED_EVENTS`)."""
        return dict(self._calls.counts)

    def byte_counts(self) -> dict[str, int]:
        return {"sent": self.stats.bytes_sent, "received": self.stats.bytes_received}

    def state_counts(self) -> dict[str, int]:
        counts = Counter(m.state.name.lower() for m in self.members() if not m.is_self)
        return dict(counts)

    # -- requests and one-way messages for the layers above -------------------------------

    def handle_requests(self, kind: MsgType, handler: PeerRequestHandler) -> None:
        """Serve requests of `kind` from admitted peers."""
        self._request_handlers[kind] = handler

    def handle_oneway(self, kind: MsgType, handler: PeerOnewayHandler) -> None:
        """Take one-way envelopes of `kind` from admitted peers."""
        self._oneway_handlers[kind] = handler

    @property
    def max_payload_bytes(self) -> int:
        """The largest payload a request or its answer can carry."""
        return self._sealer.max_size - ENVELOPE_OVERHEAD_BYTES - ITEM_OVERHEAD_BYTES

    def member_state(self, node_id: str) -> str | None:
        state = self._membership.state_of(node_id) if self._membership else None
        return None if state is None else _STATE_NAMES[state]

    def cut_off(self, node_id: str) -> bool:
        """No link to this peer now: blocked by a test, or refused (`refuses`)."""
        refuses = self.refuses
        return node_id in self.blocked or (refuses is not None and refuses(node_id))

    def members_alive(self) -> list[str]:
        """Admitted peers that membership holds alive, but for those a test blocked:
        what quorums count. Never asks `refuses` (the immune system counts its quorums
        over these, and `refuses` is its answer)."""
        return [
            node_id
            for node_id in self.peers
            if self.member_state(node_id) == "alive" and node_id not in self.blocked
        ]

    def alive_peers(self) -> list[str]:
        """Admitted peers that membership holds alive (routing and push targets)."""
        return [node_id for node_id in self.members_alive() if not self.cut_off(node_id)]

    async def request(
        self,
        node_id: str,
        kind: MsgType,
        payload: bytes,
        *,
        timeout_s: float,
        context: Context | None = None,
    ) -> ReplyItem:
        """Send a request to an admitted peer; return its answer (type and payload).

        Requests to one peer made in the same loop iteration share one signed envelope,
        and so do its answers (`node.mesh_calls`). Raises PeerUnavailableError (not
        admitted, blocked) or the transport's errors (timeout, queue full, a refusal as
        RemoteError).
        """
        if node_id not in self.peers or self.cut_off(node_id):
            raise PeerUnavailableError(f"peer {node_id} is not admitted")
        return await self._calls.request(
            node_id, kind, payload, timeout_s=timeout_s, context=context
        )

    def _send_calls(self, node_id: str, kind: MsgType, payload: bytes) -> bool:
        return self.send(node_id, kind, payload, priority=Priority.REQUEST)

    def send(
        self,
        node_id: str,
        kind: MsgType,
        payload: bytes,
        *,
        priority: Priority = Priority.BULK,
        context: Context | None = None,
    ) -> bool:
        """One-way envelope to an admitted peer; False if it could not be queued."""
        peer = self.peers.get(node_id)
        if peer is None or self.cut_off(node_id):
            return False
        try:
            wire = self._sealer.seal(kind, payload, recipient=peer.public_key, context=context)
        except EnvelopeError as e:
            # Too big for one envelope: the sender must split; say so, do not raise.
            self.stats.dropped[e.reason] += 1
            log.warning(
                "%s message of %d bytes to %s not sent: %s", kind.name, len(payload), node_id, e
            )
            return False
        self.stats.bytes_sent += len(wire)
        try:
            return self.transport.send(peer.public_key, peer.meta.endpoint, wire, priority=priority)
        except TransportError as e:
            self.stats.dropped[getattr(e, "reason", "transport")] += 1
            return False

    # -- membership ----------------------------------------------------------------------

    def _verify_member(self, member: str, message: bytes, signature: bytes) -> bool:
        try:
            public_key = _public_key(member)
        except MeshError:
            return False
        return verify_detached(public_key, message, signature)

    async def _drive_membership(self) -> None:
        membership = self._membership
        assert membership is not None
        while True:
            deadline = membership.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._carry_out(membership.tick(time.monotonic()))

    def _carry_out(self, outputs: list[Output]) -> None:
        for output in outputs:
            if isinstance(output, Send):
                self._send_membership(output)
            elif isinstance(output, CheckReachability):
                self._check_reachability(output.member)
            elif isinstance(output, MemberStateChanged):
                self._member_changed(output)
            elif isinstance(output, MemberReaped):
                self._member_reaped(output)
        self._wake.set()

    def _endpoint_of(self, node_id: str) -> str | None:
        peer = self.peers.get(node_id)
        if peer is not None:
            return peer.meta.endpoint
        membership = self._membership
        if membership is None:
            return None
        # A reaped member has only its tombstone: a healed partition is bridged there.
        info = membership.member(node_id)
        meta_bytes = info.meta if info else membership.reaped_meta(node_id)
        meta = decode_meta(meta_bytes) if meta_bytes else None
        return meta.endpoint if meta else None

    def _send_membership(self, send: Send) -> None:
        if self.cut_off(send.to):
            self.stats.dropped["blocked"] += 1
            return
        if send.to not in self.peers:
            # Not admitted yet: say HELLO first; membership tolerates the lost message.
            self.stats.dropped["unadmitted_peer"] += 1
            self._hello_member(send.to)
            return
        self.send(
            send.to,
            MsgType.MEMBERSHIP,
            encode_membership(send.message),
            priority=Priority.MEMBERSHIP,
        )

    def _check_reachability(self, member: str) -> None:
        self._spawn(self._reachability(member), f"mesh-reach-{member[-6:]}", helper=True)

    async def _reachability(self, member: str) -> None:
        membership = self._membership
        assert membership is not None
        endpoint = self._endpoint_of(member)
        timeout = self._membership_config.probe_timeout_s
        reachable = False
        if endpoint is not None and not self.cut_off(member):
            async with self._reach_slots:
                reachable = await self.transport.check_reachable(endpoint, timeout)
        self._carry_out(membership.on_transport_probe_result(member, reachable, time.monotonic()))

    def _member_changed(self, change: MemberStateChanged) -> None:
        old = change.old.name.lower() if change.old is not None else None
        new = change.new.name.lower()
        if old != new:
            log.info(
                "member %s: %s -> %s (incarnation %d)", change.member, old, new, change.incarnation
            )
        if change.old is None and change.member not in self.peers:
            self._offer_member(change.member, change.meta)
        if self._on_member_change is not None:
            self._on_member_change(change)

    def cut(self, node_id: str) -> None:
        """Drop an admitted peer that `refuses` now refuses: its admission and its
        connection go (membership finds it unreachable; its envelopes and HELLOs are
        refused while `refuses` holds). When that ends it is admitted again by a new
        HELLO, its certificate verified again: from it, or ours (seeds, its gossip)."""
        peer = self.peers.pop(node_id, None)
        self._hello_backoff.pop(node_id, None)
        if peer is None:
            return
        log.warning("peer %s: links cut, admission dropped (blocked)", node_id)
        if self._transport is not None:
            self._transport.forget(peer.public_key)

    def _member_reaped(self, reaped: MemberReaped) -> None:
        """Down long enough to be forgotten: drop its admission and its connection too
        (it says HELLO again if it comes back)."""
        log.info("member %s: %s -> reaped", reaped.member, reaped.state.name.lower())
        peer = self.peers.pop(reaped.member, None)
        self._hello_backoff.pop(reaped.member, None)
        if peer is not None and self._transport is not None:
            self._transport.forget(peer.public_key)
        if self._on_member_change is not None:
            self._on_member_change(reaped)

    def _offer_member(self, node_id: str, meta_bytes: bytes) -> None:
        meta = decode_meta(meta_bytes)
        if meta is None or self._discovery is None:
            return
        with contextlib.suppress(MeshError):
            self._discovery.offer(
                Candidate(
                    node_id=node_id,
                    host=meta.host,
                    mesh_port=meta.mesh_port,
                    http_port=meta.http_port,
                    cert_fingerprint=meta.fingerprint,
                    protocol_version=MESH_PROTOCOL_VERSION,
                    source="gossip",
                )
            )

    # -- inbound -------------------------------------------------------------------------

    def _on_oneway(self, peer_curve_key: bytes, payload: bytes) -> None:
        self.stats.bytes_received += len(payload)
        try:
            self._inbound.put_nowait((peer_curve_key, payload))
        except asyncio.QueueFull:
            self.stats.dropped["inbound_queue_full"] += 1

    async def _process_inbound(self) -> None:
        while True:
            peer_curve_key, wire = await self._inbound.get()
            envelope = self._open(peer_curve_key, wire)
            if envelope is None:
                continue
            sender = envelope.sender_id
            if self.cut_off(sender):
                self.stats.dropped["blocked"] += 1
                continue
            if sender not in self.peers:
                self.stats.refused["unadmitted"] += 1
                self._hello_member(sender)
                continue
            if envelope.type == MsgType.MEMBERSHIP:
                self._on_membership(sender, envelope.payload)
                continue
            handler = self._oneway_handlers.get(envelope.type)
            if handler is None:
                self.stats.dropped["unexpected_type"] += 1
                continue
            try:
                handler(self.peers[sender], envelope)
            except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                raise
            except BaseException:
                # One message's boundary: pycrdt's Rust panics derive from BaseException,
                # and one bad message must not stop the loop carrying membership and sync.
                self.stats.dropped["handler_error"] += 1
                log.exception("one-way %s from %s failed", envelope.type.name, sender)

    def _open(self, peer_curve_key: bytes, wire: bytes) -> Envelope | None:
        try:
            envelope = self._opener.open(wire)
        except EnvelopeError as e:
            log.debug("envelope rejected: %s", e)
            self._publish_rejected(e.reason, peer_curve_key)
            return None
        if _curve_key(envelope.sender) != peer_curve_key:
            # Signed by one node, carried on another's connection: a relay or a forgery.
            self.stats.refused["sender_mismatch"] += 1
            self._publish_rejected("sender_mismatch", peer_curve_key)
            return None
        return envelope

    def _publish_rejected(self, reason: str, peer_curve_key: bytes) -> None:
        """An `envelope_rejected` event. The sender is the connection's (CURVE-proven)
        key, named by the admitted peer holding it, never what the envelope claims."""
        if self.events is None:
            return
        sender = next(
            (p.node_id for p in self.peers.values() if _curve_key(p.public_key) == peer_curve_key),
            f"curve:{peer_curve_key.hex()}",
        )
        self.events.publish(EnvelopeRejected(ts=time.time(), reason=reason, sender=sender))

    def _on_membership(self, sender: str, payload: bytes) -> None:
        membership = self._membership
        assert membership is not None
        try:
            outputs = membership.on_message_bytes(sender, payload, time.monotonic())
        except MeshError as e:
            self.stats.refused["bad_membership_message"] += 1
            log.debug("bad membership message from %s: %s", sender, e)
            return
        self._carry_out(outputs)

    async def _on_request(self, peer_curve_key: bytes, wire: bytes) -> bytes:
        """Answer a transport request; a refusal reaches the caller as its reason."""
        try:
            return self._answer_request(peer_curve_key, wire, request_peer_address())
        except AdmissionError as e:
            # The reason only: details (zones, keys) are not for unadmitted callers.
            raise RequestRefused(e.reason) from e

    def _answer_request(self, peer_curve_key: bytes, wire: bytes, peer_address: str) -> bytes:
        envelope = self._open(peer_curve_key, wire)
        if envelope is None:
            raise AdmissionError("bad_envelope", "rejected")
        if self.cut_off(envelope.sender_id):
            self.stats.refused["blocked"] += 1
            raise AdmissionError("blocked", "link cut")
        if envelope.type == MsgType.HELLO:
            self.stats.hellos_answered += 1
            self._admit(envelope, peer_address)
            return self._sealer.seal(
                MsgType.HELLO, self._hello_payload(), recipient=envelope.sender
            )
        if envelope.sender_id not in self.peers:
            self.stats.refused["unadmitted"] += 1
            self._hello_member(envelope.sender_id)
            raise AdmissionError("unadmitted", "say HELLO first")
        # Only HELLO is a transport request: the rest travel in CALLS envelopes.
        raise AdmissionError("unexpected_type", f"{envelope.type!r} is not a transport request")

    # -- admission -----------------------------------------------------------------------

    def renew_certificate(self, certificate: bytes, fingerprint: str) -> None:
        """Our renewed certificate (same key): every HELLO carries it from now on, and
        each admitted peer gets one at once, so none holds the old one past its expiry."""
        self._certificate = certificate
        self._fingerprint = fingerprint
        for node_id in list(self.peers):
            self._hello_member(node_id)

    def _hello_payload(self) -> bytes:
        assert self._meta is not None
        return _encode(Hello(MESH_PROTOCOL_VERSION, self._certificate, self._meta, self._mesh_name))

    def _admit(self, envelope: Envelope, peer_address: str) -> Peer:
        """Verify a HELLO envelope's certificate; admit its sender or raise AdmissionError.

        `peer_address`: where the HELLO's connection really is (the inbound connection's
        remote address, or the host we dialled), never what the HELLO says. A peer cut off
        now is refused (`blocked`), also when its HELLO answers one of ours that was on its
        way as the block landed."""
        if self.cut_off(envelope.sender_id):
            self.stats.refused["blocked"] += 1
            raise AdmissionError("blocked", "link cut")
        try:
            if len(envelope.payload) > MAX_HELLO_BYTES:
                raise AdmissionError("malformed", "hello too large")
            hello = _decode_hello(envelope.payload)
        except msgspec.DecodeError as e:
            self.stats.refused["malformed"] += 1
            raise AdmissionError("malformed", str(e)) from None
        except AdmissionError:
            self.stats.refused["malformed"] += 1
            raise
        try:
            certificate = self._verify_peer_certificate(hello, peer_address)
        except AdmissionError as e:
            self.stats.refused[e.reason] += 1
            log.warning("refused peer %s: %s", envelope.sender_id, e)
            raise
        if certificate.node_public_key != envelope.sender:
            self.stats.refused["certificate_mismatch"] += 1
            raise AdmissionError("certificate_mismatch", "certificate is for another key")
        node_id = envelope.sender_id
        is_new = node_id not in self.peers
        if is_new:
            log.info(
                "admitted peer %s (zone %s) at %s", node_id, certificate.zone, hello.meta.endpoint
            )
            self._hello_backoff.pop(node_id, None)
        meta = _named_properly(hello.meta)
        peer = Peer(node_id, envelope.sender, certificate, meta, time.monotonic())
        self.peers[node_id] = peer
        membership = self._membership
        if membership is not None and membership.member(node_id) is None:
            self._carry_out(membership.join([node_id], time.monotonic()))
        if is_new and self.on_admit is not None:
            try:
                self.on_admit(node_id)
            except Exception:  # a callback's error: the peer is admitted all the same
                log.exception("on_admit callback failed for peer %s", node_id)
        return peer

    def _verify_peer_certificate(self, hello: Hello, peer_address: str) -> Certificate:
        if hello.protocol_version != MESH_PROTOCOL_VERSION:
            raise AdmissionError("protocol_version", f"peer speaks {hello.protocol_version}")
        if hello.mesh_name != self._mesh_name:
            raise AdmissionError("other_mesh", f"peer is in mesh {hello.mesh_name!r}")
        try:
            signed = decode_certificate(hello.certificate)
        except CertificateError as e:
            raise AdmissionError("malformed", str(e)) from e
        try:
            return verify_certificate(signed, self._authority, self._zones)
        except CertificateError as authority_error:
            on_loopback = is_loopback_host(peer_address) and is_loopback_host(hello.meta.host)
            if not (self._dev and on_loopback):
                raise AdmissionError(authority_error.reason, str(authority_error)) from None
        # Dev mode, one machine: a peer that certified itself is trusted, loudly.
        try:
            return verify_certificate(signed, signed_issuer(signed), self._zones)
        except CertificateError as e:
            raise AdmissionError(e.reason, str(e)) from None

    def _hello_member(self, node_id: str) -> None:
        endpoint = self._endpoint_of(node_id)
        if endpoint is None or self.cut_off(node_id):
            return
        self._maybe_hello(node_id, endpoint)

    def _maybe_hello(
        self, node_id: str, endpoint: str, *, slots: asyncio.Semaphore | None = None
    ) -> bool:
        """Start a HELLO loop to the peer unless one runs or its backoff is not over.

        `slots`: the loop's budget (mDNS candidates'), acquired by the caller; the loop
        releases it when it ends. True if a loop started (else the caller releases)."""
        if self.cut_off(node_id):
            return False
        backoff = self._hello_backoff.get(node_id)
        if backoff is None:
            backoff = self._hello_backoff[node_id] = _Backoff()
            self._bound_hello_backoffs()
        backoff.endpoint = endpoint  # a running retry loop takes the newest one
        now = time.monotonic()
        # One loop per peer, even if its backoff was dropped (admitted, reaped) meanwhile.
        if now < backoff.next_at or node_id in self._hello_loops or self._stopped:
            return False
        backoff.take(now)
        self._hello_loops.add(node_id)
        self._spawn(
            self._hello_with_retries(backoff, node_id, slots),
            f"mesh-hello-{node_id[-6:]}",
            helper=True,
        )
        return True

    def _bound_hello_backoffs(self) -> None:
        """Forget the oldest backoff of a peer with no loop running, beyond the cap."""
        if len(self._hello_backoff) <= MAX_HELLO_BACKOFFS:
            return
        idle = next((k for k in self._hello_backoff if k not in self._hello_loops), None)
        if idle is not None:
            del self._hello_backoff[idle]

    async def _hello_with_retries(
        self, backoff: _Backoff, node_id: str, slots: asyncio.Semaphore | None
    ) -> None:
        """HELLO until admitted: `HELLO_RETRIES` more times on the backoff, and in any
        case until one try was made after our own replay floor passed (right after a
        crash we refuse every answer until then)."""
        try:
            tries = 0
            while True:
                floor_passed = wall_clock_ms() > self._opener.guard.floor_ms
                # An mDNS loop is itself one of a bounded few: it needs no shared slot,
                # so a flood of candidates cannot hold up HELLOs to seeds and members.
                in_flight = self._hello_slots if slots is None else contextlib.nullcontext()
                outcome = await self._hello(node_id, backoff.endpoint, in_flight)
                tries += 1
                if outcome != "retry" or (tries > HELLO_RETRIES and floor_passed):
                    return
                await asyncio.sleep(max(0.0, backoff.next_at - time.monotonic()))
                if node_id in self.peers or self.cut_off(node_id) or self._stopped:
                    return
                backoff.take(time.monotonic())
        finally:
            self._hello_loops.discard(node_id)
            if slots is not None:
                slots.release()

    async def _hello(
        self, node_id: str, endpoint: str, in_flight: contextlib.AbstractAsyncContextManager[Any]
    ) -> str:
        """Say HELLO to `endpoint`: "admitted", "refused" (for good) or "retry"."""
        try:
            public_key = _public_key(node_id)
        except MeshError:
            return "refused"
        async with in_flight:
            try:
                return await self._hello_once(node_id, public_key, endpoint)
            finally:
                if node_id not in self.peers and self._transport is not None:
                    # Not admitted: no connection stays open to what may be a fake.
                    self._transport.forget(public_key)

    async def _hello_once(self, node_id: str, public_key: bytes, endpoint: str) -> str:
        wire = self._sealer.seal(MsgType.HELLO, self._hello_payload(), recipient=public_key)
        self.stats.hellos_sent += 1
        try:
            response = await self.transport.request(
                public_key,
                endpoint,
                wire,
                timeout_s=HELLO_TIMEOUT_S,
                priority=Priority.REQUEST,
                candidate=node_id not in self.peers,
            )
        except RemoteError as e:
            log.debug("hello to %s at %s refused: %s", node_id, endpoint, e)
            return "retry" if e.reason in TRANSIENT_HELLO_REFUSALS else "refused"
        except TransportError as e:
            log.debug("hello to %s at %s failed: %s", node_id, endpoint, e)
            return "retry"
        envelope = self._open(_curve_key(public_key), response)
        if envelope is None or envelope.type != MsgType.HELLO or envelope.sender != public_key:
            self.stats.refused["bad_hello_response"] += 1
            return "retry"
        try:
            # The answer came back over the connection we dialled: that host is real.
            self._admit(envelope, endpoint_host(endpoint))
        except AdmissionError:
            return "refused"  # its certificate or mesh is not for us
        return "admitted"

    async def _connect_candidates(self) -> None:
        discovery = self._discovery
        assert discovery is not None
        async for candidate in discovery.updates():
            if candidate.node_id is None:
                continue  # a seed without an id: see _offer_seeds
            if candidate.node_id in self.peers or self.cut_off(candidate.node_id):
                continue
            endpoint = f"tcp://{candidate.address}"
            if candidate.source == "mdns":
                self._queue_mdns_candidate(candidate.node_id, endpoint)
            else:
                self._maybe_hello(candidate.node_id, endpoint)

    def _queue_mdns_candidate(self, node_id: str, endpoint: str) -> None:
        backlog = self._mdns_backlog
        backlog[node_id] = endpoint
        backlog.move_to_end(node_id)
        while len(backlog) > MAX_MDNS_BACKLOG:
            backlog.popitem(last=False)
            self.stats.dropped["mdns_backlog_full"] += 1
        self._mdns_backlog_ready.set()

    async def _connect_mdns_candidates(self) -> None:
        """Take mDNS candidates from their backlog into HELLO loops, within their budget."""
        backlog = self._mdns_backlog
        while True:
            while not backlog:
                self._mdns_backlog_ready.clear()
                await self._mdns_backlog_ready.wait()
            await self._mdns_slots.acquire()
            started = False
            if backlog:  # its candidates may have left while we waited for a slot
                node_id, endpoint = backlog.popitem(last=False)
                if node_id not in self.peers and not self.cut_off(node_id):
                    started = self._maybe_hello(node_id, endpoint, slots=self._mdns_slots)
            if not started:
                self._mdns_slots.release()
                continue
            await asyncio.sleep(MDNS_HELLO_INTERVAL_S)

    async def _offer_seeds(self) -> None:
        discovery = self._discovery
        assert discovery is not None
        while True:
            for seed in self._seeds.seeds():
                if seed.node_id is None:
                    if not self._known_at(seed.host, seed.mesh_port):
                        self._spawn(
                            self._whois_seed(seed), f"mesh-whois-{seed.address}", helper=True
                        )
                elif seed.node_id not in self.peers:
                    self._maybe_hello(seed.node_id, f"tcp://{seed.address}")
            await asyncio.sleep(SEED_REOFFER_INTERVAL_S * random.uniform(0.8, 1.2))

    def _known_at(self, host: str, port: int) -> bool:
        return any(p.meta.host == host and p.meta.mesh_port == port for p in self.peers.values())

    async def _whois_seed(self, seed: Candidate) -> None:
        """Learn which node answers at a plain HOST:PORT seed, then say HELLO to it."""
        try:
            reply = await whois(seed.host, seed.mesh_port, timeout_s=WHOIS_TIMEOUT_S)
        except WhoisError as e:
            log.debug("whois %s: %s", seed.address, e)
            return
        try:
            envelope = self._opener.open(reply.payload)
        except EnvelopeError as e:
            log.debug("whois %s: bad answer: %s", seed.address, e)
            return
        if envelope.type != MsgType.HELLO or envelope.msg_id != reply.nonce:
            self.stats.refused["bad_whois_answer"] += 1
            return
        # The CURVE handshake in the HELLO below proves the answerer holds this key.
        self._maybe_hello(envelope.sender_id, f"tcp://{seed.address}")

    # -- fault injection (tests only: the node offers it only with node.debug_api) -----

    def block(self, node_id: str) -> None:
        self.blocked.add(node_id)
        if self._transport is not None and node_id in self.peers:
            self._transport.forget(self.peers[node_id].public_key)

    def unblock(self, node_id: str) -> None:
        self.blocked.discard(node_id)


def _membership_config(
    preset: str, dead_reap_after_s: float, left_reap_after_s: float
) -> MembershipConfig:
    """The preset's timing; reap times replace the preset's where given (> 0)."""
    config = MEMBERSHIP_PRESETS[preset]()
    if dead_reap_after_s > 0:
        config = dataclasses.replace(config, dead_reap_after_s=dead_reap_after_s)
    if left_reap_after_s > 0:
        config = dataclasses.replace(config, left_reap_after_s=left_reap_after_s)
    return config


def signed_issuer(signed: SignedCertificate) -> bytes:
    """The issuer key a signed certificate names (for dev-mode self-certificates)."""
    return peek_certificate(signed).issuer_public_key


__all__ = [
    "MESH_PROTOCOL_VERSION",
    "MeshService",
    "Peer",
    "PeerMeta",
    "encode_certificate",
    "parent_node_id",
]


def parent_node_id(certificate: Certificate) -> str | None:
    """The node id of the parent VSM that delegated `certificate`, if any."""
    if certificate.depth == 0:
        return None
    return node_id_from_public_key(certificate.issuer_public_key)
