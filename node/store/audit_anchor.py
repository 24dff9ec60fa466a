"""Each node's audit head, anchored on its peers: a log that went backwards is caught
even when its database and `audit.head` were restored together.

Every `ANNOUNCE_INTERVAL_S` a node sends each alive peer an AUDIT_HEAD envelope (one
way, ≈200 bytes) holding its own head, `(epoch, seq, hash)` signed by its key, and the
head it last saw of that peer. Peers keep the highest head they saw per node (by epoch,
then seq; at most `MAX_REMEMBERED_HEADS`, the least recently updated forgotten first),
persisted in the store (`kv` key `audit_heads_seen`).

A node told a head of its own that its log does not continue (the seq is past the log's
end, or the log's entry there has another hash) went backwards after the peer saw it:
the node stops with exit 2 naming both heads (`on_rollback`), unless the operator
started it with `--accept-audit-rollback`. Then it records an `audit.rollback_accepted`
entry and moves to a higher `epoch` (kept in the store), which its peers take as newer
than anything they saw, so the old heads stop counting.

The heads are signed over `ANCHOR_SIG_DOMAIN || epoch u64 || seq u64 || hash`, so a peer
can only repeat heads the node really had; it cannot invent a longer log to stop it.
Heads announced lag the log by up to one interval: a rollback of fewer entries than one
interval's worth since the last announcement is not seen by the mesh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated, Final

import msgspec
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from vsmcp.mesh.envelope import Envelope, MsgType
from vsmcp.mesh.identity import NodeKey
from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.mesh.service import Service
from vsmcp.node.peers.service import MeshService, Peer
from vsmcp.node.store.audit import AuditLog
from vsmcp.node.store.database import Store

log = logging.getLogger(__name__)

ANNOUNCE_INTERVAL_S: Final = 5.0
MAX_REMEMBERED_HEADS: Final = 4096
KV_SEEN_HEADS: Final = "audit_heads_seen"
KV_AUDIT_EPOCH: Final = "audit_epoch"
ANCHOR_SIG_DOMAIN: Final = b"vsmcp audit anchor v1\x00"
_ANCHOR_INTS = struct.Struct(">QQ")
_MAX_SEQ: Final = 2**63 - 1  # msgspec bounds are int64; no log gets near it

_U64 = Annotated[int, msgspec.Meta(ge=0, le=_MAX_SEQ)]
_Hash = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
_Sig = Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]


class AnchoredHead(msgspec.Struct, array_like=True, frozen=True):
    """A node's audit head as it announced it."""

    epoch: _U64
    seq: _U64
    hash: _Hash
    sig: _Sig

    def describe(self) -> str:
        return f"entry {self.seq} (epoch {self.epoch}, hash {self.hash.hex()[:16]}…)"


class AuditHeadMessage(msgspec.Struct, array_like=True, frozen=True):
    head: AnchoredHead  # the sender's
    seen: AnchoredHead | None = None  # the recipient's, as the sender last saw it


_encode = msgspec.msgpack.Encoder().encode
_decode_message = msgspec.msgpack.Decoder(AuditHeadMessage).decode
_decode_seen = msgspec.msgpack.Decoder(dict[str, AnchoredHead]).decode


def anchor_message(epoch: int, seq: int, hash_: bytes) -> bytes:
    """What an anchored head's signature signs."""
    return ANCHOR_SIG_DOMAIN + _ANCHOR_INTS.pack(epoch, seq) + hash_


def signed_by(head: AnchoredHead, public_key: bytes) -> bool:
    try:
        VerifyKey(public_key).verify(anchor_message(head.epoch, head.seq, head.hash), head.sig)
    except BadSignatureError:
        return False
    return True


def decode_seen(raw: bytes) -> dict[str, AnchoredHead]:
    """The persisted map of heads seen per node id (empty if unreadable)."""
    try:
        return _decode_seen(raw)
    except msgspec.DecodeError:
        return {}


class AuditAnchor(Service):
    """Announces this node's audit head and remembers its peers'. Async context manager."""

    def __init__(
        self,
        *,
        mesh: MeshService,
        audit: AuditLog,
        store: Store,
        key: NodeKey,
        accept_rollback: bool,
        on_rollback: Callable[[str], None],
        loops: LoopSupervisor,
        interval_s: float = ANNOUNCE_INTERVAL_S,
    ) -> None:
        self._mesh = mesh
        self._audit = audit
        self._store = store
        self._key = key
        self._accept_rollback = accept_rollback
        self._on_rollback = on_rollback
        self._interval_s = interval_s
        self._loops = loops
        self._epoch = 0
        self._seen: OrderedDict[str, AnchoredHead] = OrderedDict()
        self._dirty = False
        self._own: AnchoredHead | None = None
        self._task: asyncio.Task[None] | None = None
        self._check: asyncio.Task[None] | None = None
        # The highest head of ours that arrived while a check ran: checked right after.
        self._pending: AnchoredHead | None = None
        self.received = 0  # AUDIT_HEAD messages taken (tests and metrics wait on it)
        self.rejected = 0  # of which did not decode or verify
        self.compared = 0  # heads of our own, signed by us, compared with our log

    @property
    def epoch(self) -> int:
        return self._epoch

    def seen_head(self, node_id: str) -> AnchoredHead | None:
        return self._seen.get(node_id)

    async def start(self) -> None:
        if self._task is not None:
            return
        raw_epoch = await self._store.kv_get(KV_AUDIT_EPOCH)
        self._epoch = int.from_bytes(raw_epoch, "big") if raw_epoch else 0
        raw_seen = await self._store.kv_get(KV_SEEN_HEADS)
        self._seen = OrderedDict(decode_seen(raw_seen) if raw_seen else {})
        self._mesh.handle_oneway(MsgType.AUDIT_HEAD, self._on_message)
        # Supervised: a failing round restarts the loop, and one that keeps failing
        # makes the node unhealthy instead of leaving its peers without our head.
        self._task = self._loops.spawn("audit-anchor", self._run)

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._check) if t is not None]
        self._task = self._check = None
        self._pending = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._persist()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            self._announce()
            await self._persist()

    def _own_head(self) -> AnchoredHead:
        seq, hash_ = self._audit.head_seq, self._audit.head_hash
        own = self._own
        if own is None or (own.epoch, own.seq, own.hash) != (self._epoch, seq, hash_):
            sig = self._key.sign_detached(anchor_message(self._epoch, seq, hash_))
            own = AnchoredHead(epoch=self._epoch, seq=seq, hash=hash_, sig=sig)
            self._own = own
        return own

    def _announce(self) -> None:
        head = self._own_head()
        for node_id in self._mesh.alive_peers():
            message = AuditHeadMessage(head=head, seen=self._seen.get(node_id))
            self._mesh.send(node_id, MsgType.AUDIT_HEAD, _encode(message))

    async def _persist(self) -> None:
        if self._dirty:
            self._dirty = False
            await self._store.kv_set(KV_SEEN_HEADS, _encode(dict(self._seen)))

    def _on_message(self, peer: Peer, envelope: Envelope) -> None:
        self.received += 1
        try:
            message = _decode_message(envelope.payload)
        except msgspec.DecodeError:
            self.rejected += 1
            return
        if not signed_by(message.head, peer.public_key):
            self.rejected += 1
            return
        self._remember(peer.node_id, message.head)
        seen = message.seen
        if seen is None or not signed_by(seen, self._key.public_key):
            return
        if self._check is None or self._check.done():
            self._check = asyncio.create_task(self._compare(seen), name="audit-anchor-check")
        elif self._pending is None or _order(seen) > _order(self._pending):
            self._pending = seen

    def _remember(self, node_id: str, head: AnchoredHead) -> None:
        known = self._seen.get(node_id)
        if known is not None and _order(known) >= _order(head):
            return
        self._seen[node_id] = head
        self._seen.move_to_end(node_id)
        while len(self._seen) > MAX_REMEMBERED_HEADS:
            self._seen.popitem(last=False)
        self._dirty = True

    async def _compare(self, seen: AnchoredHead) -> None:
        """`seen` is a head of ours a peer remembers: our log must continue it. Then the
        highest one that arrived meanwhile, if any."""
        next_seen: AnchoredHead | None = seen
        while next_seen is not None:
            try:
                await self._act_on(next_seen)
            except Exception:  # top-level handler of the check task: nobody awaits it
                log.exception("comparing %s with the audit log failed", next_seen.describe())
            finally:
                self.compared += 1
            next_seen, self._pending = self._pending, None

    async def _act_on(self, seen: AnchoredHead) -> None:
        if seen.epoch < self._epoch:
            return  # from before a rollback the operator accepted
        problem = await self._problem(seen)
        if problem is None:
            return
        if not self._accept_rollback:
            self._on_rollback(
                f"audit log went backwards: the mesh saw {seen.describe()}, {problem}; "
                f"restore the newer database, or start once with --accept-audit-rollback "
                f"to continue from this one"
            )
            return
        log.warning("audit log behind the mesh (%s); accepted by the operator", problem)
        epoch = max(self._epoch, seen.epoch) + 1
        # The record first, then the stored epoch, then the one announced: whoever sees
        # the new epoch (a peer, a test, the metrics) finds both already committed, and
        # a failed write leaves no epoch moved without its record.
        await self._audit.append(
            "audit.rollback_accepted",
            "operator",
            {
                "scope": "mesh",
                "problem": problem,
                "seen_epoch": seen.epoch,
                "seen_seq": seen.seq,
                "seen_hash": seen.hash.hex(),
                "epoch": epoch,
            },
            durable=True,
        )
        await self._store.kv_set(KV_AUDIT_EPOCH, epoch.to_bytes(8, "big"))
        self._epoch = epoch
        self._announce()

    async def _problem(self, seen: AnchoredHead) -> str | None:
        seq = self._audit.head_seq
        here = f"this node's log is at entry {seq} (epoch {self._epoch})"
        if seen.epoch > self._epoch:
            return f"{here}: an older epoch (the database was restored from an older copy)"
        if seen.seq > seq:
            return f"{here}: shorter (truncated, emptied or restored from an older copy)"
        if await self._audit.stored_hash(seen.seq) != seen.hash:
            return f"{here}, and its entry {seen.seq} differs (the database was replaced)"
        return None


def _order(head: AnchoredHead) -> tuple[int, int]:
    """Which of two heads is newer: the later epoch, then the longer log."""
    return head.epoch, head.seq
