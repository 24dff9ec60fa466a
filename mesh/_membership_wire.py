"""Membership wire format: msgspec Structs <-> msgpack bytes, no I/O.

Every message is a msgpack array whose first element is an integer tag (append-only:
a new message is a new number, never a reuse). Gossip items are a second tagged
union carried inside messages. Everything is size-capped at decode time: the whole
message (`MAX_MESSAGE_BYTES`), ids, metadata, signatures, list lengths and integer
ranges. `decode` raises `MembershipDecodeError` (a `MeshError`) on anything else.

Signed payloads use a domain-separated canonical msgpack encoding
(`alive_payload`, `observation_payload`, `left_payload`), so a signature made for
one purpose can never be replayed as another.
"""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from vsmcp.mesh.errors import MeshError

WIRE_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
MAX_ID_CHARS = 128
MAX_META_BYTES = 512
MAX_SIGNATURE_BYTES = 128
MAX_GOSSIP_ITEMS = 16
MAX_OBSERVATIONS = 8
MAX_STATE_ENTRIES = 512
MAX_INCARNATION = 2**63 - 1
MAX_SEQ = 2**63 - 1

MemberId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)]
Incarnation = Annotated[int, msgspec.Meta(ge=0, le=MAX_INCARNATION)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
MetaBytes = Annotated[bytes, msgspec.Meta(max_length=MAX_META_BYTES)]
Signature = Annotated[bytes, msgspec.Meta(max_length=MAX_SIGNATURE_BYTES)]
Millis = Annotated[int, msgspec.Meta(ge=0, le=2**62)]


class MembershipError(MeshError):
    """Base of membership errors; `reason` is a short machine label for counters."""

    reason = "membership"


class MembershipDecodeError(MembershipError):
    """Bytes from the network are not a valid membership message."""

    reason = "malformed"


class MessageTooLarge(MembershipDecodeError):
    reason = "too_large"


class MemberState(enum.IntEnum):
    """Member states. At equal incarnation a larger value wins (see module docs)."""

    ALIVE = 0
    SUSPECT = 1
    ZOMBIE = 2
    DEAD = 3
    LEFT = 4


VerdictKind = Annotated[int, msgspec.Meta(ge=int(MemberState.ZOMBIE), le=int(MemberState.DEAD))]


# --- gossip items -------------------------------------------------------------------


class Alive(msgspec.Struct, tag=1, array_like=True, frozen=True):
    """A member's own signed statement: I am alive at `incarnation` with `meta`."""

    member: MemberId
    incarnation: Incarnation
    meta: MetaBytes
    signature: Signature


class Suspect(msgspec.Struct, tag=2, array_like=True, frozen=True):
    """`suspector` could not reach `member` at `incarnation` (unsigned: it can only
    make the member refute, never evict it)."""

    member: MemberId
    incarnation: Incarnation
    suspector: MemberId


class Observation(msgspec.Struct, array_like=True, frozen=True):
    """One observer's signed report that it could not reach `subject`."""

    observer: MemberId
    subject: MemberId
    incarnation: Incarnation
    kind: VerdictKind
    at_ms: Millis
    signature: Signature


class Verdict(msgspec.Struct, tag=3, array_like=True, frozen=True):
    """`subject` is zombie/dead at `incarnation`, backed by a quorum of observations."""

    subject: MemberId
    incarnation: Incarnation
    kind: VerdictKind
    observations: Annotated[list[Observation], msgspec.Meta(max_length=MAX_OBSERVATIONS)]


class Left(msgspec.Struct, tag=4, array_like=True, frozen=True):
    """A member's own signed statement that it left gracefully."""

    member: MemberId
    incarnation: Incarnation
    signature: Signature


GossipItem = Alive | Suspect | Verdict | Left
GossipList = Annotated[list[GossipItem], msgspec.Meta(max_length=MAX_GOSSIP_ITEMS)]


# --- messages -------------------------------------------------------------------------


class Ping(msgspec.Struct, tag=1, array_like=True, frozen=True):
    seq: Seq
    target: MemberId
    gossip: GossipList


class Ack(msgspec.Struct, tag=2, array_like=True, frozen=True):
    """Answer to a Ping; relayed unchanged by an indirect prober (`responder` is the
    probed member, not the relay)."""

    seq: Seq
    responder: MemberId
    gossip: GossipList


class Nack(msgspec.Struct, tag=3, array_like=True, frozen=True):
    """An indirect prober could not reach `target` (tells the requester its own link
    to the relay works: Lifeguard local health)."""

    seq: Seq
    target: MemberId


class PingReq(msgspec.Struct, tag=4, array_like=True, frozen=True):
    seq: Seq
    target: MemberId
    gossip: GossipList


class ObserveReq(msgspec.Struct, tag=5, array_like=True, frozen=True):
    """Please probe `subject` yourself and send me a signed observation."""

    round: Seq
    subject: MemberId
    incarnation: Incarnation
    gossip: GossipList


class ObserveResp(msgspec.Struct, tag=6, array_like=True, frozen=True):
    """`reached` True: the observer got an answer (no observation). Otherwise
    `observation` is the observer's signed report."""

    round: Seq
    subject: MemberId
    incarnation: Incarnation
    reached: bool
    observation: Observation | None
    gossip: GossipList


class Gossip(msgspec.Struct, tag=7, array_like=True, frozen=True):
    gossip: GossipList


class PushPull(msgspec.Struct, tag=8, array_like=True, frozen=True):
    """One page of a full state exchange: member records, then their non-alive
    statuses. `reply` asks the receiver to answer with its own state."""

    join: bool
    reply: bool
    alive: Annotated[list[Alive], msgspec.Meta(max_length=MAX_STATE_ENTRIES)]
    status: Annotated[list[Suspect | Verdict | Left], msgspec.Meta(max_length=MAX_STATE_ENTRIES)]


Message = Ping | Ack | Nack | PingReq | ObserveReq | ObserveResp | Gossip | PushPull

_ENCODER = msgspec.msgpack.Encoder()
_DECODER: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message)


def encode(message: Message) -> bytes:
    """Wire bytes of `message`."""
    return _ENCODER.encode(message)


def decode(data: bytes) -> Message:
    """Parse wire bytes; raises `MembershipDecodeError` (never anything else) on bad
    input and `MessageTooLarge` above `MAX_MESSAGE_BYTES`."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(f"membership message of {len(data)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        return _DECODER.decode(data)
    except (msgspec.DecodeError, ValueError, TypeError, RecursionError) as exc:
        raise MembershipDecodeError(f"bad membership message: {exc}") from None


def encoded_size(item: GossipItem) -> int:
    """Exact encoded size of a gossip item (used for piggyback byte budgets)."""
    return len(_ENCODER.encode(item))


# --- signed payloads ------------------------------------------------------------------


def alive_payload(member: str, incarnation: int, meta: bytes) -> bytes:
    return _ENCODER.encode(("vsmcp.membership.alive", WIRE_VERSION, member, incarnation, meta))


def left_payload(member: str, incarnation: int) -> bytes:
    return _ENCODER.encode(("vsmcp.membership.left", WIRE_VERSION, member, incarnation))


def observation_payload(
    observer: str, subject: str, incarnation: int, kind: int, at_ms: int
) -> bytes:
    return _ENCODER.encode(
        ("vsmcp.membership.observation", WIRE_VERSION, observer, subject, incarnation, kind, at_ms)
    )
