"""The immune service over real, replicating policy stores: issuing, enforcing,
expiry, revocation, the rate limit, protected targets and the quorum for node blocks."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.crdt.harness import Clock
from vsmcp.crdt.errors import NotAuthorized
from vsmcp.crdt.policies import PolicyStore, sign_revocation
from vsmcp.crdt.signing import Ed25519Signer
from vsmcp.mesh.identity import node_id_from_public_key
from vsmcp.node.tools.errors import PolicyBlocked
from vsmcp.node.tools.model import CallContext
from vsmcp.node.vsm.events import (
    NODE_CATALOG,
    Denial,
    EnvelopeRejected,
    Event,
    ToolCallFinished,
)
from vsmcp.node.vsm.immune.config import ImmuneConfig
from vsmcp.node.vsm.immune.model import (
    IMMUNE_ROLE,
    MAX_OBSERVERS,
    MAX_TARGET_CHARS,
    MITIGATION_KIND,
    MitigationBody,
    PolicyNote,
    body_of,
    immune_issuers,
    mitigation_id,
    observation_id,
)
from vsmcp.node.vsm.immune.patterns import immune_patterns
from vsmcp.node.vsm.immune.service import ImmuneService
from vsmcp.node.vsm.mitigation import MitigationRequest, TargetKind
from vsmcp.node.vsm.patterns.actions import ActionDispatcher
from vsmcp.node.vsm.patterns.compile import PatternEngine

AUTHORITY = Ed25519Signer(b"\xaa" * 32)


@dataclass
class Member:
    signer: Ed25519Signer
    store: PolicyStore
    immune: ImmuneService
    published: list[Event]

    @property
    def node_id(self) -> str:
        return node_id_from_public_key(self.signer.public_key)


class Mesh:
    """`count` nodes with their own stores; `sync()` copies every record everywhere."""

    def __init__(
        self,
        count: int,
        *,
        config: ImmuneConfig | None = None,
        roles: int = 99,
        clock: Clock | None = None,
    ):
        self.clock = clock or Clock()
        signers = [Ed25519Signer(bytes([i + 1]) * 32) for i in range(count)]
        self.roles = {
            s.public_key: (IMMUNE_ROLE,) if i < roles else ("tools",) for i, s in enumerate(signers)
        }
        ids = [node_id_from_public_key(s.public_key) for s in signers]
        self.alive = list(ids)
        self.members: list[Member] = []
        for signer in signers:
            store = PolicyStore(
                replica_id=signer.public_key,
                authority_keys=[AUTHORITY.public_key],
                allowed_issuers=immune_issuers(self.roles.get),
                clock=self.clock,
            )
            published: list[Event] = []
            immune = ImmuneService(
                policies=store,
                signer=signer,
                config=config or ImmuneConfig(),
                protected={node_id_from_public_key(AUTHORITY.public_key)},
                alive=lambda: self.alive,
                quorum_max=3,
                events=_Sink(published),
                clock_ms=self.clock,
            )
            self.members.append(Member(signer, store, immune, published))

    def sync(self) -> None:
        for _ in range(2):  # records issued while syncing travel in the second round
            for source in self.members:
                records = source.store.retained_records()
                for target in self.members:
                    if target is not source:
                        target.store.offer(records)


class _Sink:
    def __init__(self, into: list[Event]) -> None:
        self.into = into

    def publish(self, event: Event) -> None:
        self.into.append(event)


def _check(
    immune: ImmuneService,
    origin: str,
    entry_origin: str | None = None,
    entry_node: str | None = None,
    tool: str = "echo",
    addr: str | None = None,
) -> None:
    ctx = CallContext(
        caller_id="c", caller_zone="public", origin=origin, entry_origin=entry_origin,
        client_addr=addr,
    )  # fmt: skip
    immune.check_call(ctx, entry_node, tool)


def _one_node_with_patterns(config: ImmuneConfig) -> tuple[Mesh, ImmuneService, PatternEngine]:
    """One node whose pattern engine runs the built-in immune patterns."""
    mesh = Mesh(1, config=config)
    immune = mesh.members[0].immune
    engine = PatternEngine(ActionDispatcher({"policy": immune.on_match}), NODE_CATALOG)
    engine.replace(immune_patterns(config, immune.node_id))
    return mesh, immune, engine


def _request(kind: TargetKind, target: str, ttl_s: float = 60.0) -> MitigationRequest:
    return MitigationRequest(
        target_kind=kind, target=target, ttl_s=ttl_s, source="test", reason="because"
    )


def test_an_origin_block_is_enforced_where_it_arrives_and_names_policy_and_expiry() -> None:
    mesh = Mesh(3)
    a, b, _ = mesh.members
    outcome = a.immune.mitigate(_request("origin", "http:attacker"))
    assert outcome.status == "issued" and outcome.policy_id == "origin:http:attacker"
    _check(b.immune, "http:attacker")  # not arrived yet
    mesh.sync()
    for member in mesh.members:
        with pytest.raises(PolicyBlocked) as refused:
            _check(member.immune, "http:attacker")
        assert "'origin:http:attacker'" in refused.value.message
        assert refused.value.data["expires_at_s"] == (mesh.clock.now_ms + 60_000) / 1000
        assert refused.value.data["until"] in refused.value.message
        _check(member.immune, "http:good")
    # The call forwarded from another entry node carries the entry's origin.
    with pytest.raises(PolicyBlocked):
        _check(b.immune, "mesh:someone", "http:attacker", "someone", "echo")
    denial = b.published[-1]
    assert isinstance(denial, Denial) and denial.limit == "blocked"
    assert a.immune.mitigate(_request("origin", "http:attacker")).status == "duplicate"
    # It ends by itself at its expiry.
    mesh.clock.now_ms += 60_000
    for member in mesh.members:
        _check(member.immune, "http:attacker")


def test_a_quarantined_tool_is_refused_where_it_is_served_not_where_another_copy_is() -> None:
    mesh = Mesh(2)
    a, b = mesh.members
    assert a.immune.mitigate(_request("tool", "flaky")).status == "issued"
    mesh.sync()
    for origin, entry_node in (("http:good", None), (f"mesh:{b.node_id}", b.node_id)):
        with pytest.raises(PolicyBlocked):
            _check(a.immune, origin, entry_node=entry_node, tool="flaky")
    _check(a.immune, "http:good")
    # b's own "flaky" is another tool of the same name.
    _check(b.immune, "http:good", tool="flaky")
    assert b.immune.stats["remote_tool_ignored"] == 1


def test_only_failures_of_the_tools_this_node_serves_quarantine_them() -> None:
    mesh, immune, engine = _one_node_with_patterns(
        ImmuneConfig(tool_error_count=3, tool_error_window_s=10)
    )
    t = mesh.clock.now_ms / 1000

    def failed(provider: str) -> ToolCallFinished:
        return ToolCallFinished(
            ts=t, tool="search", provider=provider, origin="http:c", zone="public",
            outcome="error_result",
        )  # fmt: skip

    # A remote provider's copy failing, seen at this entry node: not ours to quarantine.
    engine.process_batch([failed("rogue")] * 5)
    assert not immune.blocks.all()
    engine.process_batch([failed(immune.node_id)] * 3)
    with pytest.raises(PolicyBlocked):
        _check(immune, "http:c", tool="search")


def test_the_authority_revokes_a_block_everywhere() -> None:
    mesh = Mesh(2)
    a, b = mesh.members
    a.immune.mitigate(_request("origin", "http:attacker"))
    mesh.sync()
    policy = b.store.get(a.signer.public_key, "origin:http:attacker")
    assert policy is not None
    blob = sign_revocation(
        AUTHORITY, a.signer.public_key, policy.id, policy.version, now_ms=mesh.clock.now_ms
    )
    assert b.store.accept_signed(blob)
    _check(b.immune, "http:attacker")
    mesh.sync()
    _check(a.immune, "http:attacker")
    # Nobody else's signature revokes it.
    stranger = Ed25519Signer(b"\x77" * 32)
    a.immune.mitigate(_request("origin", "http:other"))
    other = a.store.get(a.signer.public_key, "origin:http:other")
    assert other is not None
    forged = sign_revocation(
        stranger, a.signer.public_key, other.id, other.version, now_ms=mesh.clock.now_ms
    )
    with pytest.raises(NotAuthorized):
        a.store.accept_signed(forged)


def test_issuance_is_rate_limited_and_counted() -> None:
    mesh = Mesh(1, config=ImmuneConfig(max_blocks_per_minute=2))
    immune = mesh.members[0].immune
    outcomes = [immune.mitigate(_request("origin", f"http:o{i}")).status for i in range(4)]
    assert outcomes == ["issued", "issued", "refused", "refused"]
    assert immune.stats["refused_rate_limited"] == 2


def test_protected_targets_are_refused_and_ignored_when_another_node_asks() -> None:
    mesh = Mesh(2)
    a, b = mesh.members
    authority = node_id_from_public_key(AUTHORITY.public_key)
    for kind, target in (("node", authority), ("node", a.node_id), ("origin", f"mesh:{authority}")):
        assert a.immune.mitigate(_request(kind, target)).status == "refused"  # type: ignore[arg-type]
    assert a.immune.stats["refused_protected"] == 3
    # A node whose view differs issues a block of b's protected node: b ignores it.
    body = {
        "target_kind": "origin",
        "target": f"mesh:{b.node_id}",
        "note": {"source": "s", "reason": "r", "action": "a", "until": "u"},
    }
    a.store.issue(a.signer, "forced", MITIGATION_KIND, body, ttl_ms=60_000)
    mesh.sync()
    assert b.immune.stats["protected_ignored"] == 1
    _check(b.immune, f"mesh:{b.node_id}")


def test_a_node_without_the_immune_role_issues_nothing() -> None:
    mesh = Mesh(2, roles=1)
    outcome = mesh.members[1].immune.mitigate(_request("origin", "http:attacker"))
    assert outcome.status == "refused" and "immune" in outcome.detail
    assert mesh.members[1].immune.stats["refused_no_role"] == 1


def test_a_node_block_needs_observations_from_a_quorum() -> None:
    mesh = Mesh(6)
    members = mesh.members
    x = members[5]  # the misbehaving member (in the alive set: 5 others, quorum 3)
    first = members[0].immune.mitigate(_request("node", x.node_id))
    assert first.status == "pending" and "1 of 3" in first.detail
    # One node alone forcing a block of x: nobody else enforces it.
    assert not members[0].immune.blocks.all()
    forced = {
        "target_kind": "node",
        "target": x.node_id,
        "note": {"source": "s", "reason": "r", "action": "a", "until": "u"},
    }
    members[0].store.issue(members[0].signer, "forced", MITIGATION_KIND, forced, ttl_ms=60_000)
    mesh.sync()
    for member in members[1:5]:
        _check(member.immune, "mesh:x", None, x.node_id, "echo")
    # Two more observers: the quorum backs the block everywhere.
    assert members[1].immune.mitigate(_request("node", x.node_id)).status == "pending"
    mesh.sync()
    assert members[2].immune.mitigate(_request("node", x.node_id)).status == "issued"
    mesh.sync()
    for member in members[:5]:
        with pytest.raises(PolicyBlocked):
            _check(member.immune, f"mesh:{x.node_id}", None, x.node_id, "echo")


def test_a_node_block_in_force_cuts_the_nodes_links_until_it_expires() -> None:
    mesh = Mesh(6)
    members = mesh.members
    x = members[5]
    cut: dict[str, list[str]] = {m.node_id: [] for m in members}
    for member in members:
        member.immune.on_node_block = cut[member.node_id].append
    # Pending (one observer): nothing is cut, the links stay.
    assert members[0].immune.mitigate(_request("node", x.node_id, ttl_s=30)).status == "pending"
    mesh.sync()
    assert not any(cut.values())
    assert not any(m.immune.node_blocked(x.node_id) for m in members)
    # The quorum: every node enforcing the block is told to cut x, and refuses it.
    assert members[1].immune.mitigate(_request("node", x.node_id, ttl_s=30)).status == "pending"
    mesh.sync()
    assert members[2].immune.mitigate(_request("node", x.node_id, ttl_s=30)).status == "issued"
    mesh.sync()
    for member in members[:5]:
        assert set(cut[member.node_id]) == {x.node_id}, member.node_id
        assert member.immune.node_blocked(x.node_id)
        assert not member.immune.node_blocked(members[4].node_id)
    # When the blocks expire the links may come back (the mesh asks `node_blocked`
    # each time; members that saw the quorum themselves issued blocks of their own TTL).
    last = max(b.expires_at_ms for m in members for b in m.immune.blocks.all())
    mesh.clock.now_ms = last - 1
    assert members[0].immune.node_blocked(x.node_id)
    mesh.clock.now_ms = last
    assert not any(m.immune.node_blocked(x.node_id) for m in members)


def _block_by_quorum(mesh: Mesh, x: Member) -> None:
    """Members 0, 1 and 2 observe x (quorum 3 of the 5 others): x is blocked."""
    for i, status in enumerate(("pending", "pending", "issued")):
        assert mesh.members[i].immune.mitigate(_request("node", x.node_id)).status == status
        mesh.sync()


def _restarted(mesh: Mesh, member: Member, alive: list[str]) -> ImmuneService:
    """A new immune service over `member`'s records, as the node's restart builds it."""
    return ImmuneService(
        policies=member.store,
        signer=member.signer,
        config=ImmuneConfig(),
        protected={node_id_from_public_key(AUTHORITY.public_key)},
        alive=lambda: alive,
        quorum_max=3,
        clock_ms=mesh.clock,
    )


def test_a_node_that_restarts_past_the_observations_still_enforces_the_block() -> None:
    mesh = Mesh(6)
    members = mesh.members
    x, r = members[5], members[3]
    _block_by_quorum(mesh, x)
    assert all(m.immune.node_blocked(x.node_id) for m in members[:5])
    # r restarts past observation_ttl_s (60 s), the block (600 s) still live: the
    # observers kept their observations alive as long as the block they backed.
    mesh.clock.now_ms += 61_000
    assert _restarted(mesh, r, mesh.alive).node_blocked(x.node_id)
    # Restarted before its peers are back (alive: itself): unconfirmed, then backed as
    # membership brings them back, and x's links are cut then.
    alive = [r.node_id]
    restarted = _restarted(mesh, r, alive)
    cut: list[str] = []
    restarted.on_node_block = cut.append
    assert not restarted.node_blocked(x.node_id)
    alive.extend(m.node_id for m in members if m is not r)
    restarted.members_changed()
    assert restarted.node_blocked(x.node_id) and cut == [x.node_id]
    # Peers admitted with no membership change to say so: `node_blocked` does not count
    # the quorum (the mesh asks it while listing who is alive); the admission (the mesh's
    # `on_admit`) schedules the count, which enforces the block and cuts x then.
    alive = [r.node_id]
    restarted = _restarted(mesh, r, alive)
    cut.clear()
    restarted.on_node_block = cut.append
    alive.extend(m.node_id for m in members if m is not r)
    assert not restarted.node_blocked(x.node_id) and not cut
    restarted.members_changed()
    assert restarted.node_blocked(x.node_id) and cut == [x.node_id]
    assert restarted.blocks.find("node", x.node_id, mesh.clock.now_ms) is not None
    # The kept observations end with the block.
    last = max(b.expires_at_ms for m in members[:5] for b in m.immune.blocks.all())
    mesh.clock.now_ms = last
    assert not _restarted(mesh, r, mesh.alive).node_blocked(x.node_id)


def test_a_revoked_node_block_takes_its_observers_votes_with_it() -> None:
    mesh = Mesh(6)
    members = mesh.members
    x = members[5]
    _block_by_quorum(mesh, x)
    for policy in members[0].store.view():
        if policy.kind == MITIGATION_KIND:
            blob = sign_revocation(
                AUTHORITY, policy.issuer, policy.id, policy.version, now_ms=mesh.clock.now_ms
            )
            assert members[0].store.accept_signed(blob)
    mesh.sync()
    # Not blocked again by an observer re-issuing from its votes, nor after a restart.
    assert not any(m.immune.node_blocked(x.node_id) for m in members)
    assert not any(p.kind == MITIGATION_KIND for m in members for p in m.store.view())
    mesh.clock.now_ms += 61_000
    assert not _restarted(mesh, members[3], mesh.alive).node_blocked(x.node_id)
    # A new observation starts a new count: the old votes are gone.
    outcome = members[3].immune.mitigate(_request("node", x.node_id))
    assert outcome.status == "pending" and "1 of 3" in outcome.detail


class TickingClock(Clock):
    """Each read is a millisecond later: a write lands after the read that computed it."""

    def __call__(self) -> int:
        self.now_ms += 1
        return self.now_ms


def _node_blocks_of(member: Member, x: Member) -> list[int]:
    """Expiries of the live node blocks of x in member's store."""
    return [
        p.expires_at_ms
        for p in member.store.view()
        if p.kind == MITIGATION_KIND and p.id == mitigation_id("node", x.node_id)
    ]


def test_observations_kept_for_a_block_end_before_it_and_make_no_new_block() -> None:
    mesh = Mesh(6, clock=TickingClock())
    members = mesh.members
    x = members[5]
    _block_by_quorum(mesh, x)
    issued = sum(m.immune.stats["issued"] for m in members)
    # Past the observations' own TTL: only the votes kept for the block are live.
    mesh.clock.now_ms += 61_000
    for member in members:
        member.immune.check_quorums()
    mesh.sync()
    last = max(e for m in members for e in _node_blocks_of(m, x))
    for observer in members[:3]:
        held = observer.store.get(observer.signer.public_key, observation_id(x.node_id))
        assert held is not None and held.expires_at_ms < last - 900
    # The block ends: the votes kept for it ended before, nobody issues a new one.
    mesh.clock.now_ms = last
    for _ in range(3):
        for member in members:
            member.immune.check_quorums()
        mesh.sync()
    assert sum(m.immune.stats["issued"] for m in members) == issued
    assert not any(m.immune.node_blocked(x.node_id) for m in members)
    assert not any(_node_blocks_of(m, x) for m in members)


def test_a_revoked_block_held_unconfirmed_takes_the_observers_kept_vote_with_it() -> None:
    mesh = Mesh(6)
    members = mesh.members
    x, r = members[5], members[0]
    _block_by_quorum(mesh, x)
    mesh.clock.now_ms += 61_000  # r's vote is live only because the block keeps it
    # r restarted with the other observers not back yet: its own vote is not a quorum
    # (2 of the 3 alive others), the block is held unconfirmed there.
    store = PolicyStore(
        replica_id=r.signer.public_key,
        authority_keys=[AUTHORITY.public_key],
        allowed_issuers=immune_issuers(mesh.roles.get),
        clock=mesh.clock,
    )
    store.offer(r.store.retained_records())
    restarted = ImmuneService(
        policies=store,
        signer=r.signer,
        config=ImmuneConfig(),
        protected={node_id_from_public_key(AUTHORITY.public_key)},
        alive=lambda: [r.node_id, members[3].node_id, members[4].node_id],
        quorum_max=3,
        clock_ms=mesh.clock,
    )
    assert not restarted.node_blocked(x.node_id)
    assert store.get(r.signer.public_key, observation_id(x.node_id)) is not None
    for policy in store.view():
        if policy.kind == MITIGATION_KIND:
            blob = sign_revocation(
                AUTHORITY, policy.issuer, policy.id, policy.version, now_ms=mesh.clock.now_ms
            )
            assert store.accept_signed(blob)
    assert not any(p.kind == MITIGATION_KIND for p in store.view())
    assert store.get(r.signer.public_key, observation_id(x.node_id)) is None
    assert restarted.stats["observations_withdrawn"] == 1


def test_a_vote_is_kept_no_longer_than_this_nodes_block_ttl_for_a_longer_block() -> None:
    mesh = Mesh(6)
    members = mesh.members
    x, long_issuer = members[5], members[3]
    for member in members[:2]:
        assert member.immune.mitigate(_request("node", x.node_id)).status == "pending"
    mesh.sync()
    # Another immune node's block of x, for three days: backed once a third vote arrives.
    body = MitigationBody(
        target_kind="node",
        target=x.node_id,
        note=PolicyNote(source="s", reason="r", evidence="", action="a", until=""),
        observers=(),
    )
    long_block = long_issuer.store.issue(
        long_issuer.signer,
        mitigation_id("node", x.node_id),
        MITIGATION_KIND,
        body_of(body),
        ttl_ms=3 * 24 * 3600 * 1000,
    )
    mesh.sync()
    assert members[2].immune.mitigate(_request("node", x.node_id)).status == "issued"
    mesh.sync()
    assert all(m.immune.node_blocked(x.node_id) for m in members[:5])
    # The votes are kept as long as a block of ours would last (600 s), not three days.
    ttl_ms = int(ImmuneConfig().block_ttl_s * 1000)
    for observer in members[:3]:
        held = observer.store.get(observer.signer.public_key, observation_id(x.node_id))
        assert held is not None
        assert held.expires_at_ms <= long_block.issued_at_ms + ttl_ms
    # Past that, a restarted node no longer finds the quorum backing the long block.
    mesh.clock.now_ms = long_block.issued_at_ms + ttl_ms
    assert not _restarted(mesh, members[4], mesh.alive).node_blocked(x.node_id)


def test_the_built_in_patterns_block_an_origin_through_the_engine() -> None:
    config = ImmuneConfig(denial_count=3, denial_window_s=10)
    mesh, immune, engine = _one_node_with_patterns(config)
    t = mesh.clock.now_ms / 1000

    def denial(origin: str, entry_origin: str | None = None) -> Denial:
        return Denial(
            ts=t, origin=origin, zone="public", limit="zone", blocked="s", entry_origin=entry_origin
        )

    # Denials seen at a provider for another entry node's caller do not count.
    engine.process_batch([denial("mesh:e", "http:attacker")] * 5)
    engine.process_batch([denial("http:attacker"), denial("http:good"), denial("http:attacker")])
    _check(immune, "http:attacker")
    engine.process_batch([denial("http:attacker")])
    with pytest.raises(PolicyBlocked):
        _check(immune, "http:attacker")
    _check(immune, "http:good")
    note = immune.blocks.all()[0].body.note
    assert note.source == "pattern:immune-zone-denials" and "3 events" in note.evidence
    # Bad envelopes from a peer observe it (a node block waits for a quorum: 2 of the 3
    # other members).
    mesh.alive += ["peer", "n2", "n3"]
    engine.process_batch(
        [EnvelopeRejected(ts=t, reason="bad_signature", sender="peer")] * config.bad_envelope_count
    )
    assert immune.stats["observations"] == 1 and immune.stats["pending"] == 1


def test_an_http_client_address_is_blocked_whatever_token_it_uses() -> None:
    mesh = Mesh(1)
    immune = mesh.members[0].immune
    assert immune.mitigate(_request("origin", "addr:10.0.0.9")).status == "issued"
    with pytest.raises(PolicyBlocked):
        _check(immune, "http:good", addr="10.0.0.9")
    _check(immune, "http:good", addr="10.0.0.8")
    _check(immune, "stdio")


def test_a_grant_from_the_network_holding_past_the_ttl_bound_is_not_enforced() -> None:
    mesh = Mesh(6)
    members = mesh.members
    a, b = members[0], members[1]
    body = {
        "target_kind": "origin",
        "target": "http:victim",
        "note": {"source": "s", "reason": "r", "action": "a", "until": "u"},
    }
    year_ms = 365 * 24 * 3600 * 1000
    a.store.issue(a.signer, "forever", MITIGATION_KIND, body, ttl_ms=year_ms)
    # Observations that would vote for a year: each counts for nothing.
    x = members[5]
    observation = {"subject": x.node_id, "reason": "r"}
    for member in members[:3]:
        member.store.issue(member.signer, "long", "observation", observation, ttl_ms=year_ms)
    mesh.sync()
    _check(b.immune, "http:victim")
    assert b.immune.stats["ttl_ignored"] == 4
    assert b.immune.tally.observers(x.node_id, mesh.clock.now_ms) == []


@pytest.mark.parametrize("observers", [["n"] * (MAX_OBSERVERS + 1), ["n" * (MAX_TARGET_CHARS + 1)]])
def test_a_grant_from_the_network_with_oversized_observers_is_refused_and_counted(
    observers: list[str],
) -> None:
    mesh = Mesh(2)
    a, b = mesh.members
    body = {
        "target_kind": "origin",
        "target": "http:victim",
        "note": {"source": "s", "reason": "r", "action": "a", "until": "u"},
    }
    a.store.issue(a.signer, "fits", MITIGATION_KIND, {**body, "observers": ["n"]}, ttl_ms=60_000)
    oversized = {**body, "target": "http:other", "observers": observers}
    a.store.issue(a.signer, "oversized", MITIGATION_KIND, oversized, ttl_ms=60_000)
    mesh.sync()
    assert b.immune.stats["bad_bodies"] == 1
    with pytest.raises(PolicyBlocked):
        _check(b.immune, "http:victim")
    _check(b.immune, "http:other")  # not blocked


@pytest.mark.parametrize(
    "origin", ["http:loopback", "stdio", "addr:127.0.0.1", "addr:::1", "addr:::ffff:127.0.0.1"]
)
def test_a_block_of_a_node_local_origin_holds_only_on_the_node_that_issued_it(origin: str) -> None:
    mesh = Mesh(2)
    a, b = mesh.members
    addr = origin.removeprefix("addr:") if origin.startswith("addr:") else None
    assert a.immune.mitigate(_request("origin", origin)).status == "issued"
    mesh.sync()
    with pytest.raises(PolicyBlocked):
        _check(a.immune, origin, addr=addr)
    # b's own local callers, at b and forwarded to a, are other people.
    _check(b.immune, origin, addr=addr)
    _check(a.immune, f"mesh:{b.node_id}", entry_origin=origin, entry_node=b.node_id)
    assert b.immune.stats["local_origin_ignored"] == 1


def test_an_origin_block_of_a_mesh_node_does_not_skip_the_quorum() -> None:
    mesh = Mesh(6)
    members = mesh.members
    x = members[5]
    outcome = members[0].immune.mitigate(_request("origin", f"mesh:{x.node_id}"))
    assert outcome.status == "refused" and "quorum" in outcome.detail
    # One node forcing it: nobody refuses what x forwards.
    forced = {
        "target_kind": "origin",
        "target": f"mesh:{x.node_id}",
        "note": {"source": "s", "reason": "r", "action": "a", "until": "u"},
    }
    members[0].store.issue(members[0].signer, "forced", MITIGATION_KIND, forced, ttl_ms=60_000)
    mesh.sync()
    for member in members[:5]:
        _check(member.immune, f"mesh:{x.node_id}", "http:someone", x.node_id)
    assert members[1].immune.stats["mesh_origin_ignored"] == 1


@pytest.mark.parametrize(
    ("blocked", "client"),
    [
        ("addr:::ffff:10.0.0.9", "10.0.0.9"),
        ("addr:10.0.0.9", "::ffff:10.0.0.9"),
        ("addr:2001:DB8:0:0::1", "2001:db8::1"),
    ],
)
def test_an_address_block_holds_whichever_way_the_address_is_spelled(
    blocked: str, client: str
) -> None:
    mesh = Mesh(2)
    a, b = mesh.members
    assert a.immune.mitigate(_request("origin", blocked)).status == "issued"
    # The same spelling from the network, as another issuer might write it.
    body = {
        "target_kind": "origin",
        "target": blocked,
        "note": {"source": "s", "reason": "r", "action": "a", "until": "u"},
    }
    b.store.issue(b.signer, "spelled", MITIGATION_KIND, body, ttl_ms=60_000)
    mesh.sync()
    for member in (a, b):
        with pytest.raises(PolicyBlocked):
            _check(member.immune, "http:good", addr=client)
    assert len(b.immune.blocks.all()) == 2
