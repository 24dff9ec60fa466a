"""The immune system (System 5): turns pattern matches and S5 requests into signed,
replicated, self-expiring mitigation policies, and enforces every policy that reaches
this node on the call path.

Issuing (`mitigate`), in this order of refusals, each counted in `stats`:
- the immune system is off (`vsm.immune.enabled`), the request is malformed;
- the target is protected: this node, the mesh authority, this node's certificate
  issuer (as a node, or as a `mesh:<id>` origin);
- a live mitigation of the same target already holds (`duplicate`);
- a node target: this node publishes an `observation` of it; the block is issued only
  once observations from a quorum of alive members are held (`pending` until then);
- the issuance rate (`max_blocks_per_minute`) is spent;
- this node's certificate lacks the `immune` role (the CRDT would refuse the grant).

Enforcing: every mitigation grant that verifies (signed by a node whose certificate
carries `immune`, or by the authority) is indexed as it arrives. A node block is
enforced only when this node, too, holds observations of that node from a quorum — so a
node that issues a block of a healthy peer on its own gets nothing — and never against a
protected node. Expiry is checked on every lookup. An observer keeps its observation
alive as long as a block of that node holds here (a node restarting meanwhile finds the
quorum still signed) and withdraws it when the block is revoked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Collection
from typing import Any, Final

import msgspec

from vsmcp.crdt.errors import CrdtError
from vsmcp.crdt.policies import Policy, PolicyStore, policy_key
from vsmcp.crdt.replica import Change
from vsmcp.crdt.signing import Signer
from vsmcp.mesh.identity import node_id_from_public_key
from vsmcp.node.tools.errors import PolicyBlocked
from vsmcp.node.tools.model import CallContext
from vsmcp.node.vsm.events import Denial, EventSink, encode_event
from vsmcp.node.vsm.immune.blocklist import Block, BlockList
from vsmcp.node.vsm.immune.config import ImmuneConfig
from vsmcp.node.vsm.immune.model import (
    IMMUNE_KINDS,
    MAX_OBSERVERS,
    MAX_TARGET_CHARS,
    MITIGATION_KIND,
    OBSERVATION_KIND,
    TARGET_KINDS,
    MitigationBody,
    ObservationBody,
    PolicyNote,
    body_of,
    iso_utc,
    mitigation_id,
    mitigation_of,
    observation_id,
    observation_of,
)
from vsmcp.node.vsm.immune.patterns import BLOCK_NODE, BLOCK_ORIGIN, QUARANTINE_TOOL
from vsmcp.node.vsm.immune.quorum import AliveMembers, ObservationTally
from vsmcp.node.vsm.mitigation import MitigationOutcome, MitigationRequest, TargetKind
from vsmcp.node.vsm.patterns.actions import Match
from vsmcp.node.vsm.patterns.model import Action, PolicyAction

log = logging.getLogger(__name__)

RATE_WINDOW_S: Final = 60.0
MAX_TTL_S: Final = 7 * 24 * 3600.0
MAX_TTL_MS: Final = int(MAX_TTL_S * 1000)
# An observation kept alive for a block ends this long before the block (`_back_blocks`).
KEEP_MARGIN_MS: Final = 1000
MAX_EVIDENCE_CHARS: Final = 600
# Pattern `policy` actions name what to do; `block_sender` is the docs' older name.
ACTION_TARGETS: Final[dict[str, TargetKind]] = {
    BLOCK_ORIGIN: "origin",
    BLOCK_NODE: "node",
    "block_sender": "node",
    QUARANTINE_TOOL: "tool",
}
NODE_LOCAL_ORIGINS: Final = frozenset({"http:loopback", "stdio"})
_WHAT: Final = {"origin": "caller", "node": "entry node", "tool": "tool"}

AuditSink = Callable[[str, dict[str, Any]], None]
ClockMs = Callable[[], int]


def _address(origin: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address an `addr:` origin names, an IPv4-mapped one as IPv4; None otherwise."""
    if not origin.startswith("addr:"):
        return None
    try:
        address = ipaddress.ip_address(origin.removeprefix("addr:").split("%", 1)[0])
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return address if mapped is None else mapped


def canonical_origin(origin: str) -> str:
    """One spelling per origin: `addr:` as the address is written compressed, lower case,
    an IPv4-mapped IPv6 one (a dual-stack socket's IPv4 client) as IPv4. A block of
    `addr:2001:DB8::0:1` then holds for the client `2001:db8::1`, and one of
    `addr:10.0.0.9` for `::ffff:10.0.0.9`."""
    address = _address(origin)
    return origin if address is None else f"addr:{address.compressed}"


def is_node_local(origin: str) -> bool:
    """An origin that names a different caller on every node: `http:loopback`, `stdio`,
    a loopback `addr:`. A block of it is the issuing node's alone."""
    if origin in NODE_LOCAL_ORIGINS:
        return True
    # A dual-stack socket's IPv4 client is ::ffff:a.b.c.d (not is_loopback before 3.13).
    address = _address(origin)
    return address is not None and address.is_loopback


def _names_a_node(target_kind: str, target: str) -> bool:
    """An origin block of `mesh:<id>` refuses every call that node forwards: a node
    block in all but name, so it must not skip the quorum node blocks need."""
    return target_kind == "origin" and target.startswith("mesh:")


def _wall_ms() -> int:
    return int(time.time() * 1000)


class ImmuneService:
    """Implements `Mitigator`; `check_call` is the call path's gate."""

    def __init__(
        self,
        *,
        policies: PolicyStore,
        signer: Signer,
        config: ImmuneConfig,
        protected: Collection[str],
        alive: AliveMembers,
        quorum_max: int,
        events: EventSink | None = None,
        audit: AuditSink | None = None,
        clock_ms: ClockMs = _wall_ms,
    ) -> None:
        self._policies = policies
        self._signer = signer
        self.node_id = node_id_from_public_key(signer.public_key)
        self.config = config
        self.protected = frozenset(protected) | {self.node_id}
        self.tally = ObservationTally(alive, quorum_max)
        self._events = events
        self._audit = audit
        self._clock_ms = clock_ms
        self.blocks = BlockList()
        # Told the node id of each node block as it comes into force here (the mesh cuts
        # that peer's links: `node_blocked` keeps them cut while the block lasts).
        self.on_node_block: Callable[[str], None] | None = None
        # Node blocks held but not (yet) backed by a quorum of observations here.
        self._unconfirmed: dict[str, Block] = {}
        # Nodes whose block was revoked: our observation of them is withdrawn.
        self._withdrawn: set[str] = set()
        self._issued_at: deque[float] = deque()
        self._quorum_check: asyncio.Handle | None = None
        # issued, observations, pending, duplicate, refused_* (disabled, protected,
        # rate_limited, no_role, invalid, crdt), calls_refused, bad_bodies, protected_ignored,
        # ttl_ignored, local_origin_ignored, mesh_origin_ignored, remote_tool_ignored,
        # observations_kept (backing a block), observations_withdrawn (its block revoked)
        self.stats: Counter[str] = Counter()
        policies.on_change(self._changed)
        for policy in policies.view():
            self._index(policy)
        # A block restored before the observations backing it were indexed.
        self._confirm(self._clock_ms())

    # -- issuing ---------------------------------------------------------------------

    def mitigate(self, request: MitigationRequest) -> MitigationOutcome:
        if request.target_kind == "origin":
            request = msgspec.structs.replace(request, target=canonical_origin(request.target))
        refused = self._refusal(request)
        if refused is not None:
            self.stats[f"refused_{refused[0]}"] += 1
            log.warning(
                "immune: %s %s not blocked (%s): %s",
                request.target_kind,
                request.target,
                refused[0],
                refused[1],
            )
            return MitigationOutcome(status="refused", detail=refused[1])
        now_ms = self._clock_ms()
        held = self.blocks.find(request.target_kind, request.target, now_ms)
        if held is not None:
            self.stats["duplicate"] += 1
            return MitigationOutcome(status="duplicate", policy_id=held.policy_id)
        observers: list[str] = []
        if request.target_kind == "node":
            self._observe(request, now_ms)
            held = self.blocks.find("node", request.target, now_ms)
            if held is not None:  # our observation completed a quorum: blocked already
                return MitigationOutcome(status="issued", policy_id=held.policy_id)
            observers = self.tally.observers(request.target, now_ms)
            quorum = self.tally.quorum(request.target)
            if len(observers) < quorum:
                self.stats["pending"] += 1
                return MitigationOutcome(
                    status="pending",
                    detail=f"{len(observers)} of {quorum} observations of {request.target}",
                )
        return self._issue(request, now_ms, observers)

    def _refusal(self, request: MitigationRequest) -> tuple[str, str] | None:
        if not self.config.enabled:
            return "disabled", "the immune system is off (vsm.immune.enabled = false)"
        if request.target_kind not in TARGET_KINDS:
            return "invalid", f"unknown target kind {request.target_kind!r}"
        if not 0 < len(request.target) <= MAX_TARGET_CHARS:
            return "invalid", f"a target of 1 to {MAX_TARGET_CHARS} characters is required"
        if not 0 < request.ttl_s <= MAX_TTL_S:
            return "invalid", f"ttl_s must be in (0, {MAX_TTL_S:g}]"
        if self._is_protected(request.target_kind, request.target):
            return "protected", f"{request.target} is protected (this node, or its authority)"
        if _names_a_node(request.target_kind, request.target):
            return "invalid", "a node is blocked by a node block, which needs a quorum"
        if not self._policies.may_issue(self._signer.public_key, MITIGATION_KIND):
            return "no_role", "this node's certificate does not carry the 'immune' role"
        return None

    def _is_protected(self, target_kind: str, target: str) -> bool:
        if target_kind == "node":
            return target in self.protected
        return target_kind == "origin" and target.removeprefix("mesh:") in self.protected

    def _rate_allows(self) -> bool:
        now = time.monotonic()
        while self._issued_at and now - self._issued_at[0] >= RATE_WINDOW_S:
            self._issued_at.popleft()
        return len(self._issued_at) < self.config.max_blocks_per_minute

    def _issue(
        self, request: MitigationRequest, now_ms: int, observers: list[str]
    ) -> MitigationOutcome:
        if not self._rate_allows():
            self.stats["refused_rate_limited"] += 1
            detail = f"over vsm.immune.max_blocks_per_minute ({self.config.max_blocks_per_minute})"
            log.warning("immune: %s not blocked: %s", request.target, detail)
            return MitigationOutcome(status="refused", detail=detail)
        ttl_ms = int(request.ttl_s * 1000)
        until = iso_utc((now_ms + ttl_ms) / 1000)
        action = {"origin": "blocked caller", "node": "blocked node", "tool": "quarantined tool"}
        note = PolicyNote(
            source=request.source[:200],
            reason=request.reason[:MAX_EVIDENCE_CHARS],
            evidence=request.evidence[:MAX_EVIDENCE_CHARS],
            action=f"{action[request.target_kind]} {request.target} mesh-wide",
            until=until,
        )
        body = MitigationBody(
            target_kind=request.target_kind,
            target=request.target,
            note=note,
            observers=tuple(observers[:MAX_OBSERVERS]),  # the first are a quorum
        )
        policy_id = mitigation_id(request.target_kind, request.target)
        try:
            policy = self._policies.issue(
                self._signer, policy_id, MITIGATION_KIND, body_of(body), ttl_ms=ttl_ms
            )
        except CrdtError as e:
            self.stats["refused_crdt"] += 1
            log.error("immune: policy %s not issued: %s", policy_id, e)
            return MitigationOutcome(status="refused", detail=str(e))
        self._issued_at.append(time.monotonic())
        self.stats["issued"] += 1
        log.warning(
            "immune: issued %s (%s) until %s: %s", policy_id, note.action, until, note.reason
        )
        if self._audit is not None:
            self._audit(
                "immune.mitigation",
                {
                    "policy": policy_id,
                    "issuer": self.node_id,
                    "kind": MITIGATION_KIND,
                    "target_kind": request.target_kind,
                    "target": request.target,
                    "issued_at_ms": policy.issued_at_ms,
                    "expires_at_ms": policy.expires_at_ms,
                    "note": body_of(note),
                    "observers": list(observers),
                },
            )
        return MitigationOutcome(status="issued", policy_id=policy_id)

    def _observe(self, request: MitigationRequest, now_ms: int) -> None:
        """Publish (or refresh, past half its life) our observation of a node."""
        ttl_ms = int(self.config.observation_ttl_s * 1000)
        held = self._policies.get(self._signer.public_key, observation_id(request.target))
        if held is not None and held.expires_at_ms - now_ms > ttl_ms // 2:
            return
        observation = ObservationBody(
            subject=request.target,
            reason=request.reason[:MAX_EVIDENCE_CHARS],
            evidence=request.evidence[:MAX_EVIDENCE_CHARS],
        )
        try:
            self._policies.issue(
                self._signer,
                observation_id(request.target),
                OBSERVATION_KIND,
                body_of(observation),
                ttl_ms=ttl_ms,
            )
        except CrdtError as e:
            self.stats["refused_crdt"] += 1
            log.error("immune: observation of %s not published: %s", request.target, e)
            return
        self.stats["observations"] += 1
        log.warning("immune: observed %s: %s", request.target, request.reason)

    # -- the pattern engine's `policy` action ----------------------------------------

    def on_match(self, match: Match, action: Action) -> None:
        assert isinstance(action, PolicyAction)
        target_kind = ACTION_TARGETS.get(action.policy)
        if target_kind is None or match.group is None:
            self.stats["refused_invalid"] += 1
            log.warning(
                "pattern %s: policy action %r needs a group_by and one of %s",
                match.pattern,
                action.policy,
                sorted(ACTION_TARGETS),
            )
            return
        last = encode_event(match.event).decode()
        self.mitigate(
            MitigationRequest(
                target_kind=target_kind,
                target=str(match.group)[:MAX_TARGET_CHARS],
                ttl_s=action.ttl_s,
                source=f"pattern:{match.pattern}",
                reason=f"pattern {match.pattern} matched {match.count} events of {match.group}",
                evidence=f"{match.count} events; last: {last}"[:MAX_EVIDENCE_CHARS],
            )
        )

    # -- enforcing -------------------------------------------------------------------

    def check_call(self, ctx: CallContext, entry_node: str | None, tool: str) -> None:
        """Raise `PolicyBlocked` when a live mitigation covers this call: its origin,
        the origin an entry node named, the HTTP client's address, the entry node
        itself, or the tool."""
        if not len(self.blocks):
            return
        now_ms = self._clock_ms()
        find = self.blocks.find
        entry_origin = ctx.entry_origin
        # The entry node's loopback or stdio caller is not ours, whatever we blocked.
        named = entry_origin if entry_origin and not is_node_local(entry_origin) else None
        block = (
            find("origin", ctx.origin, now_ms)
            or (find("origin", named, now_ms) if named else None)
            or (
                find("origin", canonical_origin(f"addr:{ctx.client_addr}"), now_ms)
                if ctx.client_addr
                else None
            )
            or (find("node", entry_node, now_ms) if entry_node else None)
            or find("tool", tool, now_ms)
        )
        if block is None:
            return
        self.stats["calls_refused"] += 1
        if self._events is not None:
            self._events.publish(
                Denial(
                    ts=now_ms / 1000,
                    origin=ctx.origin,
                    zone=ctx.caller_zone,
                    limit="blocked",
                    blocked=tool,
                    entry_origin=entry_origin,
                )
            )
        raise PolicyBlocked(
            block.policy_id, block.target, block.expires_at_ms / 1000, _WHAT[block.target_kind]
        )

    def _changed(self, change: Change[Policy]) -> None:
        for policy in change.removed:
            if policy.kind in IMMUNE_KINDS:
                self._unindex(policy)
        for policy in (*change.added, *change.changed):
            self._index(policy)
        if any(p.kind in IMMUNE_KINDS for c in (change.added, change.changed) for p in c):
            self._schedule_quorum_check()

    def _index(self, policy: Policy) -> None:
        if policy.kind in IMMUNE_KINDS and self._outlives_bound(policy):
            return
        if policy.kind == OBSERVATION_KIND:
            observation = observation_of(policy)
            if observation is None:
                self.stats["bad_bodies"] += 1
                return
            observer = node_id_from_public_key(policy.issuer)
            self.tally.add(observation.subject, observer, policy.expires_at_ms)
            return
        body = mitigation_of(policy)
        if body is None:
            if policy.kind == MITIGATION_KIND:
                self.stats["bad_bodies"] += 1
            return
        key = policy_key(policy.issuer, policy.id)
        block = Block(
            key=key,
            policy_id=policy.id,
            issuer=node_id_from_public_key(policy.issuer),
            target_kind=body.target_kind,
            target=canonical_origin(body.target) if body.target_kind == "origin" else body.target,
            issued_at_ms=policy.issued_at_ms,
            expires_at_ms=policy.expires_at_ms,
            body=body,
        )
        if self._is_protected(body.target_kind, body.target):
            self.stats["protected_ignored"] += 1
            log.warning("immune: policy %s ignored: it targets a protected node", key)
            return
        if _names_a_node(body.target_kind, body.target):
            self.stats["mesh_origin_ignored"] += 1
            log.warning("immune: policy %s ignored: it blocks a node without a quorum", key)
            return
        if (
            body.target_kind == "origin"
            and is_node_local(body.target)
            and block.issuer != self.node_id
        ):
            self.stats["local_origin_ignored"] += 1
            return
        if body.target_kind == "tool" and block.issuer != self.node_id:
            # Another provider's copy of a tool of that name: it refuses its own calls.
            self.stats["remote_tool_ignored"] += 1
            return
        if body.target_kind == "node" and not self.tally.confirmed(body.target, self._clock_ms()):
            self._unconfirmed[key] = block
            self.blocks.discard(key)
            return
        self._unconfirmed.pop(key, None)
        self._enforce(block)

    def _enforce(self, block: Block) -> None:
        self.blocks.put(block)
        notify = self.on_node_block
        if notify is not None and block.target_kind == "node" and self.node_blocked(block.target):
            notify(block.target)

    def node_blocked(self, node_id: str) -> bool:
        """A node block of `node_id` is in force here now: its mesh links stay cut.

        Answers from the blocks in force only: the mesh asks it while counting who is
        alive, which the quorum counts over, so it never counts a quorum itself. A block
        held unconfirmed comes into force in `check_quorums` (scheduled when observations,
        membership or admissions change), which cuts its target's links then."""
        if not len(self.blocks):
            return False
        return self.blocks.find("node", node_id, self._clock_ms()) is not None

    def _outlives_bound(self, policy: Policy) -> bool:
        """A policy from the network that would hold longer than any this node issues
        (`MAX_TTL_S` from now): ignored and counted, so a signed grant with a far expiry
        (or a far `issued_at`) does not block, or vote, for good."""
        if policy.expires_at_ms - self._clock_ms() <= MAX_TTL_MS:
            return False
        self.stats["ttl_ignored"] += 1
        log.warning(
            "immune: policy %s ignored: it expires more than %gs from now",
            policy_key(policy.issuer, policy.id),
            MAX_TTL_S,
        )
        return True

    def _unindex(self, policy: Policy) -> None:
        if policy.kind == OBSERVATION_KIND:
            observation = observation_of(policy)
            if observation is not None:
                self.tally.remove(observation.subject, node_id_from_public_key(policy.issuer))
            return
        key = policy_key(policy.issuer, policy.id)
        block = self.blocks.get(key) or self._unconfirmed.get(key)
        self.blocks.discard(key)
        self._unconfirmed.pop(key, None)
        if (
            block is not None
            and block.target_kind == "node"
            and block.expires_at_ms > self._clock_ms()
        ):  # revoked (not expired): our vote backing it goes too
            self._withdrawn.add(block.target)
            self._schedule_quorum_check()

    def members_changed(self) -> None:
        """Membership moved (a peer came, went, turned alive or dead, was admitted): a
        quorum counts alive members only, so a node block held unconfirmed (one restored
        from the snapshot before the peers were back) may be backed now."""
        if self._unconfirmed:
            self._schedule_quorum_check()

    def _schedule_quorum_check(self) -> None:
        """After the CRDT's callbacks have returned (issuing writes to the CRDT)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.check_quorums()
            return
        if self._quorum_check is None:
            self._quorum_check = loop.call_soon(self.check_quorums)

    def check_quorums(self) -> None:
        """Enforce node blocks a quorum now backs; issue one for a subject a quorum
        observed when no block of it holds yet."""
        self._quorum_check = None
        now_ms = self._clock_ms()
        for subject in self._withdrawn:
            if self.blocks.find("node", subject, now_ms) is None:
                self._withdraw_observation(subject)
        self._withdrawn.clear()
        self._confirm(now_ms)
        self._back_blocks(now_ms)
        for subject in self.tally.subjects():
            observers = self.tally.observers(subject, now_ms)
            if (
                self.config.enabled
                and self.node_id in observers
                and len(observers) >= self.tally.quorum(subject)
                and self.blocks.find("node", subject, now_ms) is None
                and not self._is_protected("node", subject)
            ):
                self._issue(
                    MitigationRequest(
                        target_kind="node",
                        target=subject,
                        ttl_s=self.config.block_ttl_s,
                        source="immune:quorum",
                        reason=f"{len(observers)} members observed bad envelopes from {subject}",
                        evidence=f"observers: {', '.join(observers)}",
                    ),
                    now_ms,
                    observers,
                )

    def _confirm(self, now_ms: int) -> None:
        for key, block in list(self._unconfirmed.items()):
            if self.tally.confirmed(block.target, now_ms):
                del self._unconfirmed[key]
                self._enforce(block)

    def _back_blocks(self, now_ms: int) -> None:
        """Keep our observation of each node a block here holds alive as long as that
        block: the block outlives observations (`block_ttl_s` > `observation_ttl_s`), and a
        node that restarts (or rejoins) while it holds must find the quorum that backed it
        still signed, each vote by its own observer, or it would not enforce it.

        Kept until `KEEP_MARGIN_MS` before the block ends (never past it: a vote kept
        alive by a block must not outlive it and make a new one), and no longer than a
        block this node issues (`block_ttl_s` from the block's issue), whoever issued it."""
        ttl_cap_ms = int(self.config.block_ttl_s * 1000)
        for block in self.blocks.all():
            if block.target_kind != "node":
                continue
            until_ms = min(block.expires_at_ms, block.issued_at_ms + ttl_cap_ms) - KEEP_MARGIN_MS
            if until_ms <= now_ms:
                continue
            if self.node_id not in self.tally.observers(block.target, now_ms):
                continue
            held = self._policies.get(self._signer.public_key, observation_id(block.target))
            if held is None or held.expires_at_ms >= until_ms:
                continue
            try:
                self._policies.issue(
                    self._signer,
                    held.id,
                    OBSERVATION_KIND,
                    held.body,
                    ttl_ms=until_ms - now_ms,
                )
            except CrdtError as e:
                self.stats["refused_crdt"] += 1
                log.error("immune: observation of %s not kept: %s", block.target, e)
                continue
            self.stats["observations_kept"] += 1

    def _withdraw_observation(self, subject: str) -> None:
        """A block of `subject` was revoked: our observation of it goes too, or it would
        make a block again (and back one on nodes that restart)."""
        held = self._policies.get(self._signer.public_key, observation_id(subject))
        if held is None:
            return
        try:
            self._policies.revoke(self._signer.public_key, held.id, by=self._signer)
        except CrdtError as e:
            self.stats["refused_crdt"] += 1
            log.error("immune: observation of %s not withdrawn: %s", subject, e)
            return
        self.stats["observations_withdrawn"] += 1

    # -- views -----------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """`GET /api/policies`: every live immune policy this node holds, with its note."""
        now_ms = self._clock_ms()
        enforced = {b.key for b in self.blocks.all()}
        items = []
        for policy in self._policies.view():
            key = policy_key(policy.issuer, policy.id)
            item: dict[str, Any] = {
                "id": policy.id,
                "key": key,
                "kind": policy.kind,
                "issuer": node_id_from_public_key(policy.issuer),
                "issued_at_ms": policy.issued_at_ms,
                "expires_at_ms": policy.expires_at_ms,
                "issued": iso_utc(policy.issued_at_ms / 1000),
                "expires": iso_utc(policy.expires_at_ms / 1000),
                "version": policy.version,
            }
            body = mitigation_of(policy)
            observation = observation_of(policy)
            if body is not None:
                item.update(
                    target_kind=body.target_kind,
                    target=body.target,
                    note=body_of(body.note),
                    observers=list(body.observers),
                    enforced=key in enforced and policy.expires_at_ms > now_ms,
                )
            elif observation is not None:
                item.update(
                    target_kind="node", target=observation.subject, note=body_of(observation)
                )
            else:
                item["body"] = policy.body
            items.append(item)
        return {"policies": items, "stats": dict(self.stats)}
