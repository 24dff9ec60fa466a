"""Whois over UDP: learn who answers at a plain `HOST:PORT` seed before connecting to it.

CURVE needs the server's public key before the first byte, but operators also give seeds
as plain `HOST:PORT` (the TCP mesh port). A node therefore answers a tiny UDP "whois" on
the same port number (UDP and TCP port spaces are separate). The answer is whatever the
`respond` callback returns for the request's nonce: the node returns a signed envelope
holding its certificate and the nonce, so the answer is authenticated by its signature,
never by this channel. An impostor that answers gains nothing: it cannot pass the CURVE
handshake with the key it announced unless it holds that key.

Wire format (version 1; versioned and append-only: a later version only adds fields
after the ones below, which keep their offsets)

    request  = MAGIC_REQUEST  (8 bytes, b"VSMCPWHO")
             + version        (1 byte, 1)
             + nonce          (16 bytes, random per whois, the same for its retransmissions)
             + padding        (zero bytes up to exactly REQUEST_BYTES = 1200; ignored)
    response = MAGIC_RESPONSE (8 bytes, b"VSMCPWHR")
             + version        (1 byte, 1)
             + nonce          (16 bytes, copied from the request)
             + payload        (the callback's bytes, at most MAX_PAYLOAD_BYTES = 1175)

A responder answers only a datagram of exactly REQUEST_BYTES with its magic and a version
it speaks (1); a client accepts only a response of at most MAX_RESPONSE_BYTES with the
response magic, version 1 and its own nonce. Everything else is dropped (and counted by
the responder in `WhoisResponder.stats`).

Not a reflector
    A response is never larger than the request (REQUEST_BYTES is padded up to the
    response cap), so a spoofed source gains no amplification; a callback payload that
    would break this is not sent. Answers are rate limited by a global token bucket and a
    per-source one (an IPv4 address or an IPv6 /64; kept for at most `max_sources`
    sources, least recently seen evicted; the global bucket bounds the total when a
    spoofed flood churns that table).

The client accepts an answer from any source address: a responder bound to a wildcard
address may answer from another of its addresses, and the 128-bit nonce, not the source,
ties an answer to its request.

Reads are capped: both sides read at most one byte more than the largest valid datagram,
so a longer one is seen as truncated and dropped.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import ipaddress
import logging
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from vsmcp.mesh.addrinfo import getaddrinfo
from vsmcp.mesh.errors import MeshError
from vsmcp.mesh.service import Service

__all__ = [
    "HEADER_BYTES",
    "MAGIC_REQUEST",
    "MAGIC_RESPONSE",
    "MAX_PAYLOAD_BYTES",
    "MAX_RESPONSE_BYTES",
    "NONCE_BYTES",
    "REQUEST_BYTES",
    "WHOIS_VERSION",
    "MalformedWhoisError",
    "WhoisBindError",
    "WhoisError",
    "WhoisLimits",
    "WhoisReply",
    "WhoisResponder",
    "WhoisTimeoutError",
    "encode_request",
    "encode_response",
    "parse_request",
    "parse_response",
    "source_key",
    "whois",
]

log = logging.getLogger(__name__)

MAGIC_REQUEST = b"VSMCPWHO"
MAGIC_RESPONSE = b"VSMCPWHR"
WHOIS_VERSION = 1
NONCE_BYTES = 16
HEADER_BYTES = len(MAGIC_REQUEST) + 1 + NONCE_BYTES
REQUEST_BYTES = 1200
MAX_RESPONSE_BYTES = REQUEST_BYTES  # anti-amplification: never more than was asked
MAX_PAYLOAD_BYTES = MAX_RESPONSE_BYTES - HEADER_BYTES

DEFAULT_TIMEOUT_S = 1.0
DEFAULT_ATTEMPTS = 3
# Bounds the time one readiness callback spends on a flood before yielding to the loop.
MAX_DATAGRAMS_PER_WAKE = 64

_VERSION_OFFSET = len(MAGIC_REQUEST)
_NONCE_OFFSET = _VERSION_OFFSET + 1


# --- errors ---------------------------------------------------------------------------


class WhoisError(MeshError):
    """Base of every whois error; `reason` is the short machine label we count by."""

    reason: str = "whois"

    def __init__(self, message: str = "", *, reason: str | None = None) -> None:
        super().__init__(message or self.reason)
        if reason is not None:
            self.reason = reason


class WhoisBindError(WhoisError):
    """The responder cannot bind its UDP port (taken, no permission, bad address)."""

    reason = "bind"


class WhoisTimeoutError(WhoisError, TimeoutError):
    """No acceptable response arrived after every attempt."""

    reason = "timeout"


class MalformedWhoisError(WhoisError):
    """A datagram is not a valid request/response; `reason` is one of "size", "magic",
    "version", "nonce"."""

    reason = "malformed"


# --- codec (no I/O) -------------------------------------------------------------------


def encode_request(nonce: bytes) -> bytes:
    _check_nonce(nonce)
    header = MAGIC_REQUEST + bytes([WHOIS_VERSION]) + nonce
    return header + bytes(REQUEST_BYTES - len(header))


def parse_request(datagram: bytes) -> bytes:
    """The nonce of a valid request; raises `MalformedWhoisError` otherwise."""
    if len(datagram) != REQUEST_BYTES:
        raise MalformedWhoisError("request size", reason="size")
    if datagram[:_VERSION_OFFSET] != MAGIC_REQUEST:
        raise MalformedWhoisError("request magic", reason="magic")
    if datagram[_VERSION_OFFSET] != WHOIS_VERSION:
        raise MalformedWhoisError("request version", reason="version")
    return bytes(datagram[_NONCE_OFFSET:HEADER_BYTES])


def encode_response(nonce: bytes, payload: bytes) -> bytes:
    _check_nonce(nonce)
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MalformedWhoisError(
            f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}", reason="size"
        )
    return MAGIC_RESPONSE + bytes([WHOIS_VERSION]) + nonce + payload


def parse_response(datagram: bytes, nonce: bytes) -> bytes:
    """The payload of a valid response to `nonce`; raises `MalformedWhoisError` otherwise."""
    if not HEADER_BYTES <= len(datagram) <= MAX_RESPONSE_BYTES:
        raise MalformedWhoisError("response size", reason="size")
    if datagram[:_VERSION_OFFSET] != MAGIC_RESPONSE:
        raise MalformedWhoisError("response magic", reason="magic")
    if datagram[_VERSION_OFFSET] != WHOIS_VERSION:
        raise MalformedWhoisError("response version", reason="version")
    if not secrets.compare_digest(datagram[_NONCE_OFFSET:HEADER_BYTES], nonce):
        raise MalformedWhoisError("response nonce", reason="nonce")
    return bytes(datagram[HEADER_BYTES:])


def _check_nonce(nonce: bytes) -> None:
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")


# --- rate limiting --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WhoisLimits:
    """Answer rate limits of a responder (answers per second and bucket depth)."""

    global_rate_per_s: float = 200.0
    global_burst: int = 50
    source_rate_per_s: float = 5.0
    source_burst: int = 5
    max_sources: int = 4096

    def __post_init__(self) -> None:
        if self.global_rate_per_s < 0 or self.source_rate_per_s < 0:
            raise ValueError("rates must not be negative")
        if self.global_burst < 1 or self.source_burst < 1 or self.max_sources < 1:
            raise ValueError("bursts and max_sources must be positive")


class _TokenBucket:
    __slots__ = ("_burst", "_last", "_rate", "tokens")

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self.tokens = float(burst)
        self._last = now

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._last)
        self._last = now
        self.tokens = min(self._burst, self.tokens + elapsed * self._rate)


# --- responder ------------------------------------------------------------------------


class WhoisResponder(Service):
    """Answers whois requests on UDP (host, port) with `respond(nonce)`'s bytes.

    `respond` is called inline on the receive path (keep it fast: one signature); it
    returns the payload, or None for no answer. `stats` counts every datagram's fate:
    "answered", or the drop reason: "size", "magic", "version" (malformed),
    "rate_limited_source", "rate_limited_global", "no_answer", "response_too_large",
    "callback_error", "send_error", "receive_error".
    """

    def __init__(
        self,
        host: str,
        port: int,
        respond: Callable[[bytes], bytes | None],
        *,
        limits: WhoisLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port out of range: {port}")
        self._host = host
        self._requested_port = port
        self._respond = respond
        self._limits = limits if limits is not None else WhoisLimits()
        self._clock = clock
        self.stats: collections.Counter[str] = collections.Counter()
        self._global = _TokenBucket(
            self._limits.global_rate_per_s, self._limits.global_burst, clock()
        )
        self._sources: collections.OrderedDict[str, _TokenBucket] = collections.OrderedDict()
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port: int | None = None

    # -- lifecycle -------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._sock is not None

    @property
    def port(self) -> int:
        """The bound UDP port (useful when constructed with port 0)."""
        if self._port is None:
            raise WhoisError("whois responder is not running", reason="closed")
        return self._port

    async def start(self) -> None:
        """Bind and start answering. Idempotent; raises `WhoisBindError` if it cannot bind."""
        if self._sock is not None:
            return
        loop = asyncio.get_running_loop()
        where = f"{self._host}:{self._requested_port}"
        try:
            infos = await getaddrinfo(
                self._host, self._requested_port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
            )
        except OSError as exc:
            raise WhoisBindError(f"whois: cannot resolve UDP {where}: {exc}") from exc
        if self._sock is not None:  # a concurrent start() won while we resolved
            return
        family, _, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM, proto)
        try:
            sock.setblocking(False)
            sock.bind(sockaddr)
        except OSError as exc:
            sock.close()
            taken = " (port already in use)" if exc.errno == errno.EADDRINUSE else ""
            raise WhoisBindError(f"whois: cannot bind UDP {where}{taken}: {exc}") from exc
        self._port = int(sock.getsockname()[1])
        self._sock = sock
        self._loop = loop
        loop.add_reader(sock.fileno(), self._on_readable)

    async def stop(self) -> None:
        """Stop answering and free the port. Idempotent."""
        sock, loop = self._sock, self._loop
        self._sock = self._loop = None
        self._port = None
        if sock is None or loop is None:
            return
        loop.remove_reader(sock.fileno())
        sock.close()

    # -- receive path ----------------------------------------------------------------

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(MAX_DATAGRAMS_PER_WAKE):
            try:
                datagram, address = sock.recvfrom(REQUEST_BYTES + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # An ICMP error for an earlier answer surfaces here; the next read goes on.
                self.stats["receive_error"] += 1
                continue
            response = self.handle_datagram(datagram, str(address[0]))
            if response is None:
                continue
            try:
                sock.sendto(response, address)
            except OSError:
                # Send buffer full or route gone: lost like any datagram, the client retries.
                self.stats["send_error"] += 1
                continue
            self.stats["answered"] += 1

    def handle_datagram(self, datagram: bytes, source_host: str) -> bytes | None:
        """The response to send back for one datagram from `source_host`, or None.

        No I/O; never raises for any input. Every drop is counted in `stats` here;
        "answered" is counted by the receive path once the response is sent."""
        try:
            nonce = parse_request(datagram)
        except MalformedWhoisError as exc:
            self.stats[exc.reason] += 1
            return None
        if not self._take_token(source_host):
            return None
        try:
            payload = self._respond(nonce)
        except Exception:  # top-level: a failing callback drops this answer, never the port
            log.exception("whois respond callback failed")
            self.stats["callback_error"] += 1
            return None
        if payload is None:
            self.stats["no_answer"] += 1
            return None
        if len(payload) > MAX_PAYLOAD_BYTES:
            if self.stats["response_too_large"] == 0:
                log.warning(
                    "whois payload of %d bytes exceeds %d: not sent (anti-amplification)",
                    len(payload),
                    MAX_PAYLOAD_BYTES,
                )
            self.stats["response_too_large"] += 1
            return None
        return encode_response(nonce, payload)

    def _take_token(self, source_host: str) -> bool:
        """Spend one answer from both buckets, or none (counting which one refused)."""
        now = self._clock()
        source = self._source_bucket(source_host, now)
        source.refill(now)
        if source.tokens < 1.0:
            self.stats["rate_limited_source"] += 1
            return False
        self._global.refill(now)
        if self._global.tokens < 1.0:
            self.stats["rate_limited_global"] += 1
            return False
        source.tokens -= 1.0
        self._global.tokens -= 1.0
        return True

    def _source_bucket(self, source_host: str, now: float) -> _TokenBucket:
        key = source_key(source_host)
        bucket = self._sources.get(key)
        if bucket is not None:
            self._sources.move_to_end(key)
            return bucket
        if len(self._sources) >= self._limits.max_sources:
            self._sources.popitem(last=False)
        bucket = _TokenBucket(self._limits.source_rate_per_s, self._limits.source_burst, now)
        self._sources[key] = bucket
        return bucket


def source_key(host: str) -> str:
    """The rate limiting key of a source address: an IPv4 address as is, an IPv6 address
    by its /64 (one host usually owns a whole /64) and an IPv4-mapped one as IPv4."""
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.partition("%")[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return f"{int(address) >> 64:016x}/64"


# --- client ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WhoisReply:
    """An answer to our whois: `payload` is unauthenticated until the caller verifies it
    (a signed envelope that must carry `nonce`)."""

    nonce: bytes
    payload: bytes


async def whois(
    host: str,
    port: int,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    attempts: int = DEFAULT_ATTEMPTS,
) -> WhoisReply:
    """Ask who answers on UDP `host:port`; the first response carrying our fresh nonce wins.

    The request is retransmitted (same nonce) after each `timeout_s` without an acceptable
    response, `attempts` times in all; raises `WhoisTimeoutError` after the last, or
    `WhoisError` (reason "resolve") when `host` does not resolve; the first address
    `getaddrinfo` gives is used."""
    if timeout_s <= 0:
        raise ValueError("timeout_s must be positive")
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    loop = asyncio.get_running_loop()
    try:
        infos = await getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise WhoisError(f"whois: cannot resolve {host}:{port}: {exc}", reason="resolve") from exc
    family, _, proto, _, sockaddr = infos[0]
    nonce = secrets.token_bytes(NONCE_BYTES)
    request = encode_request(nonce)
    # Not connected: a responder bound to a wildcard address may answer from another of
    # its addresses. The 128-bit nonce, not the source, tells our answer apart.
    with socket.socket(family, socket.SOCK_DGRAM, proto) as sock:
        sock.setblocking(False)
        last_error: OSError | None = None
        for _ in range(attempts):
            try:
                sock.sendto(request, sockaddr)
            except OSError as exc:  # no route, buffer full: a lost attempt like any other
                last_error = exc
            payload = await _receive_reply(loop, sock, nonce, loop.time() + timeout_s)
            if payload is not None:
                return WhoisReply(nonce=nonce, payload=payload)
    detail = f" (last error: {last_error})" if last_error is not None else ""
    raise WhoisTimeoutError(
        f"whois: no answer from {host}:{port} after {attempts} x {timeout_s} s{detail}"
    )


async def _receive_reply(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, nonce: bytes, deadline: float
) -> bytes | None:
    """The payload of the first acceptable response before `deadline`, else None."""
    while (remaining := deadline - loop.time()) > 0:
        try:
            async with asyncio.timeout(remaining):
                datagram = await loop.sock_recv(sock, MAX_RESPONSE_BYTES + 1)
        except TimeoutError:
            return None
        except OSError:
            return None  # this attempt is lost; the next one sends again
        try:
            return parse_response(datagram, nonce)
        except MalformedWhoisError:
            continue
    return None
