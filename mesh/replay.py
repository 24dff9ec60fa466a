"""Exact replay guard: per-sender sliding sequence window plus a timestamp window.

Design (RFC 6479 / WireGuard style anti-replay, adapted to a bounded sender table):

* Freshness: a message is accepted only if `now - max_skew_ms <= ts_ms <= now + max_future_ms`.
* Per sender we keep `max_seq` (highest accepted sequence) and a `window`-bit bitmap
  where bit i means "max_seq - i was accepted". A sequence above max_seq slides the window;
  one inside it is accepted iff its bit is clear; one at or below `max_seq - window` is
  refused as too old (we can no longer tell whether it was seen).
* The sender table holds at most `max_senders` entries, kept in least-recently-active
  order. Discarding a sender's state (eviction under flood, pruning of idle senders,
  crash recovery) raises a global **floor** to at least the highest timestamp that
  sender ever had accepted. A message from a sender without state is accepted only if
  its timestamp is above the floor, and a state created later inherits the floor it was
  created under (`ts_floor_ms`): so every message accepted before the state was lost
  is refused forever after, whatever the clock does. Safety never depends on the clock;
  only freshness (and thus which fresh messages are accepted) does.

Exactness:

* Zero replays: by the three cases above (state kept -> bitmap/too-old; state lost ->
  floor), for any interleaving, eviction pattern, dump/restore or crash recovery.
* Zero fresh messages rejected, as long as the table never has to evict an active
  sender (at most `max_senders` senders active within the skew window) and the process
  did not crash: pruning only discards senders whose newest accepted timestamp is
  already older than `now - max_skew_ms`, so the floor stays below every fresh timestamp.
* Trade-off under a flood of more than `max_senders` concurrently active senders: the
  least recently active one is evicted and the floor rises to its newest timestamp, so a
  message from a sender without state timestamped at or below that floor is refused
  (`BelowReplayFloorError`, reason "below_floor") — a fresh message may be refused,
  a replay is never accepted.

Memory: one sender state costs about `BYTES_PER_SENDER_ESTIMATE` bytes with the default
1024-bit window (32-byte key object, table slot, a 4-slot object, the bitmap int and two
timestamp ints), measured with tracemalloc on CPython 3.11. With the defaults
(16384 senders) the whole table stays below ~8 MiB; in general the bound is
`max_senders * (BYTES_PER_SENDER_BASE + window / 8)` bytes.

Restart:

* Clean: `dump()` after the intake stopped, `ReplayGuard.restore(data)` at start. Exact.
* Crash (no dump after the last accept): `ReplayGuard.after_crash(checkpoint, now_ms)`.
  Anything accepted after the checkpoint is unknown, but it carried `ts <= accept_time +
  max_future_ms <= now_ms + max_future_ms`. So the floor (and every restored sender's
  floor) is raised to `now_ms + max_future_ms`: every message timestamped at or before
  that is refused. Cost: after a crash, senders with correct clocks are refused for
  about `max_future_ms` (30 s by default) until their timestamps pass the floor. Note
  that "at or before the restart time" would not be enough: a message from a sender
  whose clock runs ahead may have been accepted with a timestamp up to
  `max_future_ms` in the future. This needs a restart clock no earlier than the clock
  at the crash (a wall clock stepped backwards across the crash defeats it; a checkpoint
  whose floor is higher is kept).
"""

from __future__ import annotations

from collections import OrderedDict

import msgspec

from vsmcp.mesh.errors import (
    BelowReplayFloorError,
    FutureMessageError,
    ReplayedMessageError,
    ReplayStateError,
    StaleMessageError,
    TooOldSequenceError,
)

DEFAULT_WINDOW = 1024
DEFAULT_MAX_SENDERS = 16384
DEFAULT_MAX_SKEW_MS = 30_000
MAX_WINDOW = 1 << 16
MAX_SENDER_BYTES = 64
MAX_DUMP_BYTES = 256 << 20
# Per-sender bytes apart from the bitmap (see module docstring), measured with tracemalloc.
BYTES_PER_SENDER_BASE = 340
BYTES_PER_SENDER_ESTIMATE = BYTES_PER_SENDER_BASE + DEFAULT_WINDOW // 8
_DUMP_FORMAT = 1


class _SenderState:
    __slots__ = ("bitmap", "max_seq", "max_ts_ms", "ts_floor_ms")

    def __init__(self, max_seq: int, bitmap: int, max_ts_ms: int, ts_floor_ms: int) -> None:
        self.max_seq = max_seq
        self.bitmap = bitmap
        self.max_ts_ms = max_ts_ms
        self.ts_floor_ms = ts_floor_ms


class _DumpedSender(msgspec.Struct, array_like=True, frozen=True):
    sender: bytes
    max_seq: int
    bitmap: bytes
    max_ts_ms: int
    ts_floor_ms: int


class _Dump(msgspec.Struct, array_like=True, frozen=True, tag=_DUMP_FORMAT):
    window: int
    floor_ms: int
    senders: list[_DumpedSender]  # least recently active first


_DUMP_ENCODER = msgspec.msgpack.Encoder()
_DUMP_DECODER = msgspec.msgpack.Decoder(_Dump)


class ReplayGuard:
    """Exact anti-replay state for all senders. See the module docstring."""

    __slots__ = (
        "_floor_ms",
        "_future_ms",
        "_mask",
        "_max_senders",
        "_skew_ms",
        "_states",
        "_window",
    )

    def __init__(
        self,
        window: int = DEFAULT_WINDOW,
        max_senders: int = DEFAULT_MAX_SENDERS,
        max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
        *,
        max_future_ms: int | None = None,
    ) -> None:
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window must be in 1..{MAX_WINDOW}")
        if max_senders < 1:
            raise ValueError("max_senders must be >= 1")
        if max_skew_ms < 0 or (max_future_ms is not None and max_future_ms < 0):
            raise ValueError("skews must be >= 0")
        self._window = window
        self._mask = (1 << window) - 1
        self._max_senders = max_senders
        self._skew_ms = max_skew_ms
        self._future_ms = max_skew_ms if max_future_ms is None else max_future_ms
        self._states: OrderedDict[bytes, _SenderState] = OrderedDict()
        self._floor_ms = -(1 << 63)

    # --- introspection ---------------------------------------------------------------

    @property
    def window(self) -> int:
        return self._window

    @property
    def max_senders(self) -> int:
        return self._max_senders

    @property
    def floor_ms(self) -> int:
        """Messages from senders without state must be timestamped above this."""
        return self._floor_ms

    def __len__(self) -> int:
        return len(self._states)

    def memory_bound_bytes(self) -> int:
        """Upper estimate of the sender table's memory (see module docstring)."""
        return self._max_senders * (BYTES_PER_SENDER_BASE + self._window // 8)

    # --- hot path ----------------------------------------------------------------------

    def check(self, sender: bytes, seq: int, ts_ms: int, now_ms: int) -> None:
        """Accept (and record) the message or raise a `ReplayGuardError` subclass.

        Call only after the message's signature was verified: `sender`, `seq` and `ts_ms`
        must be the authenticated values. Nothing is recorded when it raises.
        """
        if ts_ms < now_ms - self._skew_ms:
            raise StaleMessageError(f"timestamp {ts_ms} older than {now_ms} - skew")
        if ts_ms > now_ms + self._future_ms:
            raise FutureMessageError(f"timestamp {ts_ms} newer than {now_ms} + skew")
        states = self._states
        state = states.get(sender)
        if state is None:
            self._admit_new_sender(sender, seq, ts_ms)
            return
        if ts_ms <= state.ts_floor_ms:
            raise BelowReplayFloorError("timestamp at or below this sender's replay floor")
        offset = state.max_seq - seq
        if offset < 0:
            shift = -offset
            window = self._window
            state.bitmap = (((state.bitmap << shift) | 1) & self._mask) if shift < window else 1
            state.max_seq = seq
        elif offset >= self._window:
            raise TooOldSequenceError(f"sequence {seq} below the window of {state.max_seq}")
        else:
            bit = 1 << offset
            if state.bitmap & bit:
                raise ReplayedMessageError(f"sequence {seq} already accepted")
            state.bitmap |= bit
        if ts_ms > state.max_ts_ms:
            state.max_ts_ms = ts_ms
        states.move_to_end(sender)

    def _admit_new_sender(self, sender: bytes, seq: int, ts_ms: int) -> None:
        if ts_ms <= self._floor_ms:
            raise BelowReplayFloorError(
                "sender has no replay state and the timestamp is at or below the floor"
            )
        if len(sender) > MAX_SENDER_BYTES:
            raise ValueError("sender id too long")
        # The new state's own floor is the floor this message was admitted under: every
        # earlier message of this sender is at or below it. Evictions made room for it
        # below concern other senders and must not tighten it.
        admitted_floor_ms = self._floor_ms
        states = self._states
        while len(states) >= self._max_senders:
            self._discard_oldest()
        states[sender] = _SenderState(seq, 1, ts_ms, admitted_floor_ms)

    def _discard_oldest(self) -> None:
        _, state = self._states.popitem(last=False)
        if state.max_ts_ms > self._floor_ms:
            self._floor_ms = state.max_ts_ms

    # --- maintenance ------------------------------------------------------------------------

    def prune(self, now_ms: int) -> int:
        """Drop least-recently-active senders whose newest message is already stale.

        Free: their messages would be refused as stale anyway, so the floor they leave
        behind is below every fresh timestamp. Returns how many were dropped.
        """
        states = self._states
        stale_before = now_ms - self._skew_ms
        dropped = 0
        while states:
            state = next(iter(states.values()))
            if state.max_ts_ms >= stale_before:
                break
            self._discard_oldest()
            dropped += 1
        return dropped

    def raise_floor(self, floor_ms: int) -> None:
        """Refuse every message timestamped at or below `floor_ms`, from every sender."""
        if floor_ms > self._floor_ms:
            self._floor_ms = floor_ms
        for state in self._states.values():
            if floor_ms > state.ts_floor_ms:
                state.ts_floor_ms = floor_ms

    # --- persistence --------------------------------------------------------------------

    def dump(self) -> bytes:
        """Serialize the whole state (msgpack). Restore with `ReplayGuard.restore`."""
        nbytes = (self._window + 7) // 8
        senders = [
            _DumpedSender(
                sender,
                s.max_seq,
                s.bitmap.to_bytes(nbytes, "little"),
                s.max_ts_ms,
                s.ts_floor_ms,
            )
            for sender, s in self._states.items()
        ]
        return _DUMP_ENCODER.encode(_Dump(self._window, self._floor_ms, senders))

    @classmethod
    def restore(
        cls,
        data: bytes,
        window: int = DEFAULT_WINDOW,
        max_senders: int = DEFAULT_MAX_SENDERS,
        max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
        *,
        max_future_ms: int | None = None,
    ) -> ReplayGuard:
        """Rebuild a guard from `dump()` output; `ReplayStateError` on garbage.

        The window and table size may differ from the dumped guard's: a larger window
        marks the newly covered sequences as seen (unknown -> refused), a smaller table
        evicts the least recently active senders under the floor rule.
        """
        guard = cls(window, max_senders, max_skew_ms, max_future_ms=max_future_ms)
        guard._load(data)
        return guard

    @classmethod
    def after_crash(
        cls,
        last_checkpoint: bytes | None,
        now_ms: int,
        window: int = DEFAULT_WINDOW,
        max_senders: int = DEFAULT_MAX_SENDERS,
        max_skew_ms: int = DEFAULT_MAX_SKEW_MS,
        *,
        max_future_ms: int | None = None,
    ) -> ReplayGuard:
        """Guard for a restart without a final dump (see module docstring, "Crash")."""
        guard = cls(window, max_senders, max_skew_ms, max_future_ms=max_future_ms)
        if last_checkpoint is not None:
            guard._load(last_checkpoint)
        guard.raise_floor(now_ms + guard._future_ms)
        return guard

    def _load(self, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray | memoryview) or len(data) > MAX_DUMP_BYTES:
            raise ReplayStateError("replay state is not bytes or is too large")
        try:
            dumped = _DUMP_DECODER.decode(data)
        except msgspec.DecodeError as exc:
            raise ReplayStateError(f"replay state is not a valid dump: {exc}") from exc
        if not 1 <= dumped.window <= MAX_WINDOW:
            raise ReplayStateError(f"replay state has an invalid window {dumped.window}")
        nbytes = (dumped.window + 7) // 8
        # Sequences the dumped window did not cover but ours does: unknown, so "seen".
        unknown_bits = self._mask & ~((1 << dumped.window) - 1)
        self._floor_ms = dumped.floor_ms
        states = self._states
        for entry in dumped.senders:
            if len(entry.bitmap) != nbytes or len(entry.sender) > MAX_SENDER_BYTES:
                raise ReplayStateError("replay state has a malformed sender entry")
            if entry.sender in states:
                raise ReplayStateError("replay state lists a sender twice")
            bitmap = int.from_bytes(entry.bitmap, "little")
            if bitmap >> dumped.window or not bitmap & 1:
                raise ReplayStateError("replay state has an inconsistent bitmap")
            if len(states) >= self._max_senders:
                self._discard_oldest()
            states[entry.sender] = _SenderState(
                entry.max_seq,
                (bitmap | unknown_bits) & self._mask,
                entry.max_ts_ms,
                entry.ts_floor_ms,
            )
