"""Peer discovery: candidate sources (mDNS, static seeds, gossip) and their aggregator.

Discovery only produces *candidates*. A candidate joins the mesh only after the layer
above verifies its signed hello and certificate, so nothing here is trusted: every
value read from the network is size-capped and validated, malformed input is counted
and dropped.

Seeds have no verified identity: they are `Candidate`s with `source="seed"`, no
fingerprint and no protocol version, and a node id only when written
`node_id@host:port`.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, Any, Self

import msgspec

from vsmcp.mesh._discovery_model import (
    MAX_FINGERPRINT_HEX_CHARS,
    MAX_HOSTNAME_CHARS,
    MAX_NODE_ID_CHARS,
    Candidate,
    CandidateSource,
    DiscoveryError,
    InvalidCandidateError,
    format_address,
    validate_host,
)
from vsmcp.mesh._zeroconf_sources import prefer_sources as prefer_zeroconf_sources

if TYPE_CHECKING:
    from vsmcp.mesh._discovery_mdns import (
        MAX_TXT_BYTES,
        MAX_TXT_VALUE_BYTES,
        SERVICE_TYPE,
        IpVersion,
        MdnsDiscovery,
        MdnsError,
        candidate_from_service_info,
        instance_label,
    )


def __getattr__(name: str) -> Any:
    """The mDNS names (`_discovery_mdns.__all__`), imported at the first use of one.

    They load python-zeroconf (≈3.4 MiB resident): a node started without mDNS
    (`--no-mdns`, as most tests and benchmarks) never imports it.
    """
    if not name.startswith("_"):
        from vsmcp.mesh import _discovery_mdns

        if name in _discovery_mdns.__all__:
            return getattr(_discovery_mdns, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MAX_CANDIDATES",
    "MAX_PEER_LIST_BYTES",
    "MAX_PEER_LIST_ENTRIES",
    "MAX_TXT_BYTES",
    "MAX_TXT_VALUE_BYTES",
    "PEER_LIST_VERSION",
    "SERVICE_TYPE",
    "Candidate",
    "CandidateSource",
    "Discovery",
    "DiscoveryError",
    "InvalidCandidateError",
    "InvalidSeedError",
    "IpVersion",
    "MdnsDiscovery",
    "MdnsError",
    "PeerListError",
    "SeedDiscovery",
    "candidate_from_service_info",
    "decode_peer_list",
    "encode_peer_list",
    "instance_label",
    "parse_seed",
    "parse_seeds",
    "prefer_zeroconf_sources",
]

MAX_SEED_CHARS = MAX_NODE_ID_CHARS + 1 + MAX_HOSTNAME_CHARS + 2 + 6
MAX_CANDIDATES = 4096


# -- static seeds ---------------------------------------------------------------


class InvalidSeedError(DiscoveryError):
    """A seed entry is not `[node_id@]host:port`; the message names the entry and why."""

    def __init__(self, seed: str, why: str, reason: str) -> None:
        super().__init__(f"invalid seed {seed[:80]!r}: {why}", reason)
        self.seed = seed


def _split_host_port(seed: str, hostport: str) -> tuple[str, str]:
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            raise InvalidSeedError(seed, "unclosed '[' around IPv6 address", "bad_host")
        host, rest = hostport[1:close], hostport[close + 1 :]
        if not rest.startswith(":"):
            raise InvalidSeedError(seed, "missing port (expected [ipv6]:port)", "missing_port")
        return host, rest[1:]
    if hostport.count(":") > 1:
        raise InvalidSeedError(seed, "IPv6 address must be in brackets: [addr]:port", "bad_host")
    host, sep, port = hostport.partition(":")
    if not sep:
        raise InvalidSeedError(seed, "missing port (expected host:port)", "missing_port")
    return host, port


def parse_seed(seed: str) -> Candidate:
    """Parse `host:port`, `[ipv6]:port` or `node_id@host:port` into a seed candidate."""
    if len(seed) > MAX_SEED_CHARS:
        raise InvalidSeedError(seed, f"longer than {MAX_SEED_CHARS} characters", "too_long")
    text = seed.strip()
    if not text:
        raise InvalidSeedError(seed, "empty entry", "empty")
    node_id: str | None = None
    if "@" in text:
        node_id, _, text = text.partition("@")
        if not node_id:
            raise InvalidSeedError(seed, "empty node id before '@'", "bad_node_id")
    host, port_text = _split_host_port(seed, text)
    if not host:
        raise InvalidSeedError(seed, "empty host", "empty_host")
    if not port_text:
        raise InvalidSeedError(seed, "missing port after ':'", "missing_port")
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise InvalidSeedError(seed, f"port {port_text!r} is not a number", "bad_port")
    port = int(port_text)
    if not 0 < port <= 0xFFFF:
        raise InvalidSeedError(seed, f"port {port} out of range 1..65535", "bad_port")
    try:
        return Candidate(node_id=node_id, host=host, mesh_port=port, source="seed")
    except InvalidCandidateError as exc:
        raise InvalidSeedError(seed, str(exc), exc.reason) from None


def parse_seeds(seeds: Iterable[str]) -> list[Candidate]:
    """Parse every entry (raising on the first bad one), dropping duplicate addresses."""
    out: dict[str, Candidate] = {}
    for seed in seeds:
        candidate = parse_seed(seed)
        out.setdefault(candidate.address, candidate)
    return list(out.values())


class SeedDiscovery:
    """Static seed addresses from configuration, validated up front.

    Re-offering them (often until a peer at that address is known, then rarely) is
    the caller's policy; `Discovery.offer` ignores seeds whose address already
    belongs to an identified candidate.
    """

    def __init__(self, seeds: Iterable[str]) -> None:
        self._seeds = parse_seeds(seeds)

    def seeds(self) -> list[Candidate]:
        return list(self._seeds)

    @staticmethod
    def parse_seed(seed: str) -> Candidate:
        return parse_seed(seed)


# -- gossip peer exchange codec ---------------------------------------------------

PEER_LIST_VERSION = 1
MAX_PEER_LIST_ENTRIES = 256
_MAX_ENTRY_BYTES = MAX_NODE_ID_CHARS + MAX_HOSTNAME_CHARS + MAX_FINGERPRINT_HEX_CHARS + 32
MAX_PEER_LIST_BYTES = 16 + MAX_PEER_LIST_ENTRIES * _MAX_ENTRY_BYTES


class PeerListError(DiscoveryError):
    """A peer-exchange payload is malformed, too large, or describes an invalid peer."""


class _WirePeer(msgspec.Struct, array_like=True, frozen=True):
    # array_like keeps entries small; trailing fields added later are ignored by
    # older decoders.
    node_id: Annotated[str, msgspec.Meta(max_length=MAX_NODE_ID_CHARS)]
    host: Annotated[str, msgspec.Meta(max_length=MAX_HOSTNAME_CHARS)]
    mesh_port: int
    http_port: int | None
    cert_fingerprint: Annotated[str, msgspec.Meta(max_length=MAX_FINGERPRINT_HEX_CHARS)]
    protocol_version: int


class _WirePeerList(msgspec.Struct, frozen=True):
    v: int
    peers: Annotated[list[_WirePeer], msgspec.Meta(max_length=MAX_PEER_LIST_ENTRIES)]


_peer_list_decoder = msgspec.msgpack.Decoder(_WirePeerList)
_encoder = msgspec.msgpack.Encoder()


def encode_peer_list(peers: Iterable[Candidate]) -> bytes:
    """Encode identified candidates (mdns or gossip) for peer exchange.

    Raises `PeerListError` for seed candidates (no verified identity to pass on) and
    for more than `MAX_PEER_LIST_ENTRIES` peers: pick which ones to send first.
    """
    wire: list[_WirePeer] = []
    for peer in peers:
        if peer.node_id is None or peer.cert_fingerprint is None or peer.protocol_version is None:
            raise PeerListError(f"cannot gossip unidentified peer {peer.address}", "unidentified")
        wire.append(
            _WirePeer(
                node_id=peer.node_id,
                host=peer.host,
                mesh_port=peer.mesh_port,
                http_port=peer.http_port,
                cert_fingerprint=peer.cert_fingerprint,
                protocol_version=peer.protocol_version,
            )
        )
        if len(wire) > MAX_PEER_LIST_ENTRIES:
            raise PeerListError(
                f"more than {MAX_PEER_LIST_ENTRIES} peers in one list", "too_many_peers"
            )
    return _encoder.encode(_WirePeerList(v=PEER_LIST_VERSION, peers=wire))


def decode_peer_list(data: bytes) -> list[Candidate]:
    """Decode and validate a peer-exchange payload into `gossip` candidates.

    Any malformed entry rejects the whole payload (a sender that produces one
    invalid entry is not trusted for the others). Raises `PeerListError`.
    """
    if len(data) > MAX_PEER_LIST_BYTES:
        raise PeerListError(f"payload of {len(data)} bytes exceeds cap", "too_large")
    try:
        decoded = _peer_list_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise PeerListError(f"invalid peer list: {exc}", "invalid") from None
    except msgspec.DecodeError as exc:
        raise PeerListError(f"undecodable peer list: {exc}", "undecodable") from None
    if decoded.v != PEER_LIST_VERSION:
        raise PeerListError(f"unsupported peer list version {decoded.v}", "bad_version")
    try:
        return [
            Candidate(
                node_id=p.node_id,
                host=p.host,
                mesh_port=p.mesh_port,
                http_port=p.http_port,
                cert_fingerprint=p.cert_fingerprint,
                protocol_version=p.protocol_version,
                source="gossip",
            )
            for p in decoded.peers
        ]
    except InvalidCandidateError as exc:
        raise PeerListError(f"invalid peer entry: {exc}", exc.reason) from None


# -- aggregator -------------------------------------------------------------------

# Direct observation beats hearsay: a gossiped record never overrides an mDNS one.
_SOURCE_RANK: dict[CandidateSource, int] = {"seed": 0, "gossip": 1, "mdns": 2}
_Key = tuple[str, str]


def _key(candidate: Candidate) -> _Key:
    if candidate.source == "seed":
        return ("addr", candidate.address)
    assert candidate.node_id is not None
    return ("id", candidate.node_id)


class Discovery:
    """Merges candidate sources into one bounded, de-duplicated view.

    Identified candidates (mdns, gossip) are keyed by node id, seeds by `host:port`;
    a seed whose address belongs to an identified candidate is dropped. At most
    `max_candidates` are remembered (gossip entries evicted first, then the least
    recently updated). New or changed candidates are delivered to `on_change`
    and to the `updates()` iterator; the iterator's backlog is coalesced per key, so
    it is bounded by `max_candidates` and always yields the latest value.

    Wire sources to it: `MdnsDiscovery(on_candidate=d.offer, on_lost=d.lost, ...)`,
    `d.offer_many(SeedDiscovery(...).seeds())`, `d.offer_peer_list(payload)`.
    """

    def __init__(
        self,
        *,
        self_node_id: str | None = None,
        max_candidates: int = MAX_CANDIDATES,
        on_change: Callable[[Candidate], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        if max_candidates < 1:
            raise ValueError("max_candidates must be positive")
        self._self_node_id = self_node_id
        self._max = max_candidates
        self._on_change = on_change
        self._on_lost = on_lost
        self._entries: collections.OrderedDict[_Key, Candidate] = collections.OrderedDict()
        self._owner_of_address: dict[str, str] = {}
        self._pending: collections.OrderedDict[_Key, None] = collections.OrderedDict()
        self._wakeup = asyncio.Event()
        self._closed = False
        self.evicted = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """End every `updates()` iterator. Idempotent."""
        self._closed = True
        self._wakeup.set()

    def __len__(self) -> int:
        return len(self._entries)

    def candidates(self) -> list[Candidate]:
        return list(self._entries.values())

    def get(self, node_id: str) -> Candidate | None:
        return self._entries.get(("id", node_id))

    def is_address_known(self, host: str, port: int) -> bool:
        """True when an identified candidate is remembered at `host:port`."""
        try:
            address = format_address(validate_host(host), port)
        except InvalidCandidateError:
            return False
        return address in self._owner_of_address

    def offer(self, candidate: Candidate) -> bool:
        """Remember a candidate; True when it is new or changed (and was announced)."""
        if self._closed or (
            candidate.node_id is not None and candidate.node_id == self._self_node_id
        ):
            return False
        if candidate.source == "seed" and candidate.address in self._owner_of_address:
            return False
        key = _key(candidate)
        previous = self._entries.get(key)
        if previous is not None:
            if _SOURCE_RANK[candidate.source] < _SOURCE_RANK[previous.source]:
                return False
            if previous.same_claims(candidate):
                if candidate.source != previous.source:
                    self._store(key, candidate, previous)
                return False
        elif len(self._entries) >= self._max:
            self._evict_one()
        self._store(key, candidate, previous)
        self._announce(key, candidate)
        return True

    def offer_many(self, candidates: Iterable[Candidate]) -> int:
        """Offer each; returns how many were new or changed."""
        return sum(self.offer(c) for c in candidates)

    def offer_peer_list(self, payload: bytes) -> int:
        """Decode a gossip payload and offer its peers. Raises `PeerListError`."""
        return self.offer_many(decode_peer_list(payload))

    def lost(self, node_id: str) -> None:
        """A source saw `node_id` leave: forget it so a return is announced again."""
        entry = self._entries.get(("id", node_id))
        if entry is not None:
            self._remove(("id", node_id), entry)
        if self._on_lost is not None:
            self._on_lost(node_id)

    async def updates(self) -> AsyncIterator[Candidate]:
        """New or changed candidates, latest value per key, until `close()`.

        Meant for a single consumer: concurrent iterators share one backlog.
        """
        while not self._closed:
            while self._pending:
                key, _ = self._pending.popitem(last=False)
                entry = self._entries.get(key)
                if entry is not None:
                    yield entry
                if self._closed:
                    return
            self._wakeup.clear()
            await self._wakeup.wait()

    # -- internals --

    def _store(self, key: _Key, candidate: Candidate, previous: Candidate | None) -> None:
        if previous is not None:
            self._unindex(previous)
        self._entries[key] = candidate
        self._entries.move_to_end(key)
        if candidate.source != "seed":
            assert candidate.node_id is not None
            self._owner_of_address[candidate.address] = candidate.node_id
            seed_key: _Key = ("addr", candidate.address)
            seed = self._entries.get(seed_key)
            if seed is not None:
                self._remove(seed_key, seed)

    def _remove(self, key: _Key, entry: Candidate) -> None:
        del self._entries[key]
        self._pending.pop(key, None)
        self._unindex(entry)

    def _unindex(self, entry: Candidate) -> None:
        if entry.source != "seed" and self._owner_of_address.get(entry.address) == entry.node_id:
            del self._owner_of_address[entry.address]

    def _evict_one(self) -> None:
        victim = next(
            (k for k, c in self._entries.items() if c.source == "gossip"),
            next(iter(self._entries)),
        )
        self._remove(victim, self._entries[victim])
        self.evicted += 1

    def _announce(self, key: _Key, candidate: Candidate) -> None:
        self._pending[key] = None
        self._pending.move_to_end(key)
        self._wakeup.set()
        if self._on_change is not None:
            self._on_change(candidate)
