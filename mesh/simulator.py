"""Discrete-event simulator for `mesh.membership`: N virtual nodes, virtual time.

Runs the real `Membership` state machine (same code the node drives) for every
virtual node over a simulated network: per-message loss, delay (base + exponential
jitter), partitions (groups that cannot reach each other) and single-link cuts
(directional), optional per-node processing lag (a CPU-starved event loop), and
per-node faults:

* `kill` - the process is gone: messages are dropped, the port refuses (dead);
* `stop` - SIGSTOP: the kernel still accepts connections (transport reachable) but
  the application neither runs timers nor reads messages (zombie); messages queue in
  a bounded backlog, handled on `resume`;
* `resume` - SIGCONT; `restart` - a fresh process with the same id and no memory
  (incarnation 0), which joins through a few running members.

Everything is one heap of timestamped events: message deliveries, transport
reachability answers and per-node timers. A node is only woken at its own
`next_deadline()` (or on a delivery), so there is no per-tick work for idle nodes.

Scale: all nodes start from one shared `Roster` (signed alive records), and every
state machine keeps only its differences from it (see `mesh._membership_table`), so
10,000 nodes fit in a few hundred MB. All nodes share one `random.Random` (the run
is deterministic for a seed). Signatures are keyed BLAKE2b-512 (64 bytes, like
Ed25519) so that sizes are realistic and verification is cheap; the state machine
does not know the difference.
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import hmac
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from vsmcp.mesh.membership import (
    CheckReachability,
    Membership,
    MembershipConfig,
    MembershipDecodeError,
    MemberState,
    MemberStateChanged,
    Message,
    Output,
    Roster,
    Send,
    decode,
    encode,
    sign_alive,
)

__all__ = [
    "ENVELOPE_OVERHEAD_BYTES",
    "NetworkConfig",
    "NodeStatus",
    "SimKeys",
    "Simulator",
    "make_node_id",
]

# What the signed envelope adds to every membership message on the real wire
# (version, type, ids, nonce, timestamp, context, 64-byte signature): an estimate.
ENVELOPE_OVERHEAD_BYTES = 200
MAX_BACKLOG_MESSAGES = 1000
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

_EV_TICK = 0
_EV_DELIVER = 1
_EV_REACH = 2


def make_node_id(seed: int, index: int) -> str:
    """A libp2p-looking Ed25519 peer id (52 chars), deterministic per (seed, index)."""
    digest = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=40).digest()
    n = int.from_bytes(digest, "big")
    chars = []
    for _ in range(44):
        n, r = divmod(n, 58)
        chars.append(_B58[r])
    return "12D3KooW" + "".join(chars)


class SimKeys:
    """Per-member keyed BLAKE2b signatures; `verify` derives the key from the id, as
    Ed25519 peer ids embed their public key."""

    def __init__(self, salt: bytes = b"vsmcp-sim") -> None:
        self._salt = salt[:64]
        self._keys: dict[str, bytes] = {}

    def _key(self, member: str) -> bytes:
        key = self._keys.get(member)
        if key is None:
            key = hashlib.blake2b(member.encode(), key=self._salt, digest_size=32).digest()
            self._keys[member] = key
        return key

    def signer(self, member: str) -> Callable[[bytes], bytes]:
        key = self._key(member)
        return lambda message: hashlib.blake2b(message, key=key, digest_size=64).digest()

    def verify(self, member: str, message: bytes, signature: bytes) -> bool:
        expected = hashlib.blake2b(message, key=self._key(member), digest_size=64).digest()
        return hmac.compare_digest(expected, signature)


@dataclass
class NetworkConfig:
    loss: float = 0.0  # probability that one message is lost
    delay_base_s: float = 0.0002
    delay_jitter_s: float = 0.0003  # mean of the exponential part
    reachability_delay_s: float = 0.001  # time for the transport to answer a check
    processing_lag_s: float = 0.0  # mean extra (exponential) lag of every node event
    wire_roundtrip: bool = True  # encode + decode every message (False: encode only)
    # any other one-way delay distribution (replaces base + jitter), e.g.
    # lambda rng: rng.lognormvariate(-7.0, 0.5)
    delay_fn: Callable[[random.Random], float] | None = None


class NodeStatus(enum.Enum):
    RUNNING = "running"
    STOPPED = "stopped"
    KILLED = "killed"


@dataclass(slots=True)
class _Node:
    id: str
    machine: Membership
    status: NodeStatus = NodeStatus.RUNNING
    group: int = 0
    tick_gen: int = 0
    tick_at: float = math.inf
    backlog: list[tuple[str, object]] = field(default_factory=list)
    msgs_out: int = 0
    bytes_out: int = 0


ChangeListener = Callable[[float, str, MemberStateChanged], None]


class Simulator:
    """N virtual nodes running `Membership` over a simulated network."""

    def __init__(
        self,
        n: int,
        config: MembershipConfig,
        *,
        seed: int = 0,
        network: NetworkConfig | None = None,
        meta_bytes: int = 48,
    ) -> None:
        self.config = config
        self.network = network if network is not None else NetworkConfig()
        self.rng = random.Random(seed)
        self.keys = SimKeys(f"sim-{seed}".encode())
        self.now = 0.0
        self._seed = seed
        self._meta_bytes = meta_bytes
        self._events: list[tuple[float, int, int, int, object]] = []
        self._event_seq = 0
        self._cuts: set[tuple[str, str]] = set()
        self.listeners: list[ChangeListener] = []
        self.messages_sent = 0
        self.bytes_sent = 0
        self.messages_lost = 0
        self.decode_errors = 0
        self.events_processed = 0
        ids = [make_node_id(seed, i) for i in range(n)]
        records = [sign_alive(i, 0, self._meta(i), self.keys.signer(i)) for i in ids]
        self.roster = Roster(records)
        self._nodes: list[_Node] = []
        self._index: dict[str, int] = {}
        for member in ids:
            self._add(member, self._machine(member, roster=self.roster))
        for i in range(len(self._nodes)):
            self._schedule(i)

    # --- construction -------------------------------------------------------------------

    def _meta(self, member: str) -> bytes:
        endpoint = f"tcp://10.{len(member) % 250}.0.1:7946|".encode()
        pad = hashlib.blake2b(member.encode(), digest_size=32).digest()
        return (endpoint + pad)[: self._meta_bytes].ljust(self._meta_bytes, b"\0")

    def _machine(self, member: str, roster: Roster | None) -> Membership:
        return Membership(
            member,
            meta=self._meta(member),
            sign=self.keys.signer(member),
            verify=self.keys.verify,
            config=self.config,
            now=self.now,
            rng=self.rng,
            roster=roster,
        )

    def _add(self, member: str, machine: Membership) -> int:
        self._index[member] = len(self._nodes)
        self._nodes.append(_Node(member, machine))
        return len(self._nodes) - 1

    # --- views ------------------------------------------------------------------------

    @property
    def ids(self) -> list[str]:
        return [node.id for node in self._nodes]

    def __len__(self) -> int:
        return len(self._nodes)

    def machine(self, member: str) -> Membership:
        return self._nodes[self._index[member]].machine

    def status(self, member: str) -> NodeStatus:
        return self._nodes[self._index[member]].status

    def running(self) -> list[str]:
        return [n.id for n in self._nodes if n.status is NodeStatus.RUNNING]

    def view(self, observer: str, subject: str) -> MemberState | None:
        return self.machine(observer).state_of(subject)

    def views_of(self, subject: str, observers: Iterable[str] | None = None) -> dict[str, int]:
        """How many (running, by default) observers hold `subject` in each state."""
        counts: dict[str, int] = {}
        members = self.running() if observers is None else observers
        for observer in members:
            if observer == subject:
                continue
            state = self.view(observer, subject)
            key = "unknown" if state is None else state.name
            counts[key] = counts.get(key, 0) + 1
        return counts

    def bytes_out(self, member: str) -> int:
        return self._nodes[self._index[member]].bytes_out

    def msgs_out(self, member: str) -> int:
        return self._nodes[self._index[member]].msgs_out

    # --- faults -------------------------------------------------------------------------

    def kill(self, member: str) -> None:
        node = self._nodes[self._index[member]]
        node.status = NodeStatus.KILLED
        node.backlog.clear()
        node.tick_gen += 1

    def stop(self, member: str) -> None:
        node = self._nodes[self._index[member]]
        if node.status is NodeStatus.RUNNING:
            node.status = NodeStatus.STOPPED
            node.tick_gen += 1

    def resume(self, member: str) -> None:
        i = self._index[member]
        node = self._nodes[i]
        if node.status is not NodeStatus.STOPPED:
            return
        node.status = NodeStatus.RUNNING
        backlog, node.backlog = node.backlog, []
        for sender, payload in backlog:
            self._handle_delivery(i, sender, payload)
        self._tick_node(i)

    def restart(self, member: str, seeds: int = 3) -> None:
        """A fresh process under the same id, no memory: joins via running members."""
        i = self._index[member]
        node = self._nodes[i]
        node.machine = self._machine(member, roster=None)
        node.status = NodeStatus.RUNNING
        node.backlog.clear()
        node.tick_gen += 1
        node.tick_at = math.inf
        self._join(i, seeds)

    def add_node(self, seeds: int = 3) -> str:
        """A brand-new member joins through `seeds` random running members."""
        member = make_node_id(self._seed, len(self._nodes))
        i = self._add(member, self._machine(member, roster=None))
        self._join(i, seeds)
        return member

    def _join(self, i: int, seeds: int) -> None:
        member = self._nodes[i].id
        candidates = [m for m in self.running() if m != member]
        chosen = self.rng.sample(candidates, min(seeds, len(candidates)))
        self._process(i, self._nodes[i].machine.join(chosen, self.now))

    def leave(self, member: str) -> None:
        i = self._index[member]
        self._process(i, self._nodes[i].machine.leave(self.now))

    def cut(self, a: str, b: str, *, both_ways: bool = True) -> None:
        """Messages a -> b (and b -> a) are dropped; a TCP connect needs both ways."""
        self._cuts.add((a, b))
        if both_ways:
            self._cuts.add((b, a))

    def heal(self, a: str, b: str) -> None:
        self._cuts.discard((a, b))
        self._cuts.discard((b, a))

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Nodes in different groups cannot reach each other (unlisted: group 0)."""
        for node in self._nodes:
            node.group = 0
        for g, members in enumerate(groups, start=1):
            for member in members:
                self._nodes[self._index[member]].group = g

    def heal_partition(self) -> None:
        for node in self._nodes:
            node.group = 0

    def _linked(self, src: int, dst: int) -> bool:
        a, b = self._nodes[src], self._nodes[dst]
        return a.group == b.group and (not self._cuts or (a.id, b.id) not in self._cuts)

    # --- running --------------------------------------------------------------------------

    def run_until(self, t: float) -> None:
        events = self._events
        while events and events[0][0] <= t:
            when, _, kind, i, payload = heapq.heappop(events)
            self.now = when
            self.events_processed += 1
            if kind == _EV_TICK:
                node = self._nodes[i]
                assert isinstance(payload, int)
                if payload == node.tick_gen and node.status is NodeStatus.RUNNING:
                    node.tick_at = math.inf
                    self._tick_node(i)
            elif kind == _EV_DELIVER:
                assert isinstance(payload, tuple)
                self._deliver(i, payload[0], payload[1])
            else:
                assert isinstance(payload, tuple)
                node = self._nodes[i]
                if node.status is NodeStatus.RUNNING:
                    member, reachable = payload
                    self._process(
                        i, node.machine.on_transport_probe_result(member, reachable, self.now)
                    )
        self.now = max(self.now, t)

    def run_for(self, dt: float) -> None:
        self.run_until(self.now + dt)

    def run_until_true(
        self, predicate: Callable[[], bool], timeout: float, step: float = 0.05
    ) -> bool:
        """Run until `predicate()` holds (checked every `step` virtual seconds)."""
        deadline = self.now + timeout
        while self.now < deadline:
            if predicate():
                return True
            self.run_until(min(deadline, self.now + step))
        return predicate()

    def _push(self, when: float, kind: int, i: int, payload: object) -> None:
        self._event_seq += 1
        heapq.heappush(self._events, (when, self._event_seq, kind, i, payload))

    def _lag(self) -> float:
        lag = self.network.processing_lag_s
        return self.rng.expovariate(1.0 / lag) if lag > 0 else 0.0

    def _schedule(self, i: int) -> None:
        node = self._nodes[i]
        if node.status is not NodeStatus.RUNNING:
            return
        deadline = node.machine.next_deadline()
        if deadline is None:
            return
        when = max(deadline, self.now)
        if when < node.tick_at:
            when += self._lag()
            node.tick_at = when
            node.tick_gen += 1
            self._push(when, _EV_TICK, i, node.tick_gen)

    def _tick_node(self, i: int) -> None:
        node = self._nodes[i]
        node.tick_at = math.inf
        self._process(i, node.machine.tick(self.now))

    def _deliver(self, i: int, sender: str, payload: object) -> None:
        node = self._nodes[i]
        if node.status is NodeStatus.KILLED:
            return
        if node.status is NodeStatus.STOPPED:
            if len(node.backlog) < MAX_BACKLOG_MESSAGES:
                node.backlog.append((sender, payload))
            return
        self._handle_delivery(i, sender, payload)

    def _handle_delivery(self, i: int, sender: str, payload: object) -> None:
        machine = self._nodes[i].machine
        if isinstance(payload, bytes):
            try:
                message: Message = decode(payload)
            except MembershipDecodeError:
                self.decode_errors += 1
                return
        else:
            message = payload  # type: ignore[assignment]
        self._process(i, machine.on_message(sender, message, self.now))

    def _process(self, i: int, outputs: list[Output]) -> None:
        node = self._nodes[i]
        net = self.network
        for out in outputs:
            if isinstance(out, Send):
                data = encode(out.message)
                node.msgs_out += 1
                node.bytes_out += len(data) + ENVELOPE_OVERHEAD_BYTES
                self.messages_sent += 1
                self.bytes_sent += len(data) + ENVELOPE_OVERHEAD_BYTES
                dst = self._index.get(out.to)
                if dst is None or not self._linked(i, dst):
                    self.messages_lost += 1
                    continue
                if net.loss > 0 and self.rng.random() < net.loss:
                    self.messages_lost += 1
                    continue
                if net.delay_fn is not None:
                    delay = max(0.0, net.delay_fn(self.rng))
                else:
                    delay = net.delay_base_s
                    if net.delay_jitter_s > 0:
                        delay += self.rng.expovariate(1.0 / net.delay_jitter_s)
                payload = data if net.wire_roundtrip else out.message
                self._push(self.now + delay + self._lag(), _EV_DELIVER, dst, (node.id, payload))
            elif isinstance(out, CheckReachability):
                dst = self._index.get(out.member)
                reachable = (
                    dst is not None
                    and self._nodes[dst].status is not NodeStatus.KILLED
                    and self._linked(i, dst)
                    and self._linked(dst, i)
                )
                when = self.now + net.reachability_delay_s + self._lag()
                self._push(when, _EV_REACH, i, (out.member, reachable))
            elif isinstance(out, MemberStateChanged):
                for listener in self.listeners:
                    listener(self.now, node.id, out)
        self._schedule(i)
