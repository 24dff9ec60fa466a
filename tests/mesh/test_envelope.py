from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vsmcp.mesh.envelope import (
    HEADER_BYTES,
    MAX_ENVELOPE_BYTES,
    REJECT_REASONS,
    WIRE_VERSION,
    Context,
    Envelope,
    MsgType,
    Opener,
    Sealer,
    _Body,
)
from vsmcp.mesh.errors import (
    BadSignatureError,
    BadVersionError,
    EnvelopeError,
    FutureMessageError,
    MalformedEnvelopeError,
    OversizeEnvelopeError,
    ReplayedMessageError,
    StaleMessageError,
    WrongRecipientError,
)
from vsmcp.mesh.identity import NodeKey
from vsmcp.mesh.replay import ReplayGuard

NOW_MS = 1_700_000_000_000
KEY = NodeKey.from_seed(bytes(range(32)))
OTHER = NodeKey.from_seed(bytes(range(1, 33)))


class FakeClock:
    def __init__(self, now_ms: int = NOW_MS) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def make_pair(
    *, local: bytes | None = None, max_size: int = MAX_ENVELOPE_BYTES
) -> tuple[Sealer, Opener, FakeClock]:
    clock = FakeClock()
    sealer = Sealer(KEY, clock_ms=clock)
    opener = Opener(ReplayGuard(), clock_ms=clock, local_public_key=local, max_size=max_size)
    return sealer, opener, clock


def test_msg_type_tags_are_frozen() -> None:
    # Append-only wire tags: this list may only grow.
    assert [(t.name, t.value) for t in MsgType][:13] == [
        ("INVOKE", 1),
        ("RESULT", 2),
        ("ERROR", 3),
        ("PROGRESS", 4),
        ("CANCEL", 5),
        ("ANNOUNCE", 6),
        ("SYNC", 7),
        ("HEARTBEAT", 8),
        ("HELLO", 9),
        ("GOSSIP", 10),
        ("PROBE", 11),
        ("PROBE_ACK", 12),
        ("VERDICT", 13),
    ]


def test_wire_layout() -> None:
    sealer, opener, _ = make_pair()
    wire = sealer.seal(MsgType.HEARTBEAT, b"{}")
    assert wire[64] == WIRE_VERSION
    assert wire[65:HEADER_BYTES] == KEY.public_key
    assert KEY.sign(wire[64:]) == wire  # signature covers exactly the bytes after it
    env = opener.open(wire)
    assert env.sender_id == KEY.node_id
    assert env.version == WIRE_VERSION


contexts = st.builds(
    Context,
    semantic_id=st.text(max_size=40),
    origin=st.text(max_size=40),
    intent=st.text(max_size=40),
    priority=st.integers(-(2**63), 2**63 - 1),
    causality=st.lists(st.binary(max_size=64), max_size=5).map(tuple),
    zone=st.sampled_from(["", "public", "ops", "restricted"]),
    trace_id=st.binary(max_size=16),
)


@given(
    type_=st.sampled_from(list(MsgType)),
    payload=st.binary(max_size=2000),
    context=st.none() | contexts,
    to_us=st.booleans(),
    msg_id=st.none() | st.binary(min_size=16, max_size=16),
)
def test_round_trip(
    type_: MsgType, payload: bytes, context: Context | None, to_us: bool, msg_id: bytes | None
) -> None:
    sealer, opener, clock = make_pair(local=OTHER.public_key)
    recipient = OTHER.public_key if to_us else None
    wire = sealer.seal(type_, payload, recipient=recipient, context=context, msg_id=msg_id)
    env = opener.open(wire)
    assert isinstance(env, Envelope)
    assert env.type is type_
    assert env.payload == payload
    assert env.context == (context or Context())
    assert env.recipient == recipient
    assert env.sender == KEY.public_key
    assert env.seq == sealer.last_seq
    assert env.ts_ms == clock.now_ms
    assert len(env.msg_id) == 16
    if msg_id is not None:
        assert env.msg_id == msg_id
    assert opener.accepted == 1


def test_sequences_rise_and_msg_ids_are_unique() -> None:
    sealer, opener, _ = make_pair()
    envs = [opener.open(sealer.seal(MsgType.GOSSIP, b"x")) for _ in range(50)]
    seqs = [e.seq for e in envs]
    assert seqs == list(range(seqs[0], seqs[0] + 50))
    assert len({e.msg_id for e in envs}) == 50


def test_seq_start_hint_and_clock_floor() -> None:
    hint = 2**62
    assert Sealer(KEY, seq_start=hint).seal(MsgType.HELLO, b"") is not None
    s = Sealer(KEY, seq_start=hint)
    s.seal(MsgType.HELLO, b"")
    assert s.last_seq == hint
    low = Sealer(KEY, seq_start=5)
    low.seal(MsgType.HELLO, b"")
    assert low.last_seq > 10**15  # the microsecond clock wins over a stale hint


_SEALED = Sealer(KEY, clock_ms=FakeClock()).seal(
    MsgType.INVOKE, b'{"jsonrpc":"2.0","method":"tools/call","id":1}' * 4
)


@given(position=st.integers(0, len(_SEALED) - 1), bit=st.integers(0, 7))
def test_any_single_bit_flip_is_rejected(position: int, bit: int) -> None:
    opener = Opener(ReplayGuard(), clock_ms=FakeClock())
    tampered = bytearray(_SEALED)
    tampered[position] ^= 1 << bit
    with pytest.raises(EnvelopeError):
        opener.open(bytes(tampered))
    assert opener.accepted == 0
    opener.open(_SEALED)  # the original still opens: the rejection recorded nothing


def test_every_bit_flip_exhaustively() -> None:
    opener = Opener(ReplayGuard(), clock_ms=FakeClock())
    for position in range(len(_SEALED)):
        for bit in range(8):
            tampered = bytearray(_SEALED)
            tampered[position] ^= 1 << bit
            with pytest.raises(EnvelopeError):
                opener.open(bytes(tampered))
    assert opener.accepted == 0
    assert sum(opener.rejected.values()) == len(_SEALED) * 8
    assert opener.rejected["bad_version"] == 8
    assert opener.rejected["bad_signature"] == (len(_SEALED) - 1) * 8


@given(st.binary(max_size=600))
def test_random_bytes_always_raise_envelope_error(data: bytes) -> None:
    opener = Opener(ReplayGuard(), clock_ms=FakeClock())
    with pytest.raises(EnvelopeError):
        opener.open(data)


@given(st.binary(max_size=300))
def test_random_body_with_valid_signature_is_malformed_not_a_crash(body: bytes) -> None:
    opener = Opener(ReplayGuard(), clock_ms=FakeClock())
    wire = KEY.sign(bytes([WIRE_VERSION]) + KEY.public_key + body)
    try:
        opener.open(wire)
    except EnvelopeError as exc:
        assert exc.reason in REJECT_REASONS


@pytest.mark.parametrize(
    "body",
    [
        [99, bytes(16), None, 1, NOW_MS, [], b""],  # unknown type
        [1, bytes(15), None, 1, NOW_MS, [], b""],  # short msg_id
        [1, bytes(16), bytes(31), 1, NOW_MS, [], b""],  # bad recipient
        [1, bytes(16), None, -1, NOW_MS, [], b""],  # negative seq
        [1, bytes(16), None, 1, NOW_MS, [], "text"],  # payload not bytes
        [1, bytes(16), None, 1, NOW_MS, [""] * 4 + [[b"x"] * 65], b""],  # causality cap
        [1, bytes(16), None, 1],  # truncated
    ],
)
def test_signed_but_invalid_bodies_are_malformed(body: list[object]) -> None:
    opener = Opener(ReplayGuard(), clock_ms=FakeClock())
    wire = KEY.sign(bytes([WIRE_VERSION]) + KEY.public_key + msgspec.msgpack.encode(body))
    with pytest.raises(MalformedEnvelopeError):
        opener.open(wire)
    assert opener.rejected["malformed"] == 1


def test_oversize_rejected_before_decoding() -> None:
    sealer = Sealer(KEY, clock_ms=FakeClock())
    opener = Opener(ReplayGuard(), clock_ms=FakeClock(), max_size=1000)
    with pytest.raises(OversizeEnvelopeError):
        opener.open(sealer.seal(MsgType.INVOKE, b"x" * 1000))
    # Garbage of the same size: still "oversize", proving nothing was parsed first.
    with pytest.raises(OversizeEnvelopeError):
        opener.open(b"\xff" * 1001)
    assert opener.rejected["oversize"] == 2
    opener.open(sealer.seal(MsgType.INVOKE, b"x" * 800))


def test_sealer_refuses_to_build_oversize() -> None:
    with pytest.raises(OversizeEnvelopeError):
        Sealer(KEY, max_size=500).seal(MsgType.INVOKE, b"x" * 500)


def test_wrong_wire_version_is_bad_version() -> None:
    # A correctly signed envelope claiming another wire version.
    body = msgspec.msgpack.encode(_Body(MsgType.INVOKE, bytes(16), None, 1, NOW_MS, Context(), b""))
    wire = KEY.sign(bytes([2]) + KEY.public_key + body)
    opener = Opener(ReplayGuard(), clock_ms=FakeClock())
    with pytest.raises(BadVersionError):
        opener.open(wire)
    assert opener.rejected["bad_version"] == 1


def test_signature_from_another_key_rejected() -> None:
    sealer, opener, _ = make_pair()
    wire = sealer.seal(MsgType.INVOKE, b"x")
    forged = wire[:65] + OTHER.public_key + wire[HEADER_BYTES:]
    with pytest.raises(BadSignatureError):
        opener.open(forged)
    resigned = OTHER.sign(wire[64:])  # valid signature, but not by the key in the header
    with pytest.raises(BadSignatureError):
        opener.open(resigned)


def test_wrong_recipient_rejected_and_not_recorded() -> None:
    sealer, opener, _ = make_pair(local=OTHER.public_key)
    wire = sealer.seal(MsgType.INVOKE, b"x", recipient=KEY.public_key)
    with pytest.raises(WrongRecipientError):
        opener.open(wire)
    assert opener.rejected["recipient"] == 1
    assert len(opener.guard) == 0
    opener.open(sealer.seal(MsgType.INVOKE, b"x", recipient=OTHER.public_key))
    opener.open(sealer.seal(MsgType.ANNOUNCE, b"x"))  # broadcast: no recipient


def test_replay_stale_and_future_rejected_with_counters() -> None:
    sealer, opener, clock = make_pair()
    wire = sealer.seal(MsgType.INVOKE, b"x")
    opener.open(wire)
    with pytest.raises(ReplayedMessageError):
        opener.open(wire)
    old = sealer.seal(MsgType.INVOKE, b"x")
    clock.now_ms += 31_000
    with pytest.raises(StaleMessageError):
        opener.open(old)
    ahead = Sealer(KEY, seq_start=sealer.last_seq + 1, clock_ms=FakeClock(clock.now_ms + 31_000))
    with pytest.raises(FutureMessageError):
        opener.open(ahead.seal(MsgType.INVOKE, b"x"))
    assert opener.accepted == 1
    assert opener.rejected["replay"] == 1
    assert opener.rejected["stale"] == 1
    assert opener.rejected["future"] == 1
    assert set(opener.rejected) >= set(REJECT_REASONS)


def test_replay_rejected_after_guard_restart() -> None:
    sealer, opener, clock = make_pair()
    wire = sealer.seal(MsgType.INVOKE, b"x")
    opener.open(wire)
    restarted = Opener(ReplayGuard.restore(opener.guard.dump()), clock_ms=clock)
    with pytest.raises(ReplayedMessageError):
        restarted.open(wire)
    # A restarted sender keeps rising: its next envelope is fresh for the restored guard.
    sealer2 = Sealer(KEY, seq_start=sealer.last_seq + 1, clock_ms=clock)
    restarted.open(sealer2.seal(MsgType.INVOKE, b"y"))


def test_reordered_delivery_within_window_accepted() -> None:
    sealer, opener, _ = make_pair()
    wires = [sealer.seal(MsgType.GOSSIP, bytes([i])) for i in range(100)]
    for wire in reversed(wires):
        opener.open(wire)
    assert opener.accepted == 100


def test_sealer_argument_validation() -> None:
    sealer, _, _ = make_pair()
    with pytest.raises(ValueError):
        sealer.seal(MsgType.INVOKE, b"", recipient=b"short")
    with pytest.raises(ValueError):
        sealer.seal(MsgType.INVOKE, b"", msg_id=b"short")
