from __future__ import annotations

import os
from dataclasses import dataclass, field

import msgspec
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from vsmcp.mesh.errors import (
    BelowReplayFloorError,
    FutureMessageError,
    ReplayedMessageError,
    ReplayGuardError,
    ReplayStateError,
    StaleMessageError,
    TooOldSequenceError,
)
from vsmcp.mesh.replay import ReplayGuard

NOW = 1_700_000_000_000
SKEW = 30_000


def outcome(guard: ReplayGuard, sender: bytes, seq: int, ts: int, now: int) -> str | None:
    try:
        guard.check(sender, seq, ts, now)
    except ReplayGuardError as exc:
        return exc.reason
    return None


# --- unit tests ---------------------------------------------------------------------------


def test_in_order_then_duplicate() -> None:
    g = ReplayGuard(window=64)
    for seq in range(100, 200):
        g.check(b"a", seq, NOW, NOW)
    with pytest.raises(ReplayedMessageError):
        g.check(b"a", 150, NOW, NOW)
    with pytest.raises(ReplayedMessageError):
        g.check(b"a", 199, NOW, NOW)


def test_reordered_within_window_accepted_once() -> None:
    g = ReplayGuard(window=64)
    order = [10, 5, 7, 6, 9, 8, 60, 11, 12, 1]
    for seq in order:
        g.check(b"a", seq, NOW, NOW)
    for seq in order:
        with pytest.raises(ReplayedMessageError):
            g.check(b"a", seq, NOW, NOW)
    g.check(b"a", 2, NOW, NOW)  # still inside (60 - 64, 60]


def test_window_edges() -> None:
    g = ReplayGuard(window=8)
    g.check(b"a", 100, NOW, NOW)
    g.check(b"a", 93, NOW, NOW)  # 100 - 7: last slot of the window
    with pytest.raises(TooOldSequenceError):
        g.check(b"a", 92, NOW, NOW)  # 100 - 8: just below
    g.check(b"a", 10**15, NOW, NOW)  # huge jump resets the bitmap without huge shifts
    with pytest.raises(TooOldSequenceError):
        g.check(b"a", 100, NOW, NOW)


def test_timestamp_window() -> None:
    g = ReplayGuard(max_skew_ms=SKEW)
    g.check(b"a", 1, NOW - SKEW, NOW)
    g.check(b"a", 2, NOW + SKEW, NOW)
    with pytest.raises(StaleMessageError):
        g.check(b"a", 3, NOW - SKEW - 1, NOW)
    with pytest.raises(FutureMessageError):
        g.check(b"a", 4, NOW + SKEW + 1, NOW)
    g.check(b"a", 3, NOW, NOW)  # the stale attempt recorded nothing


def test_rejections_record_nothing() -> None:
    g = ReplayGuard(window=8)
    with pytest.raises(StaleMessageError):
        g.check(b"new", 5, 0, NOW)
    assert len(g) == 0
    g.check(b"new", 5, NOW, NOW)
    assert len(g) == 1


def test_senders_are_independent() -> None:
    g = ReplayGuard()
    g.check(b"a", 1, NOW, NOW)
    g.check(b"b", 1, NOW, NOW)
    with pytest.raises(ReplayedMessageError):
        g.check(b"b", 1, NOW, NOW)


def test_dump_restore_rejects_replay_of_message_accepted_before_dump() -> None:
    g = ReplayGuard(window=32)
    g.check(b"a", 500, NOW, NOW)
    g.check(b"a", 490, NOW, NOW)
    restored = ReplayGuard.restore(g.dump(), window=32)
    for seq in (500, 490):
        with pytest.raises(ReplayedMessageError):
            restored.check(b"a", seq, NOW, NOW + 1)
    restored.check(b"a", 491, NOW, NOW + 1)
    assert restored.dump() != g.dump()


def test_restore_with_larger_window_treats_unknown_as_seen() -> None:
    g = ReplayGuard(window=8)
    g.check(b"a", 100, NOW, NOW)
    bigger = ReplayGuard.restore(g.dump(), window=64)
    with pytest.raises(ReplayedMessageError):
        bigger.check(b"a", 80, NOW, NOW)  # was too old before: must not become fresh
    bigger.check(b"a", 99, NOW, NOW)  # was inside the old window and unseen
    smaller = ReplayGuard.restore(g.dump(), window=4)
    with pytest.raises(TooOldSequenceError):
        smaller.check(b"a", 95, NOW, NOW)


def test_restore_into_smaller_table_evicts_under_floor_rule() -> None:
    g = ReplayGuard(max_senders=10)
    for i in range(10):
        g.check(bytes([i]), 1, NOW + i, NOW)
    small = ReplayGuard.restore(g.dump(), max_senders=3)
    assert len(small) == 3
    for i in range(10):
        with pytest.raises(ReplayGuardError):
            small.check(bytes([i]), 1, NOW + i, NOW)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x00",
        os.urandom(64),
        msgspec.msgpack.encode([1, 8, 0, [[b"a", 1, b"\xff\xff", 0, 0]]]),  # bitmap too long
        msgspec.msgpack.encode([1, 8, 0, [[b"a", 1, b"\x00", 0, 0]]]),  # max_seq bit clear
        msgspec.msgpack.encode([1, 8, 0, [[b"a", 1, b"\x01", 0, 0]] * 2]),  # duplicate
        msgspec.msgpack.encode([2, 8, 0, []]),  # unknown format
        msgspec.msgpack.encode([1, 0, 0, []]),  # bad window
        msgspec.msgpack.encode({"window": 8}),
    ],
)
def test_restore_rejects_garbage(garbage: bytes) -> None:
    with pytest.raises(ReplayStateError):
        ReplayGuard.restore(garbage, window=8)


def test_prune_drops_only_idle_senders_and_keeps_fresh_ones_acceptable() -> None:
    g = ReplayGuard(max_skew_ms=SKEW)
    g.check(b"old", 1, NOW, NOW)
    g.check(b"new", 1, NOW + 20_000, NOW + 20_000)
    later = NOW + SKEW + 10_000
    assert g.prune(later) == 1
    assert len(g) == 1
    with pytest.raises(StaleMessageError):
        g.check(b"old", 1, NOW, later)  # replay of the pruned sender: stale
    g.check(b"old", 2, later, later)  # fresh message of the pruned sender: fine
    with pytest.raises(ReplayedMessageError):
        g.check(b"new", 1, NOW + 20_000, later)


def test_floor_protects_pruned_sender_even_if_clock_goes_back() -> None:
    g = ReplayGuard(max_skew_ms=SKEW)
    g.check(b"a", 7, NOW, NOW)
    g.prune(NOW + 10 * SKEW)
    # The receiver clock jumps back: the old message is "fresh" again by timestamp.
    with pytest.raises(BelowReplayFloorError):
        g.check(b"a", 7, NOW, NOW)


def test_after_crash_rejects_everything_up_to_restart_plus_future_skew() -> None:
    g = ReplayGuard(max_skew_ms=SKEW)
    checkpoint = g.dump()
    # Accepted after the checkpoint, from a sender whose clock runs 20 s ahead.
    g.check(b"fast", 1, NOW + 20_000, NOW)
    g.check(b"slow", 1, NOW, NOW)
    restart = NOW + 5_000
    crashed = ReplayGuard.after_crash(checkpoint, restart, max_skew_ms=SKEW)
    with pytest.raises(BelowReplayFloorError):
        crashed.check(b"fast", 1, NOW + 20_000, restart)
    with pytest.raises(BelowReplayFloorError):
        crashed.check(b"slow", 1, NOW, restart)
    # Checkpointed senders are held to the floor too: their later messages are unknown.
    g2 = ReplayGuard(max_skew_ms=SKEW)
    g2.check(b"c", 1, NOW, NOW)
    cp = g2.dump()
    g2.check(b"c", 2, NOW + 1, NOW + 1)
    crashed2 = ReplayGuard.after_crash(cp, NOW + 2, max_skew_ms=SKEW)
    with pytest.raises(BelowReplayFloorError):
        crashed2.check(b"c", 2, NOW + 1, NOW + 2)
    # Liveness: once timestamps pass the floor, messages flow again.
    after = restart + SKEW + 1
    crashed.check(b"slow", 2, after, after)
    crashed.check(b"brand-new", 1, after, after)
    assert ReplayGuard.after_crash(None, NOW).floor_ms == NOW + SKEW


def test_flood_of_distinct_senders_is_bounded_and_never_lets_a_replay_through() -> None:
    g = ReplayGuard(window=64, max_senders=500)
    sent: list[tuple[bytes, int, int]] = []
    for i in range(20_000):
        sender = i.to_bytes(32, "big")
        msg = (sender, 1_000 + i, NOW + i // 10)
        g.check(msg[0], msg[1], msg[2], NOW + i // 10)
        sent.append(msg)
        assert len(g) <= 500
    now = NOW + 2_000
    for sender, seq, ts in sent:
        with pytest.raises(ReplayGuardError):
            g.check(sender, seq, ts, now)
        assert len(g) <= 500
    assert g.memory_bound_bytes() < 8 << 20 or g.max_senders != 16384


def test_evicted_victim_old_messages_refused_new_ones_accepted() -> None:
    g = ReplayGuard(window=64, max_senders=4)
    victim = b"v" * 32
    g.check(victim, 10, NOW, NOW)
    g.check(victim, 11, NOW + 1, NOW + 1)
    for i in range(10):  # flood evicts the victim
        g.check(i.to_bytes(32, "big"), 1, NOW + 2 + i, NOW + 2 + i)
    assert len(g) == 4
    for seq, ts in ((10, NOW), (11, NOW + 1)):
        with pytest.raises(BelowReplayFloorError):
            g.check(victim, seq, ts, NOW + 30)
    g.check(victim, 12, NOW + 30, NOW + 30)  # above the floor: accepted, state re-created
    with pytest.raises(BelowReplayFloorError):  # and the re-created state keeps the floor
        g.check(victim, 11, NOW + 1, NOW + 3)


def test_constructor_validation() -> None:
    for kwargs in ({"window": 0}, {"window": 1 << 20}, {"max_senders": 0}, {"max_skew_ms": -1}):
        with pytest.raises(ValueError):
            ReplayGuard(**kwargs)


# --- stateful property tests ------------------------------------------------------------


@dataclass
class SimSender:
    key: bytes
    clock_offset: int
    next_seq: int
    pending: list[tuple[int, int]] = field(default_factory=list)
    delivered: list[tuple[int, int]] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    max_seq: int | None = None


class ExactReplayMachine(RuleBasedStateMachine):
    """No eviction (senders <= max_senders), clean restarts: the guard must agree exactly
    with the reference model (seen set + window rule + timestamp rule)."""

    WINDOW = 16

    def __init__(self) -> None:
        super().__init__()
        self.now = NOW
        self.guard = ReplayGuard(window=self.WINDOW, max_senders=4, max_skew_ms=SKEW)
        self.senders = [
            SimSender(bytes([i]) * 32, clock_offset=(i - 2) * 7_000, next_seq=1_000 * i)
            for i in range(4)
        ]
        self.accepted: set[tuple[bytes, int]] = set()

    def expected(self, s: SimSender, seq: int, ts: int) -> str | None:
        if ts < self.now - SKEW:
            return "stale"
        if ts > self.now + SKEW:
            return "future"
        if s.max_seq is not None and seq <= s.max_seq - self.WINDOW:
            return "too_old"
        if seq in s.seen:
            return "replay"
        return None

    def deliver_message(self, s: SimSender, seq: int, ts: int) -> None:
        want = self.expected(s, seq, ts)
        got = outcome(self.guard, s.key, seq, ts, self.now)
        assert got == want, (s.key[:1], seq, ts, self.now)
        if got is None:
            assert (s.key, seq) not in self.accepted
            self.accepted.add((s.key, seq))
            s.seen.add(seq)
            s.max_seq = seq if s.max_seq is None else max(s.max_seq, seq)

    @rule(i=st.integers(0, 3), n=st.integers(1, 6), gap=st.integers(1, 5))
    def send(self, i: int, n: int, gap: int) -> None:
        s = self.senders[i]
        for _ in range(n):
            s.pending.append((s.next_seq, self.now + s.clock_offset))
            s.next_seq += gap  # gaps: this sender also talks to other peers

    @precondition(lambda self: any(s.pending for s in self.senders))
    @rule(i=st.integers(0, 3), pick=st.integers(0, 1 << 16))
    def deliver(self, i: int, pick: int) -> None:
        candidates = [s for s in self.senders if s.pending]
        s = candidates[i % len(candidates)]
        seq, ts = s.pending.pop(pick % len(s.pending))
        s.delivered.append((seq, ts))
        self.deliver_message(s, seq, ts)

    @precondition(lambda self: any(s.delivered for s in self.senders))
    @rule(i=st.integers(0, 3), pick=st.integers(0, 1 << 16))
    def redeliver(self, i: int, pick: int) -> None:
        candidates = [s for s in self.senders if s.delivered]
        s = candidates[i % len(candidates)]
        seq, ts = s.delivered[pick % len(s.delivered)]
        self.deliver_message(s, seq, ts)

    @rule(dt=st.integers(0, 45_000))
    def advance_clock(self, dt: int) -> None:
        self.now += dt

    @rule()
    def prune(self) -> None:
        self.guard.prune(self.now)

    @rule()
    def clean_restart(self) -> None:
        self.guard = ReplayGuard.restore(
            self.guard.dump(), window=self.WINDOW, max_senders=4, max_skew_ms=SKEW
        )

    @invariant()
    def bounded(self) -> None:
        assert len(self.guard) <= 4


class WideWindowExactMachine(ExactReplayMachine):
    WINDOW = 1024


class FloodAndCrashMachine(RuleBasedStateMachine):
    """More senders than the table holds, evictions, prunes, clean and crash restarts,
    clock jumps: never a duplicate accepted, never more states than the bound."""

    MAX = 3

    def __init__(self) -> None:
        super().__init__()
        self.now = NOW
        self.guard = ReplayGuard(window=8, max_senders=self.MAX, max_skew_ms=SKEW)
        self.checkpoint: bytes | None = None
        self.next_seq = [1] * 8
        self.sent: list[tuple[bytes, int, int]] = []
        self.accepted: set[tuple[bytes, int]] = set()
        self.latest_accept_now = NOW

    def deliver_message(self, sender: bytes, seq: int, ts: int) -> None:
        if outcome(self.guard, sender, seq, ts, self.now) is None:
            assert (sender, seq) not in self.accepted, "replay accepted"
            self.accepted.add((sender, seq))
            self.latest_accept_now = max(self.latest_accept_now, self.now)

    @rule(i=st.integers(0, 7), skew=st.integers(-SKEW, SKEW), jump=st.integers(1, 20))
    def send_and_deliver(self, i: int, skew: int, jump: int) -> None:
        sender = bytes([i]) * 32
        seq = self.next_seq[i]
        self.next_seq[i] += jump
        ts = self.now + skew
        self.sent.append((sender, seq, ts))
        self.deliver_message(sender, seq, ts)

    @precondition(lambda self: bool(self.sent))
    @rule(pick=st.integers(0, 1 << 16))
    def replay_any(self, pick: int) -> None:
        sender, seq, ts = self.sent[pick % len(self.sent)]
        self.deliver_message(sender, seq, ts)

    @rule(dt=st.integers(-40_000, 40_000))
    def clock_moves(self, dt: int) -> None:
        self.now += dt  # including backwards: safety must not depend on the clock

    @rule()
    def prune(self) -> None:
        self.guard.prune(self.now)

    @rule()
    def take_checkpoint(self) -> None:
        self.checkpoint = self.guard.dump()

    @rule()
    def clean_restart(self) -> None:
        self.guard = ReplayGuard.restore(
            self.guard.dump(), window=8, max_senders=self.MAX, max_skew_ms=SKEW
        )

    @rule(use_checkpoint=st.booleans())
    def crash_restart(self, use_checkpoint: bool) -> None:
        # A crash loses everything since the checkpoint; the clock at restart is not
        # earlier than the latest accept (crash recovery needs a sane restart clock).
        self.now = max(self.now, self.latest_accept_now)
        self.guard = ReplayGuard.after_crash(
            self.checkpoint if use_checkpoint else None,
            self.now,
            window=8,
            max_senders=self.MAX,
            max_skew_ms=SKEW,
        )

    @invariant()
    def bounded(self) -> None:
        assert len(self.guard) <= self.MAX


ExactReplayMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60)
WideWindowExactMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=60)
FloodAndCrashMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60)
TestExactReplay = ExactReplayMachine.TestCase
TestWideWindowExact = WideWindowExactMachine.TestCase
TestFloodAndCrash = FloodAndCrashMachine.TestCase
