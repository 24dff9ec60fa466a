"""Gray failures, mesh-wide: signed observations in the policies CRDT, and their quorum.

A caller that degrades a (provider, tool) from its own calls (`degraded.py`) publishes a
`gray_observation` policy naming them, signed by its node key, short-lived
(`observation_ttl_s`, refreshed at half its life while the degradation holds) and
revoked when it recovers. Any admitted member may publish one (the CRDT's
`allowed_issuers`: `gray_issuers`); each node holds at most `max_observations` of its
own live and publishes at most `max_observations_per_minute` (more are counted, not
published). A body that does not decode is ignored and counted.

The quorum is the one membership verdicts use (`mesh.membership.quorum_size`): distinct
observers that this node holds alive, never the provider itself, at least
q = min(quorum_max, majority of the alive members other than the provider). One node,
however loud, holds one vote. What a quorum holds degraded is routed around at every
node (`MeshCatalog.quorum_changed`), the callers that saw nothing included.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Collection
from typing import Annotated, Any, Final

import msgspec

from vsmcp.crdt.errors import CrdtError
from vsmcp.crdt.policies import Policy, PolicyStore
from vsmcp.crdt.replica import Change
from vsmcp.crdt.signing import Signer
from vsmcp.mesh.identity import node_id_from_public_key
from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.mesh.membership import quorum_size
from vsmcp.node.routing.degraded import Key
from vsmcp.node.routing.gray_config import GrayConfig
from vsmcp.node.vsm.loop_service import LoopService

log = logging.getLogger(__name__)

GRAY_KIND: Final = "gray_observation"
MAX_NAME_CHARS: Final = 256
MAX_REASON_CHARS: Final = 300

AliveMembers = Callable[[], Collection[str]]
"""The node ids this node holds alive, itself included."""
RolesOf = Callable[[bytes], Collection[str] | None]
"""The roles of the certificate a key holds; None for a key this node does not know."""


class GrayObservationBody(msgspec.Struct, frozen=True, kw_only=True):
    provider: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_CHARS)]
    tool: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_CHARS)]
    reason: Annotated[str, msgspec.Meta(max_length=MAX_REASON_CHARS)] = ""


def gray_observation_id(provider: str, tool: str) -> str:
    return f"gray:{provider}:{tool}"


def gray_issuers(roles_of: RolesOf) -> Callable[[bytes, str], bool]:
    """Part of the policies CRDT's `allowed_issuers`: gray observations from any member
    this node knows (its own key or an admitted peer's)."""

    def allowed(issuer: bytes, kind: str) -> bool:
        return kind == GRAY_KIND and roles_of(issuer) is not None

    return allowed


def _wall_ms() -> int:
    return int(time.time() * 1000)


class GrayExchange(LoopService):
    """Its loop refreshes our observations and recounts the quorum as they expire."""

    loop_name = "gray-exchange"

    def __init__(
        self,
        loops: LoopSupervisor,
        *,
        policies: PolicyStore,
        signer: Signer,
        config: GrayConfig,
        alive: AliveMembers,
        quorum_max: int,
        on_quorum: Callable[[set[Key]], None],
        clock_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        super().__init__(loops)
        self._policies = policies
        self._signer = signer
        self.node_id = node_id_from_public_key(signer.public_key)
        self.config = config
        self._alive = alive
        self._quorum_max = quorum_max
        self._on_quorum = on_quorum
        self._clock_ms = clock_ms
        # (provider, tool) -> observer -> expiry (ms since the epoch)
        self._seen: dict[Key, dict[str, int]] = {}
        # Ours, published and not revoked: key -> reason
        self._ours: dict[Key, str] = {}
        self._published_at: deque[float] = deque()
        # published, refreshed, revoked, rate_limited, over_cap, crdt_refused, bad_bodies
        self.stats: dict[str, int] = {}
        policies.on_change(self._changed)
        for policy in policies.view():
            self._index(policy)

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    # -- ours -------------------------------------------------------------------------------

    def local_changed(self, key: Key, degraded: bool, reason: str = "") -> None:
        """This node degraded `key` (publish) or saw it recover (revoke)."""
        if degraded and not self.config.enabled:
            return  # gray failures off here: this node reports nothing to the mesh
        if degraded:
            if key not in self._ours and len(self._ours) >= self.config.max_observations:
                self._count("over_cap")
                return
            self._ours[key] = reason
            self._publish(key, reason)
        elif self._ours.pop(key, None) is not None:
            try:
                self._policies.revoke(
                    self._signer.public_key, gray_observation_id(*key), by=self._signer
                )
                self._count("revoked")
            except CrdtError as e:
                self._count("crdt_refused")
                log.warning("gray: observation of %s not revoked: %s", key, e)
        self.check()

    def _publish(self, key: Key, reason: str) -> None:
        now = time.monotonic()
        while self._published_at and self._published_at[0] < now - 60.0:
            self._published_at.popleft()
        if len(self._published_at) >= self.config.max_observations_per_minute:
            self._count("rate_limited")
            return
        body = GrayObservationBody(provider=key[0], tool=key[1], reason=reason[:MAX_REASON_CHARS])
        try:
            self._policies.issue(
                self._signer,
                gray_observation_id(*key),
                GRAY_KIND,
                msgspec.to_builtins(body),
                ttl_ms=int(self.config.observation_ttl_s * 1000),
            )
        except CrdtError as e:
            self._count("crdt_refused")
            log.warning("gray: observation of %s not published: %s", key, e)
            return
        self._published_at.append(now)
        self._count("published")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.observation_ttl_s / 4)
            self.refresh()

    def refresh(self) -> None:
        """Republish our observations past half their life; recount the quorum (expiry).
        Called periodically."""
        now_ms = self._clock_ms()
        half_ms = int(self.config.observation_ttl_s * 500)
        for key, reason in list(self._ours.items()):
            held = self._policies.get(self._signer.public_key, gray_observation_id(*key))
            if held is None or held.expires_at_ms - now_ms < half_ms:
                self._publish(key, reason)
                self._count("refreshed")
        self.check()

    # -- everyone's -------------------------------------------------------------------------

    def _changed(self, change: Change[Policy]) -> None:
        touched = False
        for policy in change.removed:
            if policy.kind == GRAY_KIND:
                touched = True
                body = self._body(policy)
                if body is not None:
                    observers = self._seen.get((body.provider, body.tool), {})
                    observers.pop(node_id_from_public_key(policy.issuer), None)
        for policy in (*change.added, *change.changed):
            if policy.kind == GRAY_KIND:
                touched = True
                self._index(policy)
        if touched:
            self.check()

    def _body(self, policy: Policy) -> GrayObservationBody | None:
        try:
            return msgspec.convert(policy.body, GrayObservationBody)
        except msgspec.ValidationError:
            return None

    def _index(self, policy: Policy) -> None:
        if policy.kind != GRAY_KIND:
            return
        body = self._body(policy)
        if body is None:
            self._count("bad_bodies")
            return
        observer = node_id_from_public_key(policy.issuer)
        self._seen.setdefault((body.provider, body.tool), {})[observer] = policy.expires_at_ms

    def observers(self, key: Key, now_ms: int) -> list[str]:
        alive = set(self._alive())
        return sorted(
            observer
            for observer, expires in self._seen.get(key, {}).items()
            if expires > now_ms and observer != key[0] and observer in alive
        )

    def quorum(self, provider: str) -> int:
        others = [m for m in self._alive() if m != provider]
        return quorum_size(len(others), self._quorum_max)

    def confirmed(self, now_ms: int) -> set[Key]:
        for key in [k for k, seen in self._seen.items() if not seen]:
            del self._seen[key]
        return {
            key for key in self._seen if len(self.observers(key, now_ms)) >= self.quorum(key[0])
        }

    def check(self) -> None:
        self._on_quorum(self.confirmed(self._clock_ms()))

    def view(self) -> dict[str, Any]:
        now_ms = self._clock_ms()
        return {
            "observations": [
                {
                    "provider": provider,
                    "tool": tool,
                    "observers": self.observers((provider, tool), now_ms),
                    "quorum": self.quorum(provider),
                }
                for provider, tool in sorted(self._seen)
            ],
            "ours": sorted(f"{p}:{t}" for p, t in self._ours),
            "stats": dict(self.stats),
        }
