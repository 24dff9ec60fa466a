"""Replicated policies (zone rules, immune-system blocks, rate limits): opaque signed JSON
documents, hot-applied through `on_change` callbacks.

Key `issuer_hex/id`. A grant of version v ranks (v, 0); a revocation of up to version v
ranks (v, 1). Grants are signed by their issuer, which must be an authority key or pass
the injected `allowed_issuers(issuer, kind)`; a revocation is signed by the issuer or
an authority. Verification, repair, expiry and epochs: see `crdt.replica`.

Cap per issuer
    One issuer (an `immune` node, say, compromised) could otherwise write any number of
    policy ids and bloat every replica. A replica holds at most `max_per_issuer` keys
    of one non-authority issuer: grants, tombstones of its policies and records expired
    but not yet forgotten all count (each is held in memory). When a record of a new key
    would exceed the cap, the replica keeps the issuer's lowest policy ids: a key above
    all those held is refused; a lower one enters and the highest held key is evicted.
    Which keys are held is then a function of the set of records received, not of their
    order (a key once outnumbered by lower keys never comes back, since those stay), so
    replicas that received the same records enforce the same set. Counting tombstones is
    what keeps that true: were a revocation to free a slot, a replica that had refused a
    key before the revocation and one that took it after would differ. A revoked slot is
    freed when its tombstone expires. Refusals and evictions are counted in `over_cap`
    by kind; a local `issue` over the cap raises `OverCap` instead.
    Authority-signed policies are exempt: the authority key is the offline root that
    certifies every node, so a cap on it bounds nothing an attacker holding it could
    not do otherwise, and operators' zone rules must never be pushed out.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from vsmcp.crdt.errors import CrdtError, InvalidValue, NotAuthorized, OverCap
from vsmcp.crdt.replica import Checked, Held, VerifiedDoc, WallClockMs, wall_clock_ms
from vsmcp.crdt.signing import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Signer
from vsmcp.crdt.values import MAX_SAFE_INT, check_int, dump_json, load_json_object

DEFAULT_REVOCATION_TTL_MS = 24 * 3600 * 1000
MAX_POLICY_ID_CHARS = 256
MAX_POLICY_KIND_CHARS = 64
DEFAULT_MAX_PER_ISSUER = 1_000

_Key = Annotated[bytes, msgspec.Meta(min_length=PUBLIC_KEY_BYTES, max_length=PUBLIC_KEY_BYTES)]
_Ms = Annotated[int, msgspec.Meta(ge=0, le=MAX_SAFE_INT)]
_PolicyId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_POLICY_ID_CHARS)]

AllowedIssuers = Callable[[bytes, str], bool]


class PolicyGrant(msgspec.Struct, frozen=True, array_like=True, tag=1):
    issuer: _Key
    id: _PolicyId
    kind: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_POLICY_KIND_CHARS)]
    version: _Ms
    issued_at_ms: _Ms
    expires_at_ms: _Ms
    body: str  # canonical JSON text of an object


class PolicyRevocation(msgspec.Struct, frozen=True, array_like=True, tag=2):
    issuer: _Key
    id: _PolicyId
    revoked_version: _Ms
    signer: _Key
    revoked_at_ms: _Ms
    expires_at_ms: _Ms


PolicyRecord = PolicyGrant | PolicyRevocation
_decoder: msgspec.msgpack.Decoder[PolicyRecord] = msgspec.msgpack.Decoder(PolicyRecord)
_encoder = msgspec.msgpack.Encoder()


@dataclass(frozen=True, slots=True)
class Policy:
    """A verified, live policy."""

    id: str
    kind: str
    issuer: bytes
    version: int
    issued_at_ms: int
    expires_at_ms: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Revoked:
    issuer: bytes
    id: str
    revoked_version: int


def policy_key(issuer: bytes, policy_id: str) -> str:
    return f"{issuer.hex()}/{policy_id}"


def _kind_of(blob: bytes) -> str:
    """The kind a refused record claims (for counting what was refused)."""
    try:
        record = _decoder.decode(blob[:-SIGNATURE_BYTES])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "undecodable"
    return record.kind if isinstance(record, PolicyGrant) else "revocation"


def _find(ids: list[str], policy_id: str) -> tuple[int, bool]:
    """Where `policy_id` is or would go in the sorted `ids`, and whether it is there."""
    at = bisect_left(ids, policy_id)
    return at, at < len(ids) and ids[at] == policy_id


def _kind_of_record(record: Policy | _Revoked) -> str:
    return record.kind if isinstance(record, Policy) else "revocation"


def _no_other_issuers(issuer: bytes, kind: str) -> bool:
    return False


class PolicyStore(VerifiedDoc["Policy | _Revoked", Policy]):
    """Verified view over the replicated policy document."""

    domain = b"vsmcp/crdt/v1/policies\n"

    def __init__(
        self,
        *,
        replica_id: bytes,
        authority_keys: Collection[bytes] = (),
        allowed_issuers: AllowedIssuers = _no_other_issuers,
        clock: WallClockMs = wall_clock_ms,
        revocation_ttl_ms: int = DEFAULT_REVOCATION_TTL_MS,
        max_per_issuer: int = DEFAULT_MAX_PER_ISSUER,
        name: str = "policies",
        **kwargs: Any,
    ) -> None:
        if max_per_issuer < 1:
            raise ValueError(f"max_per_issuer must be at least 1, got {max_per_issuer}")
        self.max_per_issuer = max_per_issuer
        # The policy ids held in `best` per non-authority issuer, sorted (see module doc).
        self._held_ids: dict[bytes, list[str]] = {}
        # Records refused or evicted by the cap per issuer, by kind ("revocation" for
        # tombstones). A record re-sent after a refusal is counted again.
        self.over_cap: Counter[str] = Counter()
        self._authority_keys = frozenset(authority_keys)
        self._allowed_issuers = allowed_issuers
        self._revocation_ttl_ms = revocation_ttl_ms
        # Records refused by verification (bad signature, an issuer that may not issue
        # the kind, undecodable), by policy kind ("revocation", "undecodable" otherwise).
        # A blob is verified once while it stays in the verification cache.
        self.rejected: Counter[str] = Counter()
        super().__init__(name, replica_id=replica_id, clock=clock, **kwargs)

    def may_issue(self, issuer: bytes, kind: str) -> bool:
        return issuer in self._authority_keys or self._allowed_issuers(issuer, kind)

    def reconsider_issuer(self, issuer: bytes) -> None:
        """Judge again the records the doc holds under `issuer`'s keys: call it when who
        may issue what changed for `issuer` (its certificate became known: a peer
        admitted). Its grants refused before (`allowed_issuers` did not know it yet, as
        for every record a snapshot restores before the mesh admits anyone) enter the
        view now if they may, and change listeners hear of them."""
        prefix = f"{issuer.hex()}/"
        keys = self._map.keys()  # (pycrdt's Map is not typed as iterable)
        self._reconsider([key for key in keys if key.startswith(prefix)])

    def _check(self, payload: bytes) -> Checked[Policy | _Revoked]:
        record = _decoder.decode(payload)
        if _encoder.encode(record) != payload:
            raise InvalidValue("policy payload is not canonical")
        key = policy_key(record.issuer, record.id)
        if isinstance(record, PolicyGrant):
            if not self.may_issue(record.issuer, record.kind):
                raise NotAuthorized(f"{record.issuer.hex()} may not issue {record.kind!r}")
            policy = Policy(
                id=record.id,
                kind=record.kind,
                issuer=record.issuer,
                version=record.version,
                issued_at_ms=record.issued_at_ms,
                expires_at_ms=record.expires_at_ms,
                body=load_json_object(record.body, what="body"),
            )
            rank = (record.version, 0)
            return Checked(key, record.issuer, policy, rank, record.expires_at_ms, True)
        if record.signer != record.issuer and record.signer not in self._authority_keys:
            raise NotAuthorized("revocation signed by neither the issuer nor an authority")
        revoked = _Revoked(record.issuer, record.id, record.revoked_version)
        rank = (record.revoked_version, 1)
        return Checked(key, record.signer, revoked, rank, record.expires_at_ms, False)

    def _verify_blob(self, blob: bytes) -> Held[Policy | _Revoked]:
        try:
            return super()._verify_blob(blob)
        except CrdtError:
            self.rejected[_kind_of(blob)] += 1
            raise

    def _admit(self, held: Held[Policy | _Revoked], now_ms: int) -> bool:
        if not super()._admit(held, now_ms):
            return False
        record = held.checked.record
        if record.issuer in self._authority_keys:
            return True
        ids = self._held_ids.setdefault(record.issuer, [])
        at, known = _find(ids, record.id)
        if known:
            return True  # another version of a key held already
        if len(ids) >= self.max_per_issuer:
            if at == len(ids):  # above every id held: refused
                self.over_cap[_kind_of_record(record)] += 1
                return False
            self._evict(record.issuer, ids.pop())
        ids.insert(at, record.id)
        return True

    def _evict(self, issuer: bytes, policy_id: str) -> None:
        key = policy_key(issuer, policy_id)
        evicted = self._best.pop(key)
        self.over_cap[_kind_of_record(evicted.checked.record)] += 1
        self._note(key, None)
        self._repairs.pop(key, None)  # never written back

    def _forgotten(self, key: str) -> None:
        issuer_hex, _, policy_id = key.partition("/")
        ids = self._held_ids.get(bytes.fromhex(issuer_hex))
        if ids is None:
            return
        at, held = _find(ids, policy_id)
        if held:
            del ids[at]

    def _track(self, issuer: bytes, policy_id: str) -> None:
        """Count a key written locally (`_put` does not go through `_admit`)."""
        if issuer in self._authority_keys:
            return
        ids = self._held_ids.setdefault(issuer, [])
        at, held = _find(ids, policy_id)
        if not held:
            ids.insert(at, policy_id)

    def _check_room(self, issuer: bytes, policy_id: str) -> None:
        if issuer in self._authority_keys:
            return
        ids = self._held_ids.get(issuer, [])
        if not _find(ids, policy_id)[1] and len(ids) >= self.max_per_issuer:
            raise OverCap(f"{issuer.hex()} holds {len(ids)} policies, the cap")

    def _view_of(self, record: Policy | _Revoked) -> Policy:
        assert isinstance(record, Policy)
        return record

    @classmethod
    def sign_record(cls, signer: Signer, record: PolicyRecord) -> bytes:
        """The blob of `record` signed by `signer` (what replicas verify)."""
        payload = _encoder.encode(record)
        return payload + signer.sign_detached(cls.domain + payload)

    def issue(
        self,
        signer: Signer,
        policy_id: str,
        kind: str,
        body: Mapping[str, Any],
        *,
        ttl_ms: int,
        version: int | None = None,
    ) -> Policy:
        """Issue (or replace) policy `policy_id` as `signer`; every replica applies it
        through its `on_change` callbacks. Raises NotAuthorized if `signer` may not
        issue `kind`, StaleRecord if `version` does not beat the held one, OverCap if
        `policy_id` is new and the issuer holds `max_per_issuer` policies already."""
        if not self.may_issue(signer.public_key, kind):
            raise NotAuthorized(f"{signer.public_key.hex()} may not issue {kind!r}")
        self._check_room(signer.public_key, policy_id)
        now = self._clock()
        if version is None:
            held = self.held(policy_key(signer.public_key, policy_id))
            previous = held.checked.rank[0] if held is not None else -1
            version = max(previous + 1, now)
        record = _grant(signer.public_key, policy_id, kind, body, version, now, ttl_ms)
        held = self._put(self.sign_record(signer, record))
        self._track(signer.public_key, policy_id)
        return self._view_of(held.checked.record)

    def revoke(self, issuer: bytes, policy_id: str, *, by: Signer) -> bool:
        """Revoke the held version of a policy (signed by its issuer or an authority).
        Returns False when no live version is held."""
        if by.public_key != issuer and by.public_key not in self._authority_keys:
            raise NotAuthorized("only the issuer or an authority may revoke a policy")
        held = self.held(policy_key(issuer, policy_id))
        if held is None or not held.checked.live:
            return False
        now = self._clock()
        record = PolicyRevocation(
            issuer=issuer,
            id=policy_id,
            revoked_version=held.checked.rank[0],
            signer=by.public_key,
            revoked_at_ms=now,
            expires_at_ms=max(now + self._revocation_ttl_ms, held.checked.expires_at_ms),
        )
        self._put(self.sign_record(by, record))
        return True

    def accept_signed(self, blob: bytes) -> bool:
        """Take a record signed elsewhere (e.g. a revocation signed with the offline
        authority key by `vsmcp policies revoke`). Raises a `CrdtError` when it does not
        verify; False when it does not outrank what is held or its issuer's cap keeps
        it out."""
        held = self._verify_blob(blob)
        return self.offer([(held.checked.key, blob)]) == 1

    def verify_signed(self, blob: bytes) -> Policy | None:
        """The grant a record signed elsewhere carries, verified but not taken (None for
        a revocation). Raises a `CrdtError` when it does not verify."""
        record = self._verify_blob(blob).checked.record
        return record if isinstance(record, Policy) else None

    def view(self) -> list[Policy]:
        """Live verified policies, sorted by (issuer, id)."""
        policies = [p for p in self._visible_records() if isinstance(p, Policy)]
        policies.sort(key=lambda p: (p.issuer, p.id))
        return policies

    def get(self, issuer: bytes, policy_id: str) -> Policy | None:
        held = self.held(policy_key(issuer, policy_id))
        if held is None or not held.checked.live or self._clock() >= held.checked.expires_at_ms:
            return None
        return self._view_of(held.checked.record)


def sign_revocation(
    by: Signer,
    issuer: bytes,
    policy_id: str,
    revoked_version: int,
    *,
    now_ms: int,
    ttl_ms: int = DEFAULT_REVOCATION_TTL_MS,
) -> bytes:
    """A signed revocation blob of version `revoked_version` of `issuer/policy_id`, made
    away from any replica (the authority's key stays offline); `accept_signed` takes it."""
    record = PolicyRevocation(
        issuer=issuer,
        id=policy_id,
        revoked_version=check_int(revoked_version, what="version"),
        signer=by.public_key,
        revoked_at_ms=now_ms,
        expires_at_ms=check_int(now_ms + ttl_ms, what="expiry"),
    )
    return PolicyStore.sign_record(by, record)


def sign_grant(
    by: Signer,
    policy_id: str,
    kind: str,
    body: Mapping[str, Any],
    *,
    now_ms: int,
    ttl_ms: int,
) -> bytes:
    """A signed grant of `policy_id` issued by `by`, made away from any replica (the
    authority's key stays offline; version: `now_ms`); `accept_signed` takes it."""
    record = _grant(by.public_key, policy_id, kind, body, now_ms, now_ms, ttl_ms)
    return PolicyStore.sign_record(by, record)


def _grant(
    issuer: bytes,
    policy_id: str,
    kind: str,
    body: Mapping[str, Any],
    version: int,
    now_ms: int,
    ttl_ms: int,
) -> PolicyGrant:
    return PolicyGrant(
        issuer=issuer,
        id=policy_id,
        kind=kind,
        version=check_int(version, what="version"),
        issued_at_ms=now_ms,
        expires_at_ms=check_int(now_ms + check_int(ttl_ms, what="ttl_ms"), what="expiry"),
        body=dump_json(dict(body), what="body"),
    )
