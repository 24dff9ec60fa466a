"""Unit tests of the membership state machine, driven by hand with real Ed25519 keys."""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Callable, Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey

from vsmcp.mesh._membership_wire import alive_payload, left_payload, observation_payload
from vsmcp.mesh.errors import MeshError
from vsmcp.mesh.membership import (
    MAX_MESSAGE_BYTES,
    Ack,
    Alive,
    CheckReachability,
    GossipMessage,
    Left,
    MemberReaped,
    Membership,
    MembershipConfig,
    MembershipDecodeError,
    MembershipError,
    MemberState,
    MemberStateChanged,
    Message,
    MessageTooLarge,
    Nack,
    Observation,
    ObserveReq,
    ObserveResp,
    Output,
    Ping,
    PingReq,
    PushPull,
    Roster,
    Send,
    Suspect,
    Verdict,
    decode,
    encode,
    make_observation,
    quorum_size,
    sign_alive,
    sign_left,
    verdict_kind,
)

CFG = MembershipConfig.local()


class Keys:
    """Real Ed25519 keys per member id."""

    def __init__(self) -> None:
        self._keys: dict[str, SigningKey] = {}

    def key(self, member: str) -> SigningKey:
        if member not in self._keys:
            self._keys[member] = SigningKey.generate()
        return self._keys[member]

    def signer(self, member: str) -> Callable[[bytes], bytes]:
        key = self.key(member)
        return lambda message: key.sign(message).signature

    def verify(self, member: str, message: bytes, signature: bytes) -> bool:
        if member not in self._keys:
            return False
        try:
            self._keys[member].verify_key.verify(message, signature)
        except BadSignatureError:
            return False
        return True


class Net:
    """A synchronous, zero-latency router between real state machines. `drop(src, dst)`
    decides losses; `reachable(src, dst)` answers transport checks; `frozen` members
    neither tick nor read (SIGSTOP) and `dead` ones also refuse connections."""

    def __init__(self, names: Iterable[str], *, config: MembershipConfig = CFG) -> None:
        self.keys = Keys()
        self.names = list(names)
        records = [sign_alive(n, 0, f"meta-{n}".encode(), self.keys.signer(n)) for n in self.names]
        roster = Roster(records)
        self.now = 0.0
        self.nodes = {
            n: Membership(
                n,
                meta=f"meta-{n}".encode(),
                sign=self.keys.signer(n),
                verify=self.keys.verify,
                config=config,
                now=0.0,
                roster=roster,
                rng=random.Random(n),
            )
            for n in self.names
        }
        self.cut: set[tuple[str, str]] = set()
        self.frozen: set[str] = set()
        self.dead: set[str] = set()
        self.events: list[tuple[str, MemberStateChanged]] = []
        self.reaped: list[tuple[str, MemberReaped]] = []
        self.sent: list[tuple[str, str, Message]] = []

    def handle(self, src: str, outputs: list[Output]) -> None:
        queue = [(src, o) for o in outputs]
        while queue:
            origin, out = queue.pop(0)
            if isinstance(out, MemberStateChanged):
                self.events.append((origin, out))
            elif isinstance(out, MemberReaped):
                self.reaped.append((origin, out))
            elif isinstance(out, CheckReachability):
                ok = out.member not in self.dead and (origin, out.member) not in self.cut
                res = self.nodes[origin].on_transport_probe_result(out.member, ok, self.now)
                queue += [(origin, o) for o in res]
            else:
                assert isinstance(out, Send)
                self.sent.append((origin, out.to, out.message))
                dst = out.to
                if (origin, dst) in self.cut or dst in self.frozen or dst in self.dead:
                    continue
                data = encode(out.message)
                res = self.nodes[dst].on_message_bytes(origin, data, self.now)
                queue += [(dst, o) for o in res]

    def run(self, until: float) -> None:
        while True:
            live = [n for n in self.names if n not in self.frozen and n not in self.dead]
            deadlines = [(self.nodes[n].next_deadline(), n) for n in live]
            due = [(d, n) for d, n in deadlines if d is not None and d <= until]
            if not due:
                break
            d, name = min(due)
            self.now = max(self.now, d)
            self.handle(name, self.nodes[name].tick(self.now))
        self.now = until

    def view(self, observer: str, subject: str) -> MemberState | None:
        return self.nodes[observer].state_of(subject)

    def verdict_events(self) -> list[tuple[str, MemberStateChanged]]:
        bad = (MemberState.DEAD, MemberState.ZOMBIE)
        return [(o, e) for o, e in self.events if e.new in bad]


def names(n: int) -> list[str]:
    return [f"n{i}" for i in range(n)]


# --- wire ---------------------------------------------------------------------------


def test_messages_round_trip() -> None:
    alive = Alive("a", 3, b"meta", b"s" * 64)
    messages: list[Message] = [
        Ping(1, "b", [alive, Suspect("c", 2, "a")]),
        Ack(2, "b", []),
        PingReq(3, "c", [Left("d", 1, b"x" * 64)]),
        ObserveReq(4, "c", 5, []),
        GossipMessage([Verdict("c", 5, 3, [Observation("a", "c", 5, 3, 10, b"y" * 64)])]),
        PushPull(True, True, [alive], [Suspect("a", 3, "b")]),
    ]
    for message in messages:
        assert decode(encode(message)) == message


def test_oversized_message_raises_too_large() -> None:
    with pytest.raises(MessageTooLarge) as info:
        decode(b"\x00" * (MAX_MESSAGE_BYTES + 1))
    assert isinstance(info.value, MeshError)
    assert info.value.reason == "too_large"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"\x94\x09\x01\x01\x01",  # unknown tag
        b"\x94\x01\xff\xa1a\x90",  # negative seq
        encode(Ping(1, "a" * 129, [])),  # id too long
        encode(GossipMessage([Alive("a", 1, b"m" * 600, b"")])),  # meta too long
    ],
)
def test_malformed_messages_raise_decode_error(data: bytes) -> None:
    with pytest.raises(MembershipDecodeError) as info:
        decode(data)
    assert info.value.reason == "malformed"


# --- fuzzing, with real identities ----------------------------------------------------
#
# The node under test verifies with real Ed25519 keys, and most statements the fuzzer
# sends are signed by the member they speak for (the rest by a forger, or mutated on the
# wire), so the fuzzer reaches the code past verification: accepted Alive/Left/Verdict,
# refutation, probes answered, observation rounds that end in verdicts, reaping. The
# oracle checks signatures itself, independently of the code under test.

FUZZ_MEMBERS = ["n1", "n2", "n3", "n4"]
FUZZ_IDS = [*FUZZ_MEMBERS, "me", "stranger"]
FORGER = SigningKey.generate()
# Short reap times, so that runs reach reaping (and a reaped member speaking again).
FUZZ_CFG = dataclasses.replace(CFG, dead_reap_after_s=3.0, left_reap_after_s=3.0)
MAX_TIMERS_PER_ADVANCE = 400


def forged(message: bytes) -> bytes:
    return FORGER.sign(message).signature


class FuzzWorld:
    """The node under test ("me"), the real keys of everyone, and what the oracle has
    seen genuinely signed (the only statements that may change the node's view)."""

    def __init__(self) -> None:
        self.keys = Keys()
        for member in FUZZ_IDS:
            self.keys.key(member)
        self.now = 0.0
        self.node = Membership(
            "me",
            meta=b"meta-me",
            sign=self.keys.signer("me"),
            verify=self.keys.verify,
            config=FUZZ_CFG,
            now=0.0,
            rng=random.Random(0),
        )
        self.incarnations: dict[str, set[int]] = {m: set() for m in FUZZ_IDS}
        self.metas: dict[str, set[bytes]] = {m: set() for m in FUZZ_IDS}
        self.lefts: set[tuple[str, int]] = set()
        self.sent: list[tuple[str, Message]] = []

    def sign(self, member: str, real: bool) -> Callable[[bytes], bytes]:
        return self.keys.signer(member) if real else forged

    # -- the oracle ------------------------------------------------------------------------

    def learn(self, message: Message) -> None:
        """Record the genuinely signed statements in `message` (as delivered)."""
        items: list[Alive | Suspect | Verdict | Left] = []
        if isinstance(message, PushPull):
            items += [*message.alive, *message.status]
        elif not isinstance(message, Nack):
            items += list(message.gossip)
        if isinstance(message, ObserveResp) and message.observation is not None:
            self._learn_observation(message.observation)
        for item in items:
            if isinstance(item, Alive) and self.genuine_alive(item):
                self.incarnations[item.member].add(item.incarnation)
                self.metas[item.member].add(item.meta)
            elif isinstance(item, Left) and self.genuine_left(item):
                self.incarnations[item.member].add(item.incarnation)
                self.lefts.add((item.member, item.incarnation))
            elif isinstance(item, Verdict):
                for obs in item.observations:
                    self._learn_observation(obs)

    def _learn_observation(self, obs: Observation) -> None:
        if obs.subject in self.incarnations and self.genuine_observation(obs):
            self.incarnations[obs.subject].add(obs.incarnation)

    def _verifies(self, member: str, payload: bytes, signature: bytes) -> bool:
        return member in FUZZ_IDS and self.keys.verify(member, payload, signature)

    def genuine_alive(self, a: Alive) -> bool:
        return self._verifies(a.member, alive_payload(a.member, a.incarnation, a.meta), a.signature)

    def genuine_left(self, left: Left) -> bool:
        return self._verifies(
            left.member, left_payload(left.member, left.incarnation), left.signature
        )

    def genuine_observation(self, o: Observation) -> bool:
        payload = observation_payload(o.observer, o.subject, o.incarnation, o.kind, o.at_ms)
        return self._verifies(o.observer, payload, o.signature)

    # -- driving ---------------------------------------------------------------------------

    def outputs(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, Send):
                data = encode(out.message)
                assert len(data) <= MAX_MESSAGE_BYTES
                assert decode(data) == out.message
                self.sent.append((out.to, out.message))

    def advance(self, seconds: float) -> None:
        """Let time pass, running every timer due in order (as the node's loop would)."""
        until = self.now + seconds
        for _ in range(MAX_TIMERS_PER_ADVANCE):
            due = self.node.next_deadline()
            if due is None or due > until:
                break
            self.now = max(self.now, due)
            self.outputs(self.node.tick(self.now))
        self.now = until
        self.outputs(self.node.tick(self.now))

    def deliver(self, sender: str, message: Message) -> None:
        self.learn(message)
        self.outputs(self.node.on_message(sender, message, self.now))

    def deliver_bytes(self, sender: str, data: bytes) -> None:
        try:
            message = decode(data)
        except MembershipError:
            with pytest.raises(MembershipError):
                self.node.on_message_bytes(sender, data, self.now)
            return
        self.deliver(sender, message)

    def check(self) -> None:
        node = self.node
        assert node.state_of("me") == MemberState.ALIVE, "the node gave itself up"
        for info in node.members():
            if info.is_self:
                continue
            # Nothing forged moved the view: every incarnation and meta the node holds
            # was signed by the member itself (or reported by genuine observers).
            assert info.incarnation in self.incarnations[info.id], info
            assert info.meta in self.metas[info.id], info
            if info.state == MemberState.LEFT:
                assert (info.id, info.incarnation) in self.lefts, info


ids = st.sampled_from(FUZZ_IDS)
incarnations = st.integers(0, 4)
real = st.sampled_from([True, True, True, False])  # mostly genuine


def fuzz_alive(world: FuzzWorld) -> st.SearchStrategy[Alive]:
    return st.builds(
        lambda m, inc, meta, ok: sign_alive(m, inc, meta, world.sign(m, ok)),
        ids,
        incarnations,
        st.sampled_from([b"m0", b"m1"]),
        real,
    )


def fuzz_observation(world: FuzzWorld, subject: str, inc: int) -> st.SearchStrategy[Observation]:
    return st.builds(
        lambda observer, kind, at, ok: make_observation(
            observer, subject, inc, kind, at, world.sign(observer, ok)
        ),
        ids,
        st.sampled_from([MemberState.ZOMBIE, MemberState.DEAD]),
        st.floats(0, 100),
        real,
    )


@st.composite
def fuzz_verdict(draw: st.DrawFn, world: FuzzWorld) -> Verdict:
    subject, inc = draw(ids), draw(incarnations)
    observations = draw(st.lists(fuzz_observation(world, subject, inc), max_size=4))
    kind = int(verdict_kind(observations)) if observations else int(MemberState.DEAD)
    if draw(st.booleans()) and not draw(real):
        kind = int(MemberState.ZOMBIE) + int(MemberState.DEAD) - kind  # the wrong kind
    return Verdict(subject, inc, kind, observations)


def fuzz_item(world: FuzzWorld) -> st.SearchStrategy[Alive | Suspect | Verdict | Left]:
    return st.one_of(
        fuzz_alive(world),
        st.builds(Suspect, ids, incarnations, ids),
        fuzz_verdict(world),
        st.builds(lambda m, inc, ok: sign_left(m, inc, world.sign(m, ok)), ids, incarnations, real),
    )


def fuzz_message(world: FuzzWorld) -> st.SearchStrategy[Message]:
    gossip = st.lists(fuzz_item(world), max_size=4)
    seqs = st.integers(0, 2**31)
    return st.one_of(
        st.builds(Ping, seqs, ids, gossip),
        st.builds(Ack, seqs, ids, gossip),
        st.builds(Nack, seqs, ids),
        st.builds(PingReq, seqs, ids, gossip),
        st.builds(ObserveReq, seqs, ids, incarnations, gossip),
        st.builds(GossipMessage, gossip),
        st.builds(
            PushPull,
            st.booleans(),
            st.booleans(),
            st.lists(fuzz_alive(world), max_size=4),
            st.lists(
                st.one_of(fuzz_verdict(world), st.builds(Suspect, ids, incarnations, ids)),
                max_size=3,
            ),
        ),
    )


def answer(world: FuzzWorld, observe: bool, index: int, reached: bool, ok: bool) -> None:
    """Answer something the node sent, as its addressee would: an Ack to a Ping, a
    signed observation to an ObserveReq (so probes succeed and rounds reach quorum)."""
    wanted = ObserveReq if observe else (Ping, PingReq)
    candidates = [(to, m) for to, m in world.sent[-50:] if isinstance(m, wanted)]
    if not candidates:
        return
    to, message = candidates[index % len(candidates)]
    if to not in FUZZ_IDS or to == "me":
        return
    if isinstance(message, Ping | PingReq):
        world.deliver(to, Ack(message.seq, message.target, []))
    elif isinstance(message, ObserveReq):
        obs = None
        if not reached:
            obs = make_observation(
                to,
                message.subject,
                message.incarnation,
                MemberState.DEAD,
                world.now,
                world.sign(to, ok),
            )
        world.deliver(
            to, ObserveResp(message.round, message.subject, message.incarnation, reached, obs, [])
        )


@st.composite
def fuzz_run(draw: st.DrawFn) -> None:
    world = FuzzWorld()
    # Everyone introduces itself (genuinely), so the node has members to probe and judge.
    intro = [sign_alive(m, 0, b"m0", world.sign(m, True)) for m in FUZZ_MEMBERS]
    world.deliver("n1", GossipMessage(intro))
    world.check()
    steps = draw(st.integers(1, 30))
    for _ in range(steps):
        kind = draw(st.sampled_from(["message", "mutated", "advance", "answer", "probe"]))
        if kind == "message":
            world.deliver(draw(ids), draw(fuzz_message(world)))
        elif kind == "mutated":
            data = bytearray(encode(draw(fuzz_message(world))))
            for position, value in draw(
                st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3)
            ):
                data[position % len(data)] = value
            world.deliver_bytes(draw(ids), bytes(data))
        elif kind == "advance":
            world.advance(draw(st.sampled_from([0.05, 0.2, 0.5, 1.0, 2.0, 4.0])))
        elif kind == "answer":
            answer(
                world,
                draw(st.booleans()),
                draw(st.integers(0, 1000)),
                draw(st.booleans()),
                draw(real),
            )
        else:
            member, reachable = draw(ids), draw(st.booleans())
            world.outputs(world.node.on_transport_probe_result(member, reachable, world.now))
        world.check()
    # Whatever happened, a member's own newer statement is still accepted: the path
    # past verification was live to the end.
    fresh = max(world.incarnations["n2"]) + 1
    world.deliver("n2", GossipMessage([sign_alive("n2", fresh, b"m1", world.sign("n2", True))]))
    world.check()
    info = world.node.member("n2")
    assert info is not None and info.state == MemberState.ALIVE, info
    assert (info.incarnation, info.meta) == (fresh, b"m1")


@given(fuzz_run())
def test_fuzzed_signed_traffic_keeps_the_view_honest(run: None) -> None:
    """All the work and checks happen while hypothesis draws the run."""


@given(st.binary(max_size=512))
def test_random_bytes_never_crash(data: bytes) -> None:
    world = FuzzWorld()
    with contextlib.suppress(MembershipError):
        world.node.on_message_bytes("n1", data, 1.0)
    world.check()


# --- probing ------------------------------------------------------------------------


def test_probe_is_acked_and_nobody_is_suspected() -> None:
    net = Net(names(2))
    net.run(5.0)
    pings = [m for _, _, m in net.sent if isinstance(m, Ping)]
    acks = [m for _, _, m in net.sent if isinstance(m, Ack)]
    assert len(pings) >= 20 and len(acks) == len(pings)
    assert net.view("n0", "n1") == MemberState.ALIVE
    assert net.view("n1", "n0") == MemberState.ALIVE
    assert net.events == []


def test_indirect_probe_path_prevents_suspicion() -> None:
    net = Net(names(4))
    net.cut |= {("n0", "n1"), ("n1", "n0")}
    net.run(10.0)
    relayed = [m for src, _, m in net.sent if isinstance(m, PingReq) and src == "n0"]
    assert relayed, "n0 must have asked others to probe n1"
    assert net.view("n0", "n1") == MemberState.ALIVE
    assert net.events == []


def test_suspicion_is_refuted_when_the_subject_answers() -> None:
    net = Net(names(3))
    net.frozen.add("n2")  # n2 does not answer for a moment
    while not any(net.view(n, "n2") == MemberState.SUSPECT for n in ("n0", "n1")):
        assert net.now < 2.0, "n2 was never suspected"
        net.run(net.now + 0.01)
    net.frozen.clear()  # it wakes up, hears it is suspect and answers the suspector
    net.run(net.now + 2.0)
    for n in ("n0", "n1"):
        assert net.view(n, "n2") == MemberState.ALIVE
    assert net.verdict_events() == []
    # suspicion is local: no incarnation bump, nothing for the cluster to re-learn
    assert net.nodes["n2"].incarnation == 0


def test_suspect_about_self_is_answered_directly_without_bump() -> None:
    net = Net(names(2))
    out = net.nodes["n1"].on_message("n0", GossipMessage([Suspect("n1", 0, "n0")]), 0.1)
    assert net.nodes["n1"].incarnation == 0
    sends = [o for o in out if isinstance(o, Send) and o.to == "n0"]
    assert any(isinstance(o.message, GossipMessage) for o in sends)


def test_suspect_about_someone_else_is_ignored() -> None:
    net = Net(names(3))
    net.nodes["n0"].on_message("n1", GossipMessage([Suspect("n2", 5, "n1")]), 0.1)
    assert net.view("n0", "n2") == MemberState.ALIVE


def test_verdict_about_self_is_refuted_with_higher_incarnation() -> None:
    net = _observer_net()
    obs = [_obs(net, o, "n0") for o in ("n1", "n2", "n3")]
    net.handle("n1", [Send("n0", GossipMessage([Verdict("n0", 0, 2, obs)]))])
    assert net.nodes["n0"].incarnation == 1
    net.run(2.0)
    for n in names(6)[1:]:
        info = net.nodes[n].member("n0")
        assert info is not None and info.incarnation == 1 and info.state == MemberState.ALIVE


# --- quorum verdicts ------------------------------------------------------------------


def _observer_net(n: int = 6) -> Net:
    return Net(names(n))


def _obs(
    net: Net, observer: str, subject: str, inc: int = 0, kind: MemberState = MemberState.DEAD
) -> Observation:
    return make_observation(observer, subject, inc, kind, 1.0, net.keys.signer(observer))


def _receive(net: Net, verdict: Verdict, receiver: str = "n0") -> None:
    net.handle("n1", [Send(receiver, GossipMessage([verdict]))])


def test_quorum_size() -> None:
    assert quorum_size(1, 3) == 1
    assert quorum_size(2, 3) == 2
    assert quorum_size(5, 3) == 3
    assert quorum_size(100, 3) == 3


def test_valid_verdict_is_accepted() -> None:
    net = _observer_net()
    obs = [_obs(net, o, "n5") for o in ("n1", "n2", "n3")]
    _receive(net, Verdict("n5", 0, int(MemberState.DEAD), obs))
    assert net.view("n0", "n5") == MemberState.DEAD


def test_verdict_with_too_few_observations_is_rejected() -> None:
    net = _observer_net()
    obs = [_obs(net, o, "n5") for o in ("n1", "n2")]
    _receive(net, Verdict("n5", 0, int(MemberState.DEAD), obs))
    assert net.view("n0", "n5") == MemberState.ALIVE
    assert net.nodes["n0"].stats["verdict_rejected_no_quorum"] == 1


def test_verdict_with_duplicated_observer_is_rejected() -> None:
    net = _observer_net()
    one = _obs(net, "n1", "n5")
    obs = [one, one, _obs(net, "n2", "n5")]
    _receive(net, Verdict("n5", 0, int(MemberState.DEAD), obs))
    assert net.view("n0", "n5") == MemberState.ALIVE


def test_verdict_with_bad_signature_is_rejected() -> None:
    net = _observer_net()
    good = [_obs(net, o, "n5") for o in ("n1", "n2")]
    forged = make_observation("n3", "n5", 0, MemberState.DEAD, 1.0, net.keys.signer("n4"))
    _receive(net, Verdict("n5", 0, int(MemberState.DEAD), [*good, forged]))
    assert net.view("n0", "n5") == MemberState.ALIVE
    assert net.nodes["n0"].stats["verdict_rejected_bad_signature"] == 1


def test_verdict_observations_must_match_and_exclude_subject() -> None:
    net = _observer_net()
    wrong_inc = _obs(net, "n3", "n5", inc=7)
    by_subject = _obs(net, "n5", "n5")
    obs = [_obs(net, "n1", "n5"), _obs(net, "n2", "n5"), wrong_inc, by_subject]
    _receive(net, Verdict("n5", 0, int(MemberState.DEAD), obs))
    assert net.view("n0", "n5") == MemberState.ALIVE


def test_verdict_kind_must_match_observations() -> None:
    net = _observer_net()
    obs = [_obs(net, o, "n5", kind=MemberState.ZOMBIE) for o in ("n1", "n2", "n3")]
    _receive(net, Verdict("n5", 0, int(MemberState.DEAD), obs))
    assert net.view("n0", "n5") == MemberState.ALIVE
    assert net.nodes["n0"].stats["verdict_rejected_kind_mismatch"] == 1
    _receive(net, Verdict("n5", 0, int(MemberState.ZOMBIE), obs))
    assert net.view("n0", "n5") == MemberState.ZOMBIE


def test_stale_verdict_cannot_evict_refuted_member() -> None:
    net = _observer_net()
    refuted = sign_alive("n5", 1, b"meta-n5", net.keys.signer("n5"))
    net.handle("n1", [Send("n0", GossipMessage([refuted]))])
    obs = [_obs(net, o, "n5", inc=0) for o in ("n1", "n2", "n3")]
    _receive(net, Verdict("n5", 0, int(MemberState.DEAD), obs))
    assert net.view("n0", "n5") == MemberState.ALIVE
    info = net.nodes["n0"].member("n5")
    assert info is not None and info.incarnation == 1


def test_forged_alive_is_rejected() -> None:
    net = _observer_net()
    forged = Alive("n5", 9, b"tcp://evil", net.keys.signer("n1")(b"whatever"))
    net.handle("n1", [Send("n0", GossipMessage([forged]))])
    info = net.nodes["n0"].member("n5")
    assert info is not None and info.incarnation == 0 and info.meta == b"meta-n5"


# --- dead vs zombie, recovery ----------------------------------------------------------


def test_killed_member_is_declared_dead_by_quorum() -> None:
    net = Net(names(6))
    net.dead.add("n5")
    net.run(6.0)
    for n in names(5):
        assert net.view(n, "n5") == MemberState.DEAD, n
    verdicts = [e for _, e in net.verdict_events()]
    assert {e.new for e in verdicts} == {MemberState.DEAD}


def test_stopped_member_is_zombie_and_recovers() -> None:
    net = Net(names(6))
    net.frozen.add("n5")
    net.run(6.0)
    for n in names(5):
        assert net.view(n, "n5") == MemberState.ZOMBIE, n
    net.frozen.clear()  # SIGCONT
    net.run(9.0)
    assert net.nodes["n5"].incarnation >= 1
    for n in names(5):
        assert net.view(n, "n5") == MemberState.ALIVE, n


def test_stale_verdict_gossip_after_recovery_is_ignored() -> None:
    net = Net(names(6))
    net.frozen.add("n5")
    net.run(6.0)
    old = next(
        m
        for _, _, m in net.sent
        if isinstance(m, GossipMessage) and any(isinstance(i, Verdict) for i in m.gossip)
    )
    net.frozen.clear()
    net.run(9.0)
    net.handle("n1", [Send("n0", old)])
    assert net.view("n0", "n5") == MemberState.ALIVE


def test_classification_follows_transport_report() -> None:
    """Same silence, different transport answer: dead vs zombie."""
    for reachable, expected in ((False, MemberState.DEAD), (True, MemberState.ZOMBIE)):
        net = Net(names(5))
        net.frozen.add("n4")
        if not reachable:
            net.dead.add("n4")
        net.run(6.0)
        assert net.view("n0", "n4") == expected


def test_restarted_member_rejoins_with_higher_incarnation() -> None:
    net = Net(names(5))
    net.dead.add("n4")
    net.run(6.0)
    assert net.view("n0", "n4") == MemberState.DEAD
    fresh = Membership(
        "n4",
        meta=b"meta-n4",
        sign=net.keys.signer("n4"),
        verify=net.keys.verify,
        config=CFG,
        now=net.now,
        rng=random.Random(4),
    )
    net.nodes["n4"] = fresh
    net.dead.clear()
    net.handle("n4", fresh.join(["n0"], net.now))
    net.run(net.now + 3.0)
    assert fresh.incarnation >= 1
    for n in names(4):
        assert net.view(n, "n4") == MemberState.ALIVE, n
    assert len(fresh.members()) == 5


def test_single_bad_link_does_not_evict() -> None:
    net = Net(names(6))
    net.cut |= {("n0", "n5"), ("n5", "n0")}
    net.run(30.0)
    assert net.verdict_events() == []


# --- leave, join, view ---------------------------------------------------------------


def test_leave_marks_left_everywhere() -> None:
    net = Net(names(4))
    net.run(1.0)
    net.handle("n3", net.nodes["n3"].leave(net.now))
    net.run(3.0)
    for n in names(3):
        assert net.view(n, "n3") == MemberState.LEFT
    assert net.verdict_events() == []
    assert net.nodes["n3"].has_left


def test_forged_left_is_rejected() -> None:
    net = Net(names(3))
    forged = sign_left("n2", 0, net.keys.signer("n1"))
    net.handle("n1", [Send("n0", GossipMessage([forged]))])
    assert net.view("n0", "n2") == MemberState.ALIVE


def test_join_via_seed_learns_everyone() -> None:
    net = Net(names(4))
    keys = net.keys
    joiner = Membership(
        "new",
        meta=b"m",
        sign=keys.signer("new"),
        verify=keys.verify,
        config=CFG,
        now=0.0,
        rng=random.Random(5),
    )
    net.nodes["new"] = joiner
    net.names.append("new")
    net.handle("new", joiner.join(["n0"], 0.0))
    net.run(3.0)
    assert {m.id for m in joiner.members()} == {*names(4), "new"}
    for n in names(4):
        assert net.view(n, "new") == MemberState.ALIVE
    info = net.nodes["n1"].member("new")
    assert info is not None and info.meta == b"m" and not info.is_self


def test_members_view_and_meta_update() -> None:
    net = Net(names(3))
    me = net.nodes["n0"]
    infos = {m.id: m for m in me.members()}
    assert infos["n0"].is_self and infos["n1"].state == MemberState.ALIVE
    net.handle("n1", net.nodes["n1"].update_meta(b"new-endpoint", 0.5))
    net.run(2.0)
    info = me.member("n1")
    assert info is not None and info.meta == b"new-endpoint" and info.incarnation == 1


def test_presets_have_units_and_sane_ordering() -> None:
    for cfg in (MembershipConfig.local(), MembershipConfig.lan(), MembershipConfig.wan()):
        assert cfg.probe_timeout_s < cfg.probe_interval_s
        assert cfg.observe_window_s < cfg.suspicion_min_s(10)
        assert cfg.suspicion_min_s(10_000) > cfg.suspicion_min_s(10)
        assert cfg.retransmit_limit(1000) >= cfg.retransmit_limit(10)


def test_observe_request_about_refuted_member_answers_reached() -> None:
    net = Net(names(3))
    refuted = sign_alive("n2", 3, b"meta-n2", net.keys.signer("n2"))
    net.nodes["n1"].on_message("n2", GossipMessage([refuted]), 0.1)
    out = net.nodes["n1"].on_message("n0", ObserveReq(1, "n2", 0, []), 0.2)
    sends = [o for o in out if isinstance(o, Send)]
    assert len(sends) == 1
    resp = sends[0].message
    assert getattr(resp, "reached", False) is True


# --- reaping (mesh._membership_reaper) -------------------------------------------------

REAP_CFG = dataclasses.replace(CFG, dead_reap_after_s=20.0, left_reap_after_s=5.0)


def _new_member(net: Net, name: str, config: MembershipConfig, seed: str = "n0") -> Membership:
    """A member learnt after start (not in the shared roster), joined through `seed`."""
    member = Membership(
        name,
        meta=f"meta-{name}".encode(),
        sign=net.keys.signer(name),
        verify=net.keys.verify,
        config=config,
        now=net.now,
        rng=random.Random(name),
    )
    net.nodes[name] = member
    if name not in net.names:
        net.names.append(name)
    net.handle(name, member.join([seed], net.now))
    return member


def _reap_net(config: MembershipConfig = REAP_CFG) -> Net:
    net = Net(names(5), config=config)
    _new_member(net, "x", config)
    net.run(2.0)
    assert all(net.view(n, "x") == MemberState.ALIVE for n in names(5))
    return net


def test_a_dead_member_is_reaped_after_the_timeout_and_stale_state_cannot_revive_it() -> None:
    net = _reap_net()
    net.dead.add("x")
    net.run(8.0)
    assert all(net.view(n, "x") == MemberState.DEAD for n in names(5))
    # Push-pull state (x's alive record and its verdict) and a relayed old Alive, as a
    # peer that has not reaped x yet would send them.
    stale_state = net.nodes["n1"]._state_pages(join=False, reply=False)
    stale_alive = sign_alive("x", 0, b"meta-x", net.keys.signer("x"))
    net.run(20.0)
    assert net.reaped == []  # kept for dead_reap_after_s after the verdict
    net.run(40.0)
    reaped = {origin: event for origin, event in net.reaped}
    assert set(reaped) == set(names(5))
    assert {(e.member, e.state) for e in reaped.values()} == {("x", MemberState.DEAD)}
    for n in names(5):
        assert net.view(n, "x") is None
        assert "x" not in {m.id for m in net.nodes[n].members()}
    for page in stale_state:
        net.handle("n1", [Send("n0", page)])
    net.handle("n2", [Send("n0", GossipMessage([stale_alive]))])
    assert net.view("n0", "x") is None
    assert not [e for o, e in net.events if o == "n0" and e.member == "x" and e.at > 40.0]


def test_a_reaped_member_that_comes_back_is_told_its_verdict_and_rejoins() -> None:
    net = _reap_net()
    net.dead.add("x")
    net.run(45.0)
    assert all(net.view(n, "x") is None for n in names(5))
    net.dead.clear()
    again = _new_member(net, "x", REAP_CFG)  # restarted: incarnation 0 again
    net.run(net.now + 3.0)
    assert again.incarnation >= 1  # refuted the verdict it was told
    for n in names(5):
        assert net.view(n, "x") == MemberState.ALIVE, n
        info = net.nodes[n].member("x")
        assert info is not None and info.incarnation == again.incarnation


def test_a_left_member_is_reaped_sooner() -> None:
    net = _reap_net()
    net.handle("x", net.nodes["x"].leave(net.now))
    net.run(net.now + 1.0)
    assert all(net.view(n, "x") == MemberState.LEFT for n in names(5))
    net.names.remove("x")  # stopped after leaving
    net.run(net.now + 6.0)
    assert all(net.view(n, "x") is None for n in names(5))
    assert {e.state for _, e in net.reaped} == {MemberState.LEFT}


def test_beyond_max_down_members_the_one_due_soonest_is_reaped_first() -> None:
    config = dataclasses.replace(REAP_CFG, max_down_members=1, dead_reap_after_s=1_000.0)
    net = Net(names(5), config=config)
    _new_member(net, "x", config)
    _new_member(net, "y", config)
    net.run(2.0)
    net.dead.add("x")
    net.run(8.0)
    assert net.view("n0", "x") == MemberState.DEAD
    net.dead.add("y")
    net.run(16.0)
    assert net.view("n0", "y") == MemberState.DEAD
    assert net.view("n0", "x") is None
    assert {(o, e.member) for o, e in net.reaped} == {(n, "x") for n in names(5)}


def test_a_joiner_does_not_learn_members_its_seed_holds_dead() -> None:
    net = _reap_net(dataclasses.replace(REAP_CFG, dead_reap_after_s=1_000.0))
    net.dead.add("x")
    net.run(8.0)
    assert net.view("n0", "x") == MemberState.DEAD
    newcomer = _new_member(net, "z", REAP_CFG)
    net.run(net.now + 3.0)
    assert newcomer.state_of("x") is None
    assert {m.id for m in newcomer.members()} == {*names(5), "z"}
    assert newcomer.stats["push_pull_down_unknown_skipped"] >= 1


def test_roster_members_are_never_reaped() -> None:
    net = Net(names(5), config=REAP_CFG)
    net.dead.add("n4")
    net.run(60.0)
    assert net.view("n0", "n4") == MemberState.DEAD
    assert net.reaped == []


def test_a_partitioned_member_reaped_meanwhile_is_told_when_the_partition_heals() -> None:
    net = _reap_net()
    others = names(5)
    net.cut |= {(n, "x") for n in others} | {("x", n) for n in others}
    net.run(45.0)
    assert all(net.view(n, "x") is None for n in others)
    assert net.nodes["x"].incarnation == 0
    net.cut.clear()
    # Well inside one push-pull period: x's probes alone make the others tell it.
    net.run(net.now + 2.0)
    assert net.nodes["x"].incarnation >= 1
    assert all(net.view(n, "x") == MemberState.ALIVE for n in others)
