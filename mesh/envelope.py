"""The signed aMCP envelope (SPEC §4): wire codec, sealing and opening.

Wire layout (version 1)::

    signature(64) | wire_version(1) | sender_public_key(32) | body (msgpack array)

The Ed25519 signature covers every byte after it: exactly the bytes on the wire, never a
re-encoding. This is libsodium's "combined" form, so sealing is one `crypto_sign` call and
opening one `crypto_sign_open` call on the received buffer with the raw public key taken
from the header, no per-key objects. The sender's zone and roles come from its
certificate (checked by the layer above), never from the envelope.

Opening checks, in this order, each with its own rejection reason: size cap (before
anything is decoded) -> framing and wire version -> signature (constant time, libsodium)
-> body decoding -> recipient -> freshness -> replay (the guard records only messages
that passed everything else).
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable
from typing import Annotated, Final

import msgspec
import nacl.bindings
import nacl.exceptions
from msgspec import Meta

from vsmcp.mesh.errors import (
    BadSignatureError,
    BadVersionError,
    EnvelopeError,
    MalformedEnvelopeError,
    OversizeEnvelopeError,
    WrongRecipientError,
)
from vsmcp.mesh.identity import NodeKey, node_id_from_public_key
from vsmcp.mesh.replay import ReplayGuard

WIRE_VERSION: Final = 1
SIGNATURE_BYTES: Final = 64
PUBLIC_KEY_BYTES: Final = 32
MSG_ID_BYTES: Final = 16
HEADER_BYTES: Final = SIGNATURE_BYTES + 1 + PUBLIC_KEY_BYTES
MAX_ENVELOPE_BYTES: Final = 1 << 20
MAX_CONTEXT_TEXT_CHARS: Final = 1024
MAX_CAUSALITY_ENTRIES: Final = 64
MAX_CAUSALITY_ENTRY_BYTES: Final = 64

# Every reason `Opener.rejected` may count (the `reason` of each EnvelopeError subclass).
REJECT_REASONS: Final = (
    "oversize",
    "malformed",
    "bad_version",
    "bad_signature",
    "recipient",
    "stale",
    "future",
    "replay",
    "too_old",
    "below_floor",
)


class MsgType(enum.IntEnum):
    """Wire tags of envelope types. Append-only: never renumber or reuse a value."""

    INVOKE = 1
    RESULT = 2
    ERROR = 3
    PROGRESS = 4
    CANCEL = 5
    ANNOUNCE = 6
    SYNC = 7
    HEARTBEAT = 8
    HELLO = 9
    GOSSIP = 10
    PROBE = 11
    PROBE_ACK = 12
    VERDICT = 13
    MEMBERSHIP = 14  # a mesh.membership message (probe, ack, gossip, verdict, ...)
    CALLS = 15  # requests (and cancels) to a peer, coalesced (node.mesh_calls)
    REPLIES = 16  # answers to CALLS items, coalesced
    AUDIT_HEAD = 17  # signed audit heads: the sender's, the recipient's (node.audit_anchor)
    WASM_CHUNK = 18  # a piece of a published WASM module, by hash (node.wasmdist)
    CLIENT_REQUEST = 21  # a provider asks a call's client, through its entry node (node.routing)


_PublicKey = Annotated[bytes, Meta(min_length=PUBLIC_KEY_BYTES, max_length=PUBLIC_KEY_BYTES)]
_ContextText = Annotated[str, Meta(max_length=MAX_CONTEXT_TEXT_CHARS)]
_CausalityEntry = Annotated[bytes, Meta(max_length=MAX_CAUSALITY_ENTRY_BYTES)]


class Context(msgspec.Struct, array_like=True, frozen=True, omit_defaults=True):
    """Semantic context of a message. Trailing defaults are omitted on the wire."""

    semantic_id: _ContextText = ""
    origin: _ContextText = ""
    intent: _ContextText = ""
    priority: int = 0
    causality: Annotated[tuple[_CausalityEntry, ...], Meta(max_length=MAX_CAUSALITY_ENTRIES)] = ()
    zone: _ContextText = ""
    trace_id: Annotated[bytes, Meta(max_length=MAX_CAUSALITY_ENTRY_BYTES)] = b""


EMPTY_CONTEXT: Final = Context()


class _Body(msgspec.Struct, array_like=True, frozen=True):
    """The signed body after the fixed header (version and sender live in the header)."""

    type: MsgType
    msg_id: Annotated[bytes, Meta(min_length=MSG_ID_BYTES, max_length=MSG_ID_BYTES)]
    recipient: (
        Annotated[bytes, Meta(min_length=PUBLIC_KEY_BYTES, max_length=PUBLIC_KEY_BYTES)] | None
    )
    seq: Annotated[int, Meta(ge=0)]
    ts_ms: Annotated[int, Meta(ge=0)]
    context: Context
    payload: bytes


class Envelope(msgspec.Struct, frozen=True):
    """An opened (authenticated, fresh, not replayed) envelope."""

    version: int
    type: MsgType
    msg_id: bytes
    sender: bytes
    recipient: bytes | None
    seq: int
    ts_ms: int
    context: Context
    payload: bytes

    @property
    def sender_id(self) -> str:
        return node_id_from_public_key(self.sender)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _wall_clock_us() -> int:
    return time.time_ns() // 1_000


class Sealer:
    """Builds signed envelopes for one node key. Use one Sealer per key per process.

    Sequence numbers start at max(wall clock in microseconds, `seq_start`) and increase by
    one per envelope, so they keep rising across the sender's restarts (persist
    `last_seq + 1` and pass it as `seq_start` to survive a clock stepped backwards).
    """

    __slots__ = ("_clock_ms", "_encode", "_header", "_id_prefix", "_max_size", "_seq", "_sign")

    def __init__(
        self,
        key: NodeKey,
        *,
        seq_start: int | None = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
        max_size: int = MAX_ENVELOPE_BYTES,
    ) -> None:
        first = max(_wall_clock_us(), seq_start or 0)
        self._seq = first - 1
        self._sign = key.sign
        self._header = bytes([WIRE_VERSION]) + key.public_key
        self._encode = msgspec.msgpack.Encoder().encode
        self._clock_ms = clock_ms
        self._max_size = max_size
        # msg_id = random per-sealer prefix || seq: unique without a syscall per message.
        self._id_prefix = os.urandom(MSG_ID_BYTES - 8)

    @property
    def max_size(self) -> int:
        """The largest envelope this sealer produces, in bytes."""
        return self._max_size

    @property
    def last_seq(self) -> int:
        """The sequence number of the last sealed envelope (persist it as a hint)."""
        return self._seq

    def seal(
        self,
        type: MsgType,
        payload: bytes,
        *,
        recipient: bytes | None = None,
        context: Context | None = None,
        msg_id: bytes | None = None,
    ) -> bytes:
        """Encode and sign one envelope; returns the wire bytes."""
        if recipient is not None and len(recipient) != PUBLIC_KEY_BYTES:
            raise ValueError("recipient must be a 32-byte public key")
        self._seq = seq = self._seq + 1
        if msg_id is None:
            msg_id = self._id_prefix + seq.to_bytes(8, "big")
        elif len(msg_id) != MSG_ID_BYTES:
            raise ValueError("msg_id must be 16 bytes")
        body = self._encode(
            _Body(
                type,
                msg_id,
                recipient,
                seq,
                self._clock_ms(),
                EMPTY_CONTEXT if context is None else context,
                payload,
            )
        )
        if len(body) + HEADER_BYTES > self._max_size:
            raise OversizeEnvelopeError(f"envelope of {len(body) + HEADER_BYTES} bytes")
        signed: bytes = self._sign(self._header + body)
        return signed


class Opener:
    """Authenticates and de-duplicates incoming envelopes. Not thread-safe (one per loop).

    `accepted` and `rejected[reason]` are plain counters for the metrics exporter.
    """

    __slots__ = (
        "_clock_ms",
        "_decode",
        "_guard",
        "_local_public_key",
        "_max_size",
        "accepted",
        "rejected",
    )

    def __init__(
        self,
        guard: ReplayGuard,
        *,
        max_size: int = MAX_ENVELOPE_BYTES,
        clock_ms: Callable[[], int] = wall_clock_ms,
        local_public_key: bytes | None = None,
    ) -> None:
        self._guard = guard
        self._max_size = max_size
        self._clock_ms = clock_ms
        self._local_public_key = local_public_key
        self._decode = msgspec.msgpack.Decoder(_Body).decode
        self.accepted = 0
        self.rejected: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)

    @property
    def guard(self) -> ReplayGuard:
        return self._guard

    def open(self, wire: bytes) -> Envelope:
        """Return the envelope or raise an `EnvelopeError` subclass (counted by reason)."""
        try:
            envelope = self._open(wire)
        except EnvelopeError as exc:
            rejected = self.rejected
            rejected[exc.reason] = rejected.get(exc.reason, 0) + 1
            raise
        self.accepted += 1
        return envelope

    def _open(self, wire: bytes) -> Envelope:
        size = len(wire)
        if size > self._max_size:
            raise OversizeEnvelopeError(f"envelope of {size} bytes > {self._max_size}")
        if size <= HEADER_BYTES:
            raise MalformedEnvelopeError("envelope shorter than its header")
        if wire[SIGNATURE_BYTES] != WIRE_VERSION:
            raise BadVersionError(f"wire version {wire[SIGNATURE_BYTES]}")
        sender = wire[SIGNATURE_BYTES + 1 : HEADER_BYTES]
        try:
            signed = nacl.bindings.crypto_sign_open(wire, sender)
        except nacl.exceptions.CryptoError:
            raise BadSignatureError("signature does not verify") from None
        try:
            body = self._decode(memoryview(signed)[1 + PUBLIC_KEY_BYTES :])
        except msgspec.DecodeError as exc:
            raise MalformedEnvelopeError(f"undecodable body: {exc}") from None
        recipient = body.recipient
        if (
            recipient is not None
            and self._local_public_key is not None
            and recipient != self._local_public_key
        ):
            raise WrongRecipientError("envelope addressed to another node")
        self._guard.check(sender, body.seq, body.ts_ms, self._clock_ms())
        return Envelope(
            WIRE_VERSION,
            body.type,
            body.msg_id,
            sender,
            recipient,
            body.seq,
            body.ts_ms,
            body.context,
            body.payload,
        )
