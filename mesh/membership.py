"""SWIM membership with quorum-confirmed dead and zombie verdicts (sans-I/O).

`Membership` is a pure state machine: no I/O, no asyncio, no clock. The node drives
it with `tick(now)` (at `next_deadline()` at the latest), `on_message(sender, msg,
now)`, `on_transport_probe_result(member, reachable, now)`, `join` and `leave`, and
carries out the returned outputs: `Send(to, message)` (the node wraps every message in
a signed envelope), `CheckReachability(member)` (can a TCP connection to the member's
port be made? answer with `on_transport_probe_result`) and `MemberStateChanged`
events (log, count, publish, route around). `now` is any monotonic clock in seconds.

Protocol (SWIM, Das et al. 2002, with the Lifeguard refinements of hashicorp/memberlist,
plus quorum verdicts):

* Probing. Every `probe_interval_s` (times the local health multiplier) a node pings
  the next active (alive or suspect) member of a round-robin over a random
  permutation of its table. No Ack within `probe_timeout_s`: it asks
  `indirect_checks` other members to ping the target for it (PingReq); they relay
  the Ack or answer Nack, and it pings the target directly once more (memberlist's
  TCP fallback). No Ack by the end of the probe period: the target becomes SUSPECT
  for this node only. Suspicion is not gossiped cluster-wide (under packet loss the
  suspect/refute traffic of every member would swamp the 5 KB/s budget, and only a
  quorum verdict evicts anyway): the Suspect item goes to the target itself,
  piggybacked on a ping every `probe_timeout_s` for as long as the suspicion lasts
  (so a live member has many chances to answer), and implicitly to the observers.
* Local health (Lifeguard awareness): missed Nacks from relays and having to refute
  raise a 0..`max_health` score, successful probes lower it; probe interval and
  timeout are multiplied by score + 1, so a starved node slows its own accusations.
* Refutation. A suspicion is local, so it is refuted locally: the suspected member
  answers the suspector directly, and any authenticated message from a suspect (or
  an Ack relayed for it) clears the suspicion. A member hearing it is zombie/dead (or
  left, or alive with other meta) at an incarnation >= its own bumps its incarnation
  past it and gossips a new signed Alive to everyone. Incarnations only change by
  such broadcast statements: an incarnation bump told to a single suspector would make
  views diverge, and that Alive could later outrank a true verdict elsewhere.
* Order of statements about a member: (incarnation, state) compared
  lexicographically, state order ALIVE < SUSPECT < ZOMBIE < DEAD < LEFT; a gossiped
  statement is applied only if it is greater than what the node holds. So an Alive
  must carry a higher incarnation to clear a verdict, and stale gossip about an old
  verdict can never evict a member that refuted it.
* Quorum. Suspicion alone never evicts. The suspecting node runs an observation
  round: it asks `q - 1 + observe_extra` other active members (ObserveReq) to probe
  the subject themselves (`observe_attempts` pings `probe_timeout_s` apart) and to
  ask their transport whether the subject's port accepts connections. Each answers
  either "reached" or a signed Observation(observer, subject, incarnation, kind, time),
  kind DEAD (not transport reachable, no ack) or ZOMBIE (transport reachable, no ack).
  The suspector adds its own observation. It issues a Verdict once the suspicion has
  lasted `suspicion_min_s(n)` (Lifeguard's minimum, scaled by log10 n), it holds q
  failure observations from distinct observers, and no observer reached the subject
  (any "reached" vetoes the round; a new round starts after the maximum suspicion
  time while the member is still suspect). q = min(`quorum_max`, majority of the
  active members other than the subject). The verdict kind is the majority kind of
  the observations it carries (ties: ZOMBIE, the process exists somewhere).
  Receivers verify every signature, require distinct known observers other than the
  subject, matching subject/incarnation, at least their own q and a consistent kind
  before applying it. One node with a bad link therefore cannot evict a healthy peer:
  its indirect probes succeed, and the observers it asks reach the peer.
* Zombie then dead. Down (zombie/dead) members are pinged every
  `reconnect_interval_s` (one at random) with their verdict piggybacked; a zombie
  whose port stops accepting connections gets an upgrade round (DEAD beats ZOMBIE at
  the same incarnation).
* Recovery. A resumed zombie or restarted node hears of its verdict (piggybacked on
  anything sent to it, or told directly when it talks to a node that holds it down, or
  in push-pull state) and refutes with a higher incarnation: it is alive again
  everywhere. A node whose ticks stall for longer than `stall_threshold_s` (SIGSTOP,
  a starved event loop) drops its in-flight probes instead of accusing their targets.
* Dissemination. Changes are queued and piggybacked on every message (at most
  `max_piggyback_bytes`, fewest-transmitted first), and every `gossip_interval_s` a
  node with queued changes sends them to `gossip_fanout` random members. An item is
  sent at most `retransmit_mult * ceil(log10(n + 1))` times by each node.
* Join and anti-entropy. `join(seeds)` sends the node's state (PushPull, join=True) to
  the seeds, which answer with their full state (paged to `MAX_MESSAGE_BYTES`) and
  gossip the newcomer. Every `push_pull_interval_s` (scaled up above 32 members, as
  memberlist does) a node exchanges full state with one random member.
* Leave. `leave()` gossips a signed Left (sent directly to `leave_fanout` members);
  the node keeps answering pings until it is stopped.
* Reaping (`mesh._membership_reaper`). A member dead for `dead_reap_after_s` (24 h;
  10 min in the local preset: it may be partitioned, and while kept, reconnect probes
  tell it its verdict) or left for `left_reap_after_s` leaves the table (output
  `MemberReaped`), as does, beyond `max_down_members`, the one due soonest. Its
  tombstone (incarnation and signed status) keeps stale gossip from reviving it and is
  sent to the member if it speaks up again, so it refutes. Push-pull state does not
  teach a node members the sender already holds down. Roster members (the
  simulator's shared baseline) are never reaped.

What is signed (with the injected `sign`, checked with `verify(member, payload, sig)`):
a member's own Alive (so nobody can forge its metadata/endpoint), its own Left, and
every Observation. Suspect items are unsigned: they can only make a member refute.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vsmcp.mesh._membership_reaper import REAPED_STATES, Reaper, Tombstone
from vsmcp.mesh._membership_table import MemberRecord, MemberTable, ProbeCycle, Roster
from vsmcp.mesh._membership_wire import (
    MAX_GOSSIP_ITEMS,
    MAX_MESSAGE_BYTES,
    MAX_OBSERVATIONS,
    MAX_SEQ,
    MAX_STATE_ENTRIES,
    Ack,
    Alive,
    GossipItem,
    Left,
    MembershipDecodeError,
    MembershipError,
    MemberState,
    Message,
    MessageTooLarge,
    Nack,
    Observation,
    ObserveReq,
    ObserveResp,
    Ping,
    PingReq,
    PushPull,
    Suspect,
    Verdict,
    alive_payload,
    decode,
    encode,
    encoded_size,
    left_payload,
    observation_payload,
)
from vsmcp.mesh._membership_wire import Gossip as GossipMessage

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Ack",
    "Alive",
    "CheckReachability",
    "GossipItem",
    "GossipMessage",
    "Left",
    "MemberInfo",
    "MemberReaped",
    "MemberState",
    "MemberStateChanged",
    "Membership",
    "MembershipConfig",
    "MembershipDecodeError",
    "MembershipError",
    "Message",
    "MessageTooLarge",
    "Nack",
    "Observation",
    "ObserveReq",
    "ObserveResp",
    "Output",
    "Ping",
    "PingReq",
    "PushPull",
    "Roster",
    "Send",
    "SignFn",
    "Suspect",
    "Verdict",
    "VerifyFn",
    "decode",
    "encode",
    "make_observation",
    "quorum_size",
    "sign_alive",
    "sign_left",
]

SignFn = Callable[[bytes], bytes]
VerifyFn = Callable[[str, bytes, bytes], bool]

PUSH_PULL_SCALE_THRESHOLD_MEMBERS = 32
MAX_BROADCAST_QUEUE_ITEMS = 1024
VERIFIED_VERDICT_CACHE_ITEMS = 4096
DIRECT_VERDICT_MAX_MEMBERS = 32  # up to this size, a verdict's issuer tells every member


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    """Timing and fan-out. Use a preset; every time is in seconds."""

    probe_interval_s: float
    probe_timeout_s: float
    indirect_checks: int
    suspicion_mult: float  # min suspicion = mult * max(1, log10(n)) * probe_interval_s
    suspicion_max_mult: float  # max suspicion (new observation round) = mult * min
    quorum_max: int
    observe_extra: int  # observers asked beyond the q - 1 needed
    observe_attempts: int
    gossip_interval_s: float
    gossip_fanout: int
    retransmit_mult: int
    max_piggyback_bytes: int
    push_pull_interval_s: float
    reconnect_interval_s: float
    join_retry_s: float
    stall_threshold_s: float
    max_health: int = 8
    leave_fanout: int = 5
    # How long a dead (maybe only partitioned) or left member stays in the table, and
    # how many may; see mesh._membership_reaper. Serf keeps failed members 24 h.
    dead_reap_after_s: float = 86_400.0
    left_reap_after_s: float = 3_600.0
    max_down_members: int = 4096
    max_pending_relays: int = 64
    max_pending_observations: int = 64

    @classmethod
    def local(cls) -> MembershipConfig:
        """Loopback / one host: fast, relies on suspicion + quorum + refutation (not
        on short timeouts alone) to stay free of false positives under CPU load."""
        return cls(
            probe_interval_s=0.25,
            probe_timeout_s=0.15,
            indirect_checks=3,
            suspicion_mult=3.0,
            suspicion_max_mult=4.0,
            quorum_max=3,
            observe_extra=2,
            observe_attempts=4,
            gossip_interval_s=0.1,
            gossip_fanout=3,
            retransmit_mult=4,
            max_piggyback_bytes=1024,
            push_pull_interval_s=10.0,
            reconnect_interval_s=1.0,
            join_retry_s=1.0,
            stall_threshold_s=1.0,
            dead_reap_after_s=600.0,
            left_reap_after_s=60.0,
        )

    @classmethod
    def lan(cls) -> MembershipConfig:
        return cls(
            probe_interval_s=0.3,
            probe_timeout_s=0.2,
            indirect_checks=3,
            suspicion_mult=3.0,
            suspicion_max_mult=4.0,
            quorum_max=3,
            observe_extra=2,
            observe_attempts=4,
            gossip_interval_s=0.15,
            gossip_fanout=3,
            retransmit_mult=4,
            max_piggyback_bytes=1024,
            push_pull_interval_s=30.0,
            reconnect_interval_s=2.0,
            join_retry_s=2.0,
            stall_threshold_s=1.5,
        )

    @classmethod
    def wan(cls) -> MembershipConfig:
        return cls(
            probe_interval_s=2.0,
            probe_timeout_s=1.0,
            indirect_checks=3,
            suspicion_mult=4.0,
            suspicion_max_mult=4.0,
            quorum_max=3,
            observe_extra=2,
            observe_attempts=4,
            gossip_interval_s=0.5,
            gossip_fanout=4,
            retransmit_mult=4,
            max_piggyback_bytes=1024,
            push_pull_interval_s=60.0,
            reconnect_interval_s=10.0,
            join_retry_s=5.0,
            stall_threshold_s=8.0,
        )

    def suspicion_min_s(self, n: int) -> float:
        return self.suspicion_mult * max(1.0, math.log10(max(n, 1))) * self.probe_interval_s

    def suspicion_max_s(self, n: int) -> float:
        return self.suspicion_min_s(n) * self.suspicion_max_mult

    def retransmit_limit(self, n: int) -> int:
        return self.retransmit_mult * max(1, math.ceil(math.log10(n + 1)))

    def push_pull_period_s(self, n: int) -> float:
        if n <= PUSH_PULL_SCALE_THRESHOLD_MEMBERS:
            return self.push_pull_interval_s
        scale = math.ceil(math.log2(n) - math.log2(PUSH_PULL_SCALE_THRESHOLD_MEMBERS)) + 1
        return self.push_pull_interval_s * scale

    @property
    def observe_window_s(self) -> float:
        return self.observe_attempts * self.probe_timeout_s


# --- outputs ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send `message` to member `to` (in a signed envelope)."""

    to: str
    message: Message


@dataclass(frozen=True, slots=True)
class CheckReachability:
    """Try a transport-level connection to `member`; answer with
    `on_transport_probe_result(member, reachable, now)` within `probe_timeout_s`."""

    member: str


@dataclass(frozen=True, slots=True)
class MemberStateChanged:
    """`member` changed state (`old` None: newly learnt), or changed meta (old == new)."""

    member: str
    old: MemberState | None
    new: MemberState
    incarnation: int
    meta: bytes
    at: float


@dataclass(frozen=True, slots=True)
class MemberReaped:
    """`member`, down (`state` DEAD or LEFT) long enough, left the table."""

    member: str
    state: MemberState
    incarnation: int
    at: float


Output = Send | CheckReachability | MemberStateChanged | MemberReaped


@dataclass(frozen=True, slots=True)
class MemberInfo:
    id: str
    state: MemberState
    incarnation: int
    meta: bytes
    changed_at: float
    is_self: bool


# --- helpers shared with tests / the node ---------------------------------------------


def sign_alive(member: str, incarnation: int, meta: bytes, sign: SignFn) -> Alive:
    return Alive(member, incarnation, meta, sign(alive_payload(member, incarnation, meta)))


def sign_left(member: str, incarnation: int, sign: SignFn) -> Left:
    return Left(member, incarnation, sign(left_payload(member, incarnation)))


def make_observation(
    observer: str, subject: str, incarnation: int, kind: MemberState, now: float, sign: SignFn
) -> Observation:
    at_ms = max(0, int(now * 1000))
    payload = observation_payload(observer, subject, incarnation, int(kind), at_ms)
    return Observation(observer, subject, incarnation, int(kind), at_ms, sign(payload))


def quorum_size(active_members_other_than_subject: int, quorum_max: int) -> int:
    """q = min(quorum_max, majority of the active members other than the subject)."""
    return max(1, min(quorum_max, active_members_other_than_subject // 2 + 1))


def verdict_kind(observations: Sequence[Observation]) -> MemberState:
    zombies = sum(1 for o in observations if o.kind == MemberState.ZOMBIE)
    return MemberState.ZOMBIE if 2 * zombies >= len(observations) else MemberState.DEAD


# --- internal state -------------------------------------------------------------------

_T_PROBE_TIMEOUT = 0
_T_PROBE_END = 1
_T_RELAY_NACK = 2
_T_RELAY_DROP = 3
_T_OBSERVE_STEP = 4
_T_OWN_OBSERVATION = 5
_T_SUSPICION_MIN = 6
_T_SUSPICION_MAX = 7
_T_SUSPICION_PING = 8


@dataclass(slots=True)
class _Probe:
    target: str
    incarnation: int
    reconnect: bool
    started: float
    acked: bool = False
    indirect: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    requester: str
    seq: int
    target: str
    acked: bool = False


@dataclass(slots=True)
class _ObserveTask:
    requester: str
    round: int
    subject: str
    incarnation: int
    started: float
    attempts_left: int
    seqs: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Suspicion:
    subject: str
    incarnation: int
    token: int
    started: float
    min_at: float
    max_at: float
    asked: set[str]
    observations: dict[str, Observation] = field(default_factory=dict)
    reached: int = 0
    own_pending: bool = True


@dataclass(slots=True)
class _Queued:
    item: GossipItem
    size: int
    transmits: int = 0


class _Broadcasts:
    """Queued gossip, one item per subject (a newer statement replaces an older one)."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: dict[str, _Queued] = {}

    def __len__(self) -> int:
        return len(self._items)

    def discard(self, subject: str) -> None:
        self._items.pop(subject, None)

    def push(self, subject: str, item: GossipItem) -> None:
        self._items[subject] = _Queued(item, encoded_size(item))
        if len(self._items) > MAX_BROADCAST_QUEUE_ITEMS:
            worst = max(self._items, key=lambda s: self._items[s].transmits)
            del self._items[worst]

    def take(
        self, budget_bytes: int, limit: int, skip: str | None, max_items: int
    ) -> list[GossipItem]:
        if not self._items or max_items <= 0:
            return []
        entries: list[tuple[str, _Queued]] = list(self._items.items())
        if len(entries) > 1:
            entries.sort(key=lambda kv: kv[1].transmits)
        picked: list[GossipItem] = []
        spent = 0
        done: list[str] = []
        for subject, entry in entries:
            if subject == skip or spent + entry.size > budget_bytes:
                continue
            spent += entry.size
            picked.append(entry.item)
            entry.transmits += 1
            if entry.transmits >= limit:
                done.append(subject)
            if len(picked) >= max_items:
                break
        for subject in done:
            del self._items[subject]
        return picked


class Membership:
    """One node's membership state machine. See the module docstring for the protocol."""

    def __init__(
        self,
        self_id: str,
        *,
        meta: bytes,
        sign: SignFn,
        verify: VerifyFn,
        config: MembershipConfig,
        now: float,
        incarnation: int = 0,
        rng: random.Random | None = None,
        roster: Roster | None = None,
    ) -> None:
        self._id = self_id
        self._sign = sign
        self._verify = verify
        self._cfg = config
        self._rng = rng if rng is not None else random.Random()
        self._table = MemberTable(roster)
        self._reaper = Reaper(config.max_down_members)
        self._cycle = ProbeCycle()
        self._broadcasts = _Broadcasts()
        self._heap: list[tuple[float, int, int, int | str, int]] = []
        self._timer_seq = 0
        self._seq = self._rng.randrange(1 << 31)
        self._token = 0
        self._health = 0
        self._left = False
        self._inc = incarnation
        self._alive = sign_alive(self_id, incarnation, meta, sign)
        self._probes: dict[int, _Probe] = {}
        self._relays: dict[int, _Relay] = {}
        self._observe_tasks: dict[int, _ObserveTask] = {}
        self._observe_seqs: dict[int, int] = {}
        self._suspicions: dict[str, _Suspicion] = {}
        self._reach: dict[str, tuple[bool, float]] = {}
        self._reach_requested: dict[str, float] = {}
        self._notified: dict[str, float] = {}
        self._verified_verdicts: set[tuple[str, int, int]] = set()
        self._join_seeds: list[str] = []
        self._join_pending = False
        self._join_retry_at = math.inf
        interval = config.probe_interval_s
        self._next_probe_at = now + self._rng.uniform(0.0, interval)
        self._next_gossip_at = now
        self._next_reconnect_at = now + config.reconnect_interval_s
        period = config.push_pull_period_s(max(len(self._table), 1))
        self._next_push_pull_at = now + self._rng.uniform(0.5, 1.0) * period
        self.stats: Counter[str] = Counter()
        own = self._table.get(self_id)
        if own is None or own.alive != self._alive:
            rec = MemberRecord(self._alive, MemberState.ALIVE, incarnation, now)
            self._table.put(rec, None if own is None else own.state)

    # --- public view ------------------------------------------------------------------

    @property
    def self_id(self) -> str:
        return self._id

    @property
    def incarnation(self) -> int:
        return self._inc

    @property
    def health(self) -> int:
        """Lifeguard local health score, 0 (healthy) .. max_health."""
        return self._health

    @property
    def config(self) -> MembershipConfig:
        return self._cfg

    @property
    def has_left(self) -> bool:
        return self._left

    def active_count(self) -> int:
        """Alive or suspect members, self included."""
        return self._table.active_count

    def state_of(self, member: str) -> MemberState | None:
        return self._table.state_of(member)

    def member(self, member: str) -> MemberInfo | None:
        rec = self._table.get(member)
        return None if rec is None else self._info(rec)

    def reaped_meta(self, member: str) -> bytes | None:
        """The last metadata of a reaped member (while its tombstone lasts)."""
        tombstone = self._reaper.tombstone(member)
        return None if tombstone is None else tombstone.meta

    def members(self) -> list[MemberInfo]:
        return [self._info(rec) for rec in self._table]

    def overlay_size(self) -> int:
        """Members whose record differs from the shared roster (memory diagnostics)."""
        return self._table.overlay_size

    def _info(self, rec: MemberRecord) -> MemberInfo:
        return MemberInfo(
            rec.member,
            rec.state,
            rec.incarnation,
            rec.alive.meta,
            rec.changed_at,
            rec.member == self._id,
        )

    def next_deadline(self) -> float | None:
        """Call `tick` no later than this (None: only when a message arrives)."""
        best = self._heap[0][0] if self._heap else math.inf
        if not self._left:
            best = min(best, self._next_probe_at, self._next_push_pull_at, self._join_retry_at)
            if self._table.down:
                best = min(best, self._next_reconnect_at)
        reap_at = self._reaper.next_due()
        if reap_at is not None:
            best = min(best, reap_at)
        if self._broadcasts:
            best = min(best, self._next_gossip_at)
        return None if best == math.inf else best

    # --- inputs -----------------------------------------------------------------------

    def join(self, seed_ids: Sequence[str], now: float) -> list[Output]:
        """Contact known members (push-pull with join=True); retried every
        `join_retry_s` until some member answers with its state."""
        out: list[Output] = []
        if self._left:
            self._left = False
            self._refute(self._inc, now, out, ())
        self._join_seeds = [s for s in seed_ids if s != self._id]
        if not self._join_seeds:
            return out
        self._join_pending = True
        self._send_join(now, out)
        return out

    def leave(self, now: float) -> list[Output]:
        """Leave gracefully: gossip a signed Left; keep calling tick/on_message for a
        few gossip intervals so it spreads, then stop."""
        out: list[Output] = []
        if self._left:
            return out
        self._left = True
        self._join_pending = False
        self._join_retry_at = math.inf
        left = sign_left(self._id, self._inc, self._sign)
        own = self._table.get(self._id)
        assert own is not None
        old = own.state
        own.state, own.status, own.changed_at = MemberState.LEFT, left, now
        self._table.put(own, old)
        self._broadcasts.push(self._id, left)
        for member in self._table.sample_active(self._cfg.leave_fanout, (self._id,), self._rng):
            out.append(Send(member, GossipMessage([left])))
        self._probes.clear()
        self._suspicions.clear()
        return out

    def update_meta(self, meta: bytes, now: float) -> list[Output]:
        """Publish new metadata (a new incarnation)."""
        out: list[Output] = []
        self._announce(self._inc + 1, meta, now)
        return out

    def on_message_bytes(self, sender: str, data: bytes, now: float) -> list[Output]:
        """Decode wire bytes and handle them; raises `MembershipDecodeError`."""
        return self.on_message(sender, decode(data), now)

    def on_message(self, sender: str, message: Message, now: float) -> list[Output]:
        out: list[Output] = []
        if sender == self._id:
            return out
        self.stats["rx_" + type(message).__name__] += 1
        if isinstance(message, PushPull):
            self._on_push_pull(sender, message, now, out)
            return out
        if not isinstance(message, Nack):
            for item in message.gossip:
                self._apply(item, sender, now, out)
        self._heard_from(sender, now, out)
        if isinstance(message, Ping):
            self._on_ping(sender, message, out)
        elif isinstance(message, Ack):
            self._on_ack(sender, message, now, out)
        elif isinstance(message, Nack):
            probe = self._probes.get(message.seq)
            if probe is not None and probe.target == message.target:
                probe.nacks += 1
        elif isinstance(message, PingReq):
            self._on_ping_req(sender, message, now, out)
        elif isinstance(message, ObserveReq):
            self._on_observe_req(sender, message, now, out)
        elif isinstance(message, ObserveResp):
            self._on_observe_resp(sender, message, now, out)
        return out

    def on_transport_probe_result(self, member: str, reachable: bool, now: float) -> list[Output]:
        out: list[Output] = []
        self._reach_requested.pop(member, None)
        self._reach[member] = (reachable, now)
        s = self._suspicions.get(member)
        if s is not None and s.own_pending:
            self._own_observation(s, reachable, now, out)
        return out

    def tick(self, now: float) -> list[Output]:
        out: list[Output] = []
        if not self._left and now - self._next_probe_at > self._cfg.stall_threshold_s:
            self._recover_from_stall(now)
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, kind, key, token = heapq.heappop(heap)
            self._on_timer(kind, key, token, now, out)
        for member in self._reaper.take_due(now):
            self._reap(member, now, out)
        if not self._left:
            if now >= self._next_probe_at:
                self._probe_tick(now, out)
            if now >= self._next_reconnect_at:
                self._next_reconnect_at = now + self._cfg.reconnect_interval_s
                self._reconnect_tick(now, out)
            if now >= self._next_push_pull_at:
                self._next_push_pull_at = now + self._cfg.push_pull_period_s(
                    self._table.active_count
                )
                self._push_pull_tick(out)
            if self._join_pending and now >= self._join_retry_at:
                self._send_join(now, out)
        if now >= self._next_gossip_at and self._broadcasts:
            self._next_gossip_at = now + self._cfg.gossip_interval_s
            self._gossip_tick(out)
        return out

    # --- timers -----------------------------------------------------------------------

    def _at(self, when: float, kind: int, key: int | str, token: int = 0) -> None:
        self._timer_seq += 1
        heapq.heappush(self._heap, (when, self._timer_seq, kind, key, token))

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % MAX_SEQ
        return self._seq

    def _scale(self) -> int:
        return self._health + 1

    def _on_timer(
        self, kind: int, key: int | str, token: int, now: float, out: list[Output]
    ) -> None:
        if kind == _T_PROBE_TIMEOUT:
            assert isinstance(key, int)
            self._probe_timeout(key, now, out)
        elif kind == _T_PROBE_END:
            assert isinstance(key, int)
            self._probe_end(key, now, out)
        elif kind == _T_RELAY_NACK:
            relay = self._relays.get(int(key))
            if relay is not None and not relay.acked:
                out.append(Send(relay.requester, Nack(relay.seq, relay.target)))
        elif kind == _T_RELAY_DROP:
            self._relays.pop(int(key), None)
        elif kind == _T_OBSERVE_STEP:
            assert isinstance(key, int)
            self._observe_step(key, now, out)
        else:
            assert isinstance(key, str)
            s = self._suspicions.get(key)
            if s is None or s.token != token:
                return
            if kind == _T_OWN_OBSERVATION:
                if s.own_pending:
                    # no transport answer in time: treat the port as closed
                    self._own_observation(s, False, now, out)
            elif kind == _T_SUSPICION_MIN:
                self._try_verdict(s, now, out)
            elif kind == _T_SUSPICION_MAX:
                self._suspicion_expired(s, now, out)
            elif kind == _T_SUSPICION_PING:
                self._suspicion_ping(s, now, out)

    def _recover_from_stall(self, now: float) -> None:
        """Our own ticks were late: nothing we timed out is evidence against others."""
        self.stats["stalls"] += 1
        self._heap.clear()
        self._probes.clear()
        self._relays.clear()
        self._observe_tasks.clear()
        self._observe_seqs.clear()
        self._suspicions.clear()
        self._next_probe_at = now + self._rng.uniform(0.0, self._cfg.probe_interval_s)

    # --- probing ----------------------------------------------------------------------

    def _probe_tick(self, now: float, out: list[Output]) -> None:
        cfg = self._cfg
        self._next_probe_at = now + cfg.probe_interval_s * self._scale()
        target = self._next_probe_target()
        if target is None:
            return
        rec = self._table.get(target)
        assert rec is not None
        self._start_probe(target, rec.incarnation, False, now, out)

    def _next_probe_target(self) -> str | None:
        size = len(self._table)
        for _ in range(size):
            index = self._cycle.next_index(size, self._rng)
            if index is None or index >= len(self._table):
                continue
            member = self._table.id_at(index)
            if member != self._id and self._table.is_active(member):
                return member
        return None

    def _start_probe(
        self, target: str, incarnation: int, reconnect: bool, now: float, out: list[Output]
    ) -> None:
        seq = self._next_seq()
        self._probes[seq] = _Probe(target, incarnation, reconnect, now)
        out.append(Send(target, Ping(seq, target, self._gossip_for(target))))
        self.stats["probes"] += 1
        scale = self._scale()
        self._at(now + self._cfg.probe_timeout_s * scale, _T_PROBE_TIMEOUT, seq)
        self._at(now + self._cfg.probe_interval_s * scale, _T_PROBE_END, seq)

    def _probe_timeout(self, seq: int, now: float, out: list[Output]) -> None:
        probe = self._probes.get(seq)
        if probe is None or probe.acked:
            return
        if probe.reconnect:
            if self._table.state_of(probe.target) == MemberState.ZOMBIE:
                self._request_reach(probe.target, now, out)
            return
        # one more direct try (memberlist's TCP fallback ping) alongside the relays
        out.append(Send(probe.target, Ping(seq, probe.target, self._gossip_for(probe.target))))
        relays = self._table.sample_active(
            self._cfg.indirect_checks, (self._id, probe.target), self._rng
        )
        for relay in relays:
            out.append(Send(relay, PingReq(seq, probe.target, self._gossip_for(relay))))
        probe.indirect = len(relays)
        self.stats["indirect_probes"] += len(relays)

    def _probe_end(self, seq: int, now: float, out: list[Output]) -> None:
        probe = self._probes.pop(seq, None)
        if probe is None:
            return
        if probe.acked:
            self._health = max(0, self._health - 1)
            return
        if probe.reconnect:
            reach = self._reach.get(probe.target)
            fresh_closed = reach is not None and not reach[0] and reach[1] >= probe.started
            if fresh_closed and self._table.state_of(probe.target) == MemberState.ZOMBIE:
                self._start_round(probe.target, now, out)
            return
        if probe.indirect:
            missed = probe.indirect - probe.nacks
            self._health = min(self._cfg.max_health, self._health + max(0, missed))
        rec = self._table.get(probe.target)
        if rec is None or rec.incarnation != probe.incarnation:
            return
        if rec.state == MemberState.ALIVE:
            suspect = Suspect(probe.target, rec.incarnation, self._id)
            self._set(rec, MemberState.SUSPECT, rec.incarnation, suspect, now, out)
            self.stats["suspicions"] += 1
        if rec.state == MemberState.SUSPECT and probe.target not in self._suspicions:
            self._start_round(probe.target, now, out)

    def _reconnect_tick(self, now: float, out: list[Output]) -> None:
        down = self._table.down
        if not down:
            return
        target = self._rng.choice(sorted(down)) if len(down) > 1 else next(iter(down))
        rec = self._table.get(target)
        assert rec is not None
        self._start_probe(target, rec.incarnation, True, now, out)

    def _on_ping(self, sender: str, ping: Ping, out: list[Output]) -> None:
        if ping.target != self._id:
            self.stats["ping_wrong_target"] += 1
            return
        out.append(Send(sender, Ack(ping.seq, self._id, self._gossip_for(sender))))

    def _on_ack(self, sender: str, ack: Ack, now: float, out: list[Output]) -> None:
        seq = ack.seq
        probe = self._probes.get(seq)
        if probe is not None and probe.target == ack.responder:
            probe.acked = True
            if self._table.state_of(probe.target) == MemberState.SUSPECT:
                self._clear_suspicion(probe.target, now, out)  # a relay vouches for it
            return
        relay = self._relays.get(seq)
        if relay is not None and relay.target == ack.responder and sender == relay.target:
            relay.acked = True
            gossip = self._gossip_for(relay.requester)
            out.append(Send(relay.requester, Ack(relay.seq, relay.target, gossip)))
            return
        tid = self._observe_seqs.get(seq)
        if tid is not None:
            task = self._observe_tasks.get(tid)
            if task is not None and task.subject == ack.responder == sender:
                self._finish_observe(task, True, now, out)

    def _on_ping_req(self, sender: str, req: PingReq, now: float, out: list[Output]) -> None:
        if req.target == self._id:
            out.append(Send(sender, Ack(req.seq, self._id, self._gossip_for(sender))))
            return
        if len(self._relays) >= self._cfg.max_pending_relays:
            self.stats["relay_dropped"] += 1
            return
        seq = self._next_seq()
        self._relays[seq] = _Relay(sender, req.seq, req.target)
        out.append(Send(req.target, Ping(seq, req.target, self._gossip_for(req.target))))
        self._at(now + self._cfg.probe_timeout_s, _T_RELAY_NACK, seq)
        self._at(now + self._cfg.probe_interval_s, _T_RELAY_DROP, seq)

    def _heard_from(self, sender: str, now: float, out: list[Output]) -> None:
        """Any message from a member is evidence that its application runs."""
        if self._table.state_of(sender) == MemberState.SUSPECT:
            self._clear_suspicion(sender, now, out)
        if self._observe_tasks:
            for task in list(self._observe_tasks.values()):
                if task.subject == sender:
                    self._finish_observe(task, True, now, out)
        state = self._table.state_of(sender)
        if state is None:
            self._tell_reaped(sender, now, out)
        elif state in (MemberState.ZOMBIE, MemberState.DEAD) and self._may_notify(
            sender, now, self._cfg.probe_interval_s
        ):
            # it may not know: tell it (rate-limited) so that it refutes
            rec = self._table.get(sender)
            if rec is not None and rec.status is not None:
                out.append(Send(sender, GossipMessage([rec.status])))

    def _may_notify(self, member: str, now: float, interval_s: float) -> bool:
        """Rate limit of direct notices to one member (bounded: cleared when large)."""
        if now - self._notified.get(member, -math.inf) < interval_s:
            return False
        if len(self._notified) >= 4 * MAX_BROADCAST_QUEUE_ITEMS:
            self._notified.clear()
        self._notified[member] = now
        return True

    # --- observation rounds (quorum) --------------------------------------------------

    def _quorum(self, subject: str) -> int:
        others = self._table.active_count - (1 if self._table.is_active(subject) else 0)
        return quorum_size(others, self._cfg.quorum_max)

    def _start_round(self, subject: str, now: float, out: list[Output]) -> None:
        rec = self._table.get(subject)
        if rec is None:
            return
        cfg = self._cfg
        self._token += 1
        q = self._quorum(subject)
        asked = self._table.sample_active(q - 1 + cfg.observe_extra, (self._id, subject), self._rng)
        n = self._table.active_count
        s = _Suspicion(
            subject,
            rec.incarnation,
            self._token,
            now,
            now + cfg.suspicion_min_s(n),
            now + cfg.suspicion_max_s(n),
            set(asked),
        )
        self._suspicions[subject] = s
        self.stats["observation_rounds"] += 1
        for observer in asked:
            req = ObserveReq(s.token, subject, s.incarnation, self._gossip_for(observer))
            out.append(Send(observer, req))
        self._suspicion_ping(s, now, out)
        self._request_reach(subject, now, out)
        self._at(now + cfg.observe_window_s, _T_OWN_OBSERVATION, subject, s.token)
        self._at(s.min_at, _T_SUSPICION_MIN, subject, s.token)
        self._at(s.max_at, _T_SUSPICION_MAX, subject, s.token)

    def _suspicion_ping(self, s: _Suspicion, now: float, out: list[Output]) -> None:
        """Keep pinging the suspect (its Suspect item piggybacked) for as long as the
        suspicion lasts: a live member gets many chances to answer, and any message
        from it clears the suspicion (`_heard_from`)."""
        if now >= s.min_at:
            return
        seq = self._next_seq()
        out.append(Send(s.subject, Ping(seq, s.subject, self._gossip_for(s.subject))))
        self._at(now + self._cfg.probe_timeout_s, _T_SUSPICION_PING, s.subject, s.token)

    def _request_reach(self, member: str, now: float, out: list[Output]) -> None:
        asked_at = self._reach_requested.get(member)
        if asked_at is not None and now - asked_at < self._cfg.probe_timeout_s:
            return
        self._reach_requested[member] = now
        out.append(CheckReachability(member))

    def _own_observation(
        self, s: _Suspicion, reachable: bool, now: float, out: list[Output]
    ) -> None:
        s.own_pending = False
        kind = MemberState.ZOMBIE if reachable else MemberState.DEAD
        s.observations[self._id] = make_observation(
            self._id, s.subject, s.incarnation, kind, now, self._sign
        )
        self._try_verdict(s, now, out)

    def _on_observe_req(self, sender: str, req: ObserveReq, now: float, out: list[Output]) -> None:
        if req.subject == self._id or req.subject == sender:
            return
        rec = self._table.get(req.subject)
        if rec is not None and rec.incarnation > req.incarnation and rec.state == MemberState.ALIVE:
            # it refuted already: say so and hand over the proof
            gossip = [rec.alive, *self._gossip_for(sender)][:MAX_GOSSIP_ITEMS]
            resp = ObserveResp(req.round, req.subject, req.incarnation, True, None, gossip)
            out.append(Send(sender, resp))
            return
        if len(self._observe_tasks) >= self._cfg.max_pending_observations:
            self.stats["observe_dropped"] += 1
            return
        self._token += 1
        task = _ObserveTask(
            sender, req.round, req.subject, req.incarnation, now, self._cfg.observe_attempts
        )
        self._observe_tasks[self._token] = task
        self._request_reach(req.subject, now, out)
        self._observe_step(self._token, now, out)

    def _observe_step(self, tid: int, now: float, out: list[Output]) -> None:
        task = self._observe_tasks.get(tid)
        if task is None:
            return
        if task.attempts_left <= 0:
            self._finish_observe(task, False, now, out)
            return
        task.attempts_left -= 1
        seq = self._next_seq()
        task.seqs.append(seq)
        self._observe_seqs[seq] = tid
        out.append(Send(task.subject, Ping(seq, task.subject, self._gossip_for(task.subject))))
        self._at(now + self._cfg.probe_timeout_s, _T_OBSERVE_STEP, tid)

    def _finish_observe(
        self, task: _ObserveTask, reached: bool, now: float, out: list[Output]
    ) -> None:
        for tid, t in list(self._observe_tasks.items()):
            if t is task:
                del self._observe_tasks[tid]
        for seq in task.seqs:
            self._observe_seqs.pop(seq, None)
        observation = None
        if not reached:
            reach = self._reach.get(task.subject)
            reachable = reach is not None and reach[0] and reach[1] >= task.started
            kind = MemberState.ZOMBIE if reachable else MemberState.DEAD
            observation = make_observation(
                self._id, task.subject, task.incarnation, kind, now, self._sign
            )
        gossip = self._gossip_for(task.requester)
        if reached:
            rec = self._table.get(task.subject)
            if rec is not None and rec.incarnation > task.incarnation:
                gossip = [rec.alive, *gossip][:MAX_GOSSIP_ITEMS]
        resp = ObserveResp(task.round, task.subject, task.incarnation, reached, observation, gossip)
        out.append(Send(task.requester, resp))

    def _on_observe_resp(
        self, sender: str, resp: ObserveResp, now: float, out: list[Output]
    ) -> None:
        s = self._suspicions.get(resp.subject)
        if s is None or s.token != resp.round or sender not in s.asked:
            return
        if resp.incarnation != s.incarnation:
            return
        if resp.reached:
            s.reached += 1
            return
        obs = resp.observation
        if (
            obs is None
            or obs.observer != sender
            or obs.subject != s.subject
            or obs.incarnation != s.incarnation
            or not self._check_observation(obs)
        ):
            self.stats["observation_rejected"] += 1
            return
        s.observations[sender] = obs
        self._try_verdict(s, now, out)

    def _check_observation(self, obs: Observation) -> bool:
        payload = observation_payload(
            obs.observer, obs.subject, obs.incarnation, obs.kind, obs.at_ms
        )
        return self._verify(obs.observer, payload, obs.signature)

    def _try_verdict(self, s: _Suspicion, now: float, out: list[Output]) -> None:
        if now < s.min_at or s.reached:
            return
        q = self._quorum(s.subject)
        if len(s.observations) < q:
            return
        mine = s.observations.get(self._id)
        others = [o for o in s.observations.values() if o is not mine]
        chosen = ([mine] if mine is not None else []) + others
        chosen = chosen[: min(MAX_OBSERVATIONS, max(q, self._cfg.quorum_max))]
        verdict = Verdict(s.subject, s.incarnation, int(verdict_kind(chosen)), chosen)
        del self._suspicions[s.subject]
        self.stats["verdicts_issued"] += 1
        if self._apply_verdict(verdict, self._id, now, out, checked=True):
            self._tell_everyone(verdict, out)

    def _tell_everyone(self, verdict: Verdict, out: list[Output]) -> None:
        """In a small mesh, send a fresh verdict to every active member at once: one
        message each bounds its spread to one delay, where gossip alone can leave a
        straggler waiting for its own probe (seen on loopback under load)."""
        if self._table.active_count > DIRECT_VERDICT_MAX_MEMBERS:
            return
        exclude = (self._id, verdict.subject)
        for member in self._table.sample_active(DIRECT_VERDICT_MAX_MEMBERS, exclude, self._rng):
            out.append(Send(member, GossipMessage([verdict])))

    def _suspicion_expired(self, s: _Suspicion, now: float, out: list[Output]) -> None:
        del self._suspicions[s.subject]
        if self._table.state_of(s.subject) == MemberState.SUSPECT:
            self.stats["observation_rounds_repeated"] += 1
            self._start_round(s.subject, now, out)

    def _check_verdict(self, v: Verdict) -> str | None:
        """None if `v` is acceptable here, else the reason it is not."""
        key = (v.subject, v.incarnation, v.kind)
        if key in self._verified_verdicts:
            return None
        valid: list[Observation] = []
        seen: set[str] = set()
        for obs in v.observations:
            if (
                obs.observer in seen
                or obs.observer == v.subject
                or obs.subject != v.subject
                or obs.incarnation != v.incarnation
                or obs.observer not in self._table
            ):
                continue
            if not self._check_observation(obs):
                return "bad_signature"
            seen.add(obs.observer)
            valid.append(obs)
        if len(valid) < self._quorum(v.subject):
            return "no_quorum"
        if int(verdict_kind(valid)) != v.kind:
            return "kind_mismatch"
        if len(self._verified_verdicts) >= VERIFIED_VERDICT_CACHE_ITEMS:
            self._verified_verdicts.clear()
        self._verified_verdicts.add(key)
        return None

    # --- applying statements ------------------------------------------------------------

    def _apply(self, item: GossipItem, sender: str, now: float, out: list[Output]) -> bool:
        if isinstance(item, Alive):
            return self._apply_alive(item, sender, now, out)
        if isinstance(item, Suspect):
            return self._apply_suspect(item, sender, now, out)
        if isinstance(item, Verdict):
            return self._apply_verdict(item, sender, now, out)
        return self._apply_left(item, sender, now, out)

    def _apply_alive(self, a: Alive, sender: str, now: float, out: list[Output]) -> bool:
        if a.member == self._id:
            if not self._left and (
                a.incarnation > self._inc or (a.incarnation == self._inc and a != self._alive)
            ):
                self._refute(a.incarnation, now, out, (sender,))
            return False
        rec = self._table.get(a.member)
        if rec is not None and a.incarnation <= rec.incarnation:
            return False
        if rec is None and self._is_buried(a.member, a.incarnation):
            self.stats["alive_of_reaped_ignored"] += 1
            if sender == a.member:
                self._tell_reaped(sender, now, out)
            return False
        if not self._verify(a.member, alive_payload(a.member, a.incarnation, a.meta), a.signature):
            self.stats["alive_rejected_bad_signature"] += 1
            return False
        if rec is None:
            self._reaper.exhume(a.member)
            rec = MemberRecord(a, MemberState.ALIVE, a.incarnation, now)
            self._table.put(rec, None)
            out.append(
                MemberStateChanged(a.member, None, MemberState.ALIVE, a.incarnation, a.meta, now)
            )
        else:
            meta_changed = rec.alive.meta != a.meta
            rec.alive = a
            if rec.state != MemberState.ALIVE or meta_changed:
                self._set(rec, MemberState.ALIVE, a.incarnation, None, now, out)
            else:
                old = rec.state
                rec.incarnation = a.incarnation
                self._table.put(rec, old)
        self._broadcasts.push(a.member, a)
        return True

    def _apply_suspect(self, s: Suspect, sender: str, now: float, out: list[Output]) -> bool:
        """Suspicion is local to the suspector (never gossiped): only a Suspect about
        ourselves matters, and answering the suspector directly refutes it (any
        authenticated message from a suspect clears the suspicion). Incarnations are
        bumped only against cluster-wide statements (verdict, left), which are
        broadcast: a bump told to one node only would let that stale Alive outrank a
        later, true verdict elsewhere."""
        if s.member != self._id:
            self.stats["suspect_about_other_ignored"] += 1
            return False
        if self._left or s.suspector == self._id:
            return False
        if self._may_notify(s.suspector, now, self._cfg.probe_timeout_s):
            self.stats["refutations_direct"] += 1
            out.append(Send(s.suspector, GossipMessage([self._alive])))
        return False

    def _clear_suspicion(self, member: str, now: float, out: list[Output]) -> None:
        rec = self._table.get(member)
        if rec is None or rec.state != MemberState.SUSPECT:
            return
        self.stats["suspicions_cleared"] += 1
        self._set(rec, MemberState.ALIVE, rec.incarnation, None, now, out)
        self._suspicions.pop(member, None)

    def _apply_verdict(
        self, v: Verdict, sender: str, now: float, out: list[Output], checked: bool = False
    ) -> bool:
        if v.subject == self._id:
            if not self._left and v.incarnation >= self._inc:
                self._refute(v.incarnation, now, out, (sender,))
            return False
        rec = self._table.get(v.subject)
        if rec is None or (v.incarnation, v.kind) <= (rec.incarnation, rec.state):
            return False
        if not checked:
            reason = self._check_verdict(v)
            if reason is not None:
                self.stats["verdict_rejected_" + reason] += 1
                return False
        self.stats["verdicts_applied"] += 1
        self._set(rec, MemberState(v.kind), v.incarnation, v, now, out)
        self._broadcasts.push(v.subject, v)
        return True

    def _apply_left(self, left: Left, sender: str, now: float, out: list[Output]) -> bool:
        if left.member == self._id:
            if not self._left and left.incarnation >= self._inc:
                self._refute(left.incarnation, now, out, (sender,))
            return False
        rec = self._table.get(left.member)
        if rec is None or (left.incarnation, MemberState.LEFT) <= (rec.incarnation, rec.state):
            return False
        if not self._verify(
            left.member, left_payload(left.member, left.incarnation), left.signature
        ):
            self.stats["left_rejected_bad_signature"] += 1
            return False
        self._set(rec, MemberState.LEFT, left.incarnation, left, now, out)
        self._broadcasts.push(left.member, left)
        return True

    def _set(
        self,
        rec: MemberRecord,
        state: MemberState,
        incarnation: int,
        status: Suspect | Verdict | Left | None,
        now: float,
        out: list[Output],
    ) -> None:
        old = rec.state
        rec.state, rec.incarnation, rec.status, rec.changed_at = state, incarnation, status, now
        self._table.put(rec, old)
        out.append(MemberStateChanged(rec.member, old, state, incarnation, rec.alive.meta, now))
        if state == MemberState.DEAD:
            self._reaper.schedule(rec.member, state, now + self._cfg.dead_reap_after_s)
        elif state == MemberState.LEFT:
            self._reaper.schedule(rec.member, state, now + self._cfg.left_reap_after_s)
        elif old in REAPED_STATES:
            self._reaper.cancel(rec.member)
        s = self._suspicions.get(rec.member)
        if s is not None and (
            s.incarnation != incarnation or state not in (MemberState.SUSPECT, MemberState.ZOMBIE)
        ):
            del self._suspicions[rec.member]

    def _refute(
        self,
        at_incarnation: int,
        now: float,
        out: list[Output],
        notify: Sequence[str],
    ) -> None:
        """Bump our incarnation past `at_incarnation`, gossip the new Alive to everyone
        and tell `notify` directly."""
        self.stats["refutations"] += 1
        self._health = min(self._cfg.max_health, self._health + 1)
        self._announce(max(at_incarnation, self._inc) + 1, self._alive.meta, now)
        for member in notify:
            if member != self._id:
                out.append(Send(member, GossipMessage([self._alive])))

    def _announce(self, incarnation: int, meta: bytes, now: float) -> None:
        self._inc = incarnation
        self._alive = sign_alive(self._id, incarnation, meta, self._sign)
        own = self._table.get(self._id)
        old = None if own is None else own.state
        self._table.put(MemberRecord(self._alive, MemberState.ALIVE, incarnation, now), old)
        self._broadcasts.push(self._id, self._alive)

    # --- reaping (see mesh._membership_reaper) ----------------------------------------

    def _reap(self, member: str, now: float, out: list[Output]) -> None:
        rec = self._table.get(member)
        if rec is None or rec.state not in REAPED_STATES or member == self._id:
            return
        status = rec.status
        if not isinstance(status, Verdict | Left) or not self._table.remove(member):
            return  # roster members stay (the simulator's shared baseline)
        # The last member moved into the freed index: start a fresh probe round rather
        # than skip or repeat it in this one.
        self._cycle = ProbeCycle()
        self._reaper.bury(member, Tombstone(rec.incarnation, status, rec.alive.meta))
        self._broadcasts.discard(member)
        for per_member in (self._reach, self._reach_requested, self._notified):
            per_member.pop(member, None)
        self.stats["reaped"] += 1
        out.append(MemberReaped(member, rec.state, rec.incarnation, now))

    def _is_buried(self, member: str, incarnation: int) -> bool:
        tombstone = self._reaper.tombstone(member)
        return tombstone is not None and incarnation <= tombstone.incarnation

    def _tell_reaped(self, member: str, now: float, out: list[Output]) -> None:
        """A reaped member speaks: tell it (rate-limited) why it was reaped, so that it
        refutes with an incarnation above its tombstone's."""
        tombstone = self._reaper.tombstone(member)
        if tombstone is None or not self._may_notify(member, now, self._cfg.probe_interval_s):
            return
        self.stats["reaped_told"] += 1
        out.append(Send(member, GossipMessage([tombstone.status])))

    # --- dissemination ----------------------------------------------------------------

    def _gossip_for(self, dest: str) -> list[GossipItem]:
        """Piggyback: the destination's own non-alive status first (so it can refute),
        then the least-transmitted queued items within the byte budget."""
        items: list[GossipItem] = []
        budget = self._cfg.max_piggyback_bytes
        skip = None
        state = self._table.state_of(dest)
        if state is not None and state != MemberState.ALIVE:
            rec = self._table.get(dest)
            if rec is not None and rec.status is not None:
                items.append(rec.status)
                budget -= encoded_size(rec.status)
                skip = dest
        if self._broadcasts:
            limit = self._cfg.retransmit_limit(self._table.active_count)
            items += self._broadcasts.take(budget, limit, skip, MAX_GOSSIP_ITEMS - len(items))
        return items

    def _gossip_tick(self, out: list[Output]) -> None:
        targets = self._table.sample_active(self._cfg.gossip_fanout, (self._id,), self._rng)
        for target in targets:
            items = self._gossip_for(target)
            if items:
                out.append(Send(target, GossipMessage(items)))

    # --- push-pull / join -------------------------------------------------------------

    def _send_join(self, now: float, out: list[Output]) -> None:
        self._join_retry_at = now + self._cfg.join_retry_s
        seeds = list(self._join_seeds)
        self._rng.shuffle(seeds)
        for seed in seeds[:3]:
            for page in self._state_pages(join=True, reply=True):
                out.append(Send(seed, page))

    def _push_pull_tick(self, out: list[Output]) -> None:
        peers = self._table.sample_active(1, (self._id,), self._rng)
        for peer in peers:
            self.stats["push_pulls"] += 1
            for page in self._state_pages(join=False, reply=True):
                out.append(Send(peer, page))

    def _on_push_pull(self, sender: str, msg: PushPull, now: float, out: list[Output]) -> None:
        down = _down_in(msg)
        for alive in msg.alive:
            if (
                down.get(alive.member, -1) >= alive.incarnation
                and alive.member not in self._table
                and alive.member != self._id
            ):
                # A member we do not know, already down in the sender's view: learning
                # it would only announce it alive for a moment (memberlist ignores such
                # members too); if it is alive after all, it refutes and we hear of it.
                self.stats["push_pull_down_unknown_skipped"] += 1
                continue
            self._apply_alive(alive, sender, now, out)
        for status in msg.status:
            self._apply(status, sender, now, out)
        self._heard_from(sender, now, out)
        if not msg.reply:
            self._join_pending = False
            self._join_retry_at = math.inf
            return
        for page in self._state_pages(join=False, reply=False):
            out.append(Send(sender, page))

    def _state_pages(self, *, join: bool, reply: bool) -> list[PushPull]:
        """Our full state split into pages that each fit `MAX_MESSAGE_BYTES`."""
        budget = MAX_MESSAGE_BYTES - 1024
        pages: list[PushPull] = []
        alive: list[Alive] = []
        status: list[Suspect | Verdict | Left] = []
        spent = 0
        for rec in self._table:
            size = _estimate_size(rec.alive) + (
                0 if rec.status is None else _estimate_size(rec.status)
            )
            full = len(alive) >= MAX_STATE_ENTRIES or len(status) >= MAX_STATE_ENTRIES
            if alive and (spent + size > budget or full):
                pages.append(PushPull(join, reply, alive, status))
                alive, status, spent = [], [], 0
            alive.append(rec.alive)
            if rec.status is not None and not isinstance(rec.status, Suspect):
                status.append(rec.status)
            spent += size
        if alive:
            pages.append(PushPull(join, reply, alive, status))
        return pages


def _down_in(msg: PushPull) -> dict[str, int]:
    """Members the push-pull state holds dead, zombie or left, with the incarnation."""
    down: dict[str, int] = {}
    for status in msg.status:
        if isinstance(status, Verdict):
            down[status.subject] = status.incarnation
        elif isinstance(status, Left):
            down[status.member] = status.incarnation
    return down


def _estimate_size(item: GossipItem) -> int:
    """Upper bound on the encoded size (msgpack headers are at most 9 bytes a field)."""
    if isinstance(item, Alive):
        return len(item.member) * 4 + len(item.meta) + len(item.signature) + 32
    if isinstance(item, Suspect):
        return (len(item.member) + len(item.suspector)) * 4 + 24
    if isinstance(item, Left):
        return len(item.member) * 4 + len(item.signature) + 24
    return (
        len(item.subject) * 4
        + 32
        + sum(
            (len(o.observer) + len(o.subject)) * 4 + len(o.signature) + 40
            for o in item.observations
        )
    )
