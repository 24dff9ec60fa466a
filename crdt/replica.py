"""A pycrdt document whose readable content is only what verifies: the core of every
replicated document (registry, policies, context graph).

Storage
    One Y.Map per document. Each value is a *signed blob*: `payload || signature`, the
    payload a msgpack record whose signer is named inside it, the signature Ed25519 over
    `domain || payload` (the domain keeps a registry signature from being valid as a
    policy or an envelope). The map key must equal the key derived from the payload.
    Loose fields are never stored, so what a reader sees is exactly what was signed.

Why a second layer above Y.Map
    Y.Map resolves concurrent writes by client id and causality, not by our versions, and
    any replica (a malicious one included) can write any key. So the doc is treated as a
    transport: every replica keeps `best[key]`, the highest-ranked verified record it has
    ever seen for that key (rank = (version, kind), blob bytes break ties: a total order,
    so `best` is a join-semilattice and replicas that saw the same records agree). Views
    read `best`, never the raw doc. When the doc's value for a key is missing, garbage or
    lower-ranked than `best`, the replica writes `best` back (a *repair*); a repair is a
    causally later write, so every honest replica converges on the maximum, and a
    forged, altered or replayed-older blob never reaches any view.

Retirement and expiry
    Records carry `expires_at_ms`. A tombstone holds the key's rank `(retired_version, 1)`:
    it beats the announcement it retires and every older one; a newer version beats it.
    A tombstone expires no earlier than the record it retires, so when it is dropped the
    retired record is expired too and a stale replica re-sending it resurrects nothing.
    Expired records are not visible; they are never repaired; they are deleted from the
    doc and forgotten `expiry_grace_ms` after expiry (the grace absorbs clock skew, so a
    slightly slow peer does not keep writing back what a fast peer deleted).

Epochs and compaction
    Y.Map keeps a struct for every overwrite forever, so a doc under churn grows. The
    content that matters is small: the retained `best` records. `compact()` builds a new
    doc holding exactly those (live records and live tombstones) at epoch
    `(number + 1, replica_id)`. Epochs are totally ordered by (number, replica id), so
    concurrent compactions into the same number converge: the highest id wins and the
    others switch to it. Rules, applied by `crdt.sync`:
      * a message for a newer epoch: ask for (or take, if it is one) the full state of
        that epoch, switch to it, then repair our `best` into it, so nothing we held is lost
        and nothing retired comes back (tombstones are in `best` and outrank);
      * a message for an older epoch: its content is read in a scratch doc and offered
        record by record through the verified path (a record enters only if it outranks
        `best`), and the sender is told our epoch so it switches;
      * the same epoch: apply the Yjs update as usual;
      * an answer too large for one message arrives as pieces of records instead
        (`crdt.sync`): each is offered through the verified path, and the first piece
        of a newer epoch switches to a fresh doc at it (`switch_epoch_to_records`).
    Who compacts: any replica whose encoded doc exceeds a size threshold (checked by the
    caller's periodic tick). A doc full of garbage from a hostile replica is shed by the
    same rebuild, since only verified records are carried over.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from time import time_ns
from typing import Annotated, Any, Generic, TypeVar

import msgspec
import pycrdt

from vsmcp.crdt.errors import CrdtError, InvalidUpdate, NotAuthorized, StaleRecord
from vsmcp.crdt.signing import SIGNATURE_BYTES, verify_detached
from vsmcp.crdt.values import MAX_SAFE_INT, as_blob

R = TypeVar("R")
V = TypeVar("V")

MAP_NAME = "records"
MAX_BLOB_BYTES = 96 * 1024
EXPIRY_GRACE_MS = 60_000
VERIFY_CACHE_ENTRIES = 65_536
MAX_REPLICA_ID_BYTES = 64

WallClockMs = Callable[[], int]


def wall_clock_ms() -> int:
    return time_ns() // 1_000_000


class Epoch(msgspec.Struct, frozen=True, order=True, array_like=True, gc=False):
    """Generation of a compacted document; ordered by (number, by). (gc=False: an int and
    bytes cannot form a reference cycle; one is decoded with every sync message.)"""

    number: Annotated[int, msgspec.Meta(ge=0, le=MAX_SAFE_INT)]
    by: Annotated[bytes, msgspec.Meta(max_length=MAX_REPLICA_ID_BYTES)]  # compactor; b"" first


INITIAL_EPOCH = Epoch(0, b"")


@dataclass(frozen=True, slots=True)
class Checked(Generic[R]):
    """What a document kind makes of a payload it accepts."""

    key: str
    signer: bytes
    record: R
    rank: tuple[int, int]  # (version, 0 for a record / 1 for a tombstone)
    expires_at_ms: int
    live: bool  # False for tombstones


@dataclass(frozen=True, slots=True)
class Held(Generic[R]):
    """A verified blob and what it says."""

    blob: bytes
    checked: Checked[R]
    # What `_fold` (the hot path of every remote update) reads, copied out of `checked`:
    # a cache of tens of thousands of these lives mostly outside the CPU caches, and each
    # object it has to reach costs a miss. `order` is `rank` as one int; the expiry is in
    # ns so that the clock needs no division there (a bigint division costs more than
    # reading the clock).
    key: str = field(init=False, repr=False, compare=False)
    order: int = field(init=False, repr=False, compare=False)
    expires_at_ns: int = field(init=False, repr=False, compare=False)
    live: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        checked = self.checked
        version, kind = checked.rank
        if kind not in (0, 1):
            raise ValueError(f"rank kind must be 0 or 1, got {kind}")
        # Interned: every Held of one key shares the str, so `_fold` compares identities.
        object.__setattr__(self, "key", sys.intern(checked.key))
        object.__setattr__(self, "order", 2 * version + kind)
        object.__setattr__(self, "expires_at_ns", checked.expires_at_ms * 1_000_000)
        object.__setattr__(self, "live", checked.live)

    def outranks(self, other: Held[R]) -> bool:
        return (self.order, self.blob) > (other.order, other.blob)


@dataclass(frozen=True, slots=True)
class Change(Generic[V]):
    """View changes after a local or remote update (or an expiry seen by `prune`)."""

    added: list[V]
    changed: list[V]
    removed: list[V]


_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class _Changes:
    """Changed keys in the shape of a Yrs MapEvent's `keys`, for `VerifiedDoc._fold`."""

    keys: dict[str, dict[str, Any]]


class VerifiedDoc(ABC, Generic[R, V]):
    """A Y.Map of signed blobs plus the verified `best` record per key (see module doc)."""

    domain: bytes = b"vsmcp/crdt/v1/?\n"
    # Blobs larger than this are refused before their payload is decoded.
    max_blob_bytes: int = MAX_BLOB_BYTES

    def __init__(
        self,
        name: str,
        *,
        replica_id: bytes,
        clock: WallClockMs = wall_clock_ms,
        expiry_grace_ms: int = EXPIRY_GRACE_MS,
        client_ids: Callable[[], int] | None = None,
    ) -> None:
        self.name = name
        # Yjs client ids must be unique per doc instance: random by default; tests inject
        # a seeded source so runs are reproducible.
        self._client_ids = client_ids
        self._replica_id = replica_id
        self._clock = clock
        self._expiry_grace_ms = expiry_grace_ms
        self._best: dict[str, Held[R]] = {}
        self._verified: dict[bytes, Held[R] | None] = {}
        self._reported: dict[str, Held[R]] = {}
        # `best` blobs to write back over what a remote transaction left (see `_fold`)
        self._repairs: dict[str, bytes] = {}
        self._writing_local = False
        self._pending_change: dict[str, Held[R] | None] = {}
        # Keys whose view changed while their record did not (a document kind's view
        # joining another document's records: `_touch`), told to change listeners as
        # changed at the next flush if visible then.
        self._touched: set[str] = set()
        self._update_listeners: list[Callable[[bytes], None]] = []
        self._change_listeners: list[Callable[[Change[V]], None]] = []
        self._applying_remote = False
        # For `_fold`: the clock in ns (the default one without `wall_clock_ms`'s division,
        # which costs more than reading the clock; see `Held`) and whether a document
        # kind has its own `_admit`.
        self._now_ns: Callable[[], int] = (
            time_ns if clock is wall_clock_ms else lambda: clock() * 1_000_000
        )
        self._expiry_grace_ns = expiry_grace_ms * 1_000_000
        self._plain_admit = type(self)._admit is VerifiedDoc._admit
        # The current epoch; read-only outside this class (a plain attribute, not a
        # property: `SyncEndpoint.handle` compares it for every message).
        self.epoch = INITIAL_EPOCH
        self._install_new_doc(INITIAL_EPOCH)

    # ---- what a document kind defines ----------------------------------------------

    @abstractmethod
    def _check(self, payload: bytes) -> Checked[R]:
        """Decode and validate a payload; raise a CrdtError (or msgspec error) if bad.
        Must check that `signer` may write this record."""

    @abstractmethod
    def _view_of(self, record: R) -> V:
        """The public view of a live record."""

    def _admit(self, held: Held[R], now_ms: int) -> bool:
        """Whether a verified record may enter `best` (not long expired). Called only
        when the record outranks what `best` holds for its key and would enter it: a
        document kind's override may keep its own index of `best` (see `_forgotten`)."""
        return now_ms < held.checked.expires_at_ms + self._expiry_grace_ms

    def _forgotten(self, key: str) -> None:
        """`key` left `best` (pruned or dropped by a compaction)."""

    # ---- observation ----------------------------------------------------------------

    @property
    def replica_id(self) -> bytes:
        return self._replica_id

    def on_update(self, callback: Callable[[bytes], None]) -> None:
        """`callback(update)` for every local Yjs update (writes, repairs, compactions),
        in the epoch current when it is called. Remote updates are not echoed."""
        self._update_listeners.append(callback)

    def on_change(self, callback: Callable[[Change[V]], None]) -> None:
        """`callback(Change)` with the views added/changed/removed by an update."""
        self._change_listeners.append(callback)

    def _visible_records(self, now_ms: int | None = None) -> list[R]:
        return [record for _key, record in self._visible_items(now_ms)]

    def _visible_items(self, now_ms: int | None = None) -> list[tuple[str, R]]:
        now = self._clock() if now_ms is None else now_ms
        return [
            (key, held.checked.record)
            for key, held in self._best.items()
            if held.checked.live and now < held.checked.expires_at_ms
        ]

    def retained_records(self) -> list[tuple[str, bytes]]:
        """(key, blob) of every verified record worth sending: live records and live
        tombstones, what `compact()` would keep. Expired ones are left out."""
        now = self._clock()
        return [
            (key, held.blob) for key, held in self._best.items() if now < held.checked.expires_at_ms
        ]

    def held(self, key: str) -> Held[R] | None:
        """The best verified record for `key`, live, tombstone or expired."""
        return self._best.get(key)

    def raw_items(self) -> list[tuple[str, Any]]:
        """What the underlying doc holds, unverified (tests, diagnostics)."""
        return list(self._map.items())

    # ---- Yjs plumbing ---------------------------------------------------------------

    def _install_new_doc(self, epoch: Epoch) -> None:
        client_id = None if self._client_ids is None else self._client_ids()
        doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=client_id)
        ymap: pycrdt.Map[Any] = doc.get(MAP_NAME, type=pycrdt.Map)
        # No whole-doc observer is kept: it makes Yrs encode every transaction's update,
        # remote ones included, only for us to drop them; `_write_local` observes its own.
        self._subscriptions = [self._observe_keys(ymap)]
        self._native = self._native_doc(doc, ymap)
        self._doc = doc
        self._map = ymap
        self.epoch = epoch
        self._repairs.clear()

    def _observe_keys(self, ymap: pycrdt.Map[Any]) -> Any:
        # The Yrs-level observer hands over the changed keys without pycrdt's per-event
        # Python wrapping, which costs more than the apply itself (see bench_crdt.py);
        # its `keys` dict has the same shape. Fall back to the wrapped one if absent.
        integrated = getattr(ymap, "integrated", None)
        observe_raw = getattr(integrated, "observe", None)
        if callable(observe_raw):
            return observe_raw(self._fold)
        return ymap.observe(self._fold)

    @staticmethod
    def _native_doc(doc: pycrdt.Doc[Any], ymap: pycrdt.Map[Any]) -> Any:
        # pycrdt's Python transaction wrapper costs about as much as applying a small
        # update (see bench_crdt.py); remote updates go straight to the Yrs doc when it
        # exposes the calls pycrdt itself uses and our key observer is the Yrs-level one
        # (the wrapped observer reads pycrdt's transaction state, which this bypasses).
        native = getattr(doc, "_doc", None)
        integrated = getattr(ymap, "integrated", None)
        if (
            hasattr(doc, "_txn")
            and callable(getattr(native, "create_transaction", None))
            and callable(getattr(native, "apply_update", None))
            and callable(getattr(integrated, "observe", None))
        ):
            return native
        return None

    def _on_txn(self, event: Any) -> None:
        if self._applying_remote:
            return
        update = event.update
        for callback in self._update_listeners:
            callback(update)

    def state_vector(self) -> bytes:
        return bytes(self._doc.get_state())

    def diff(self, state_vector: bytes) -> bytes:
        """The update a peer with `state_vector` lacks (everything if it is empty)."""
        if not state_vector:
            return bytes(self._doc.get_update())
        try:
            return bytes(self._doc.get_update(state_vector))
        except ValueError as exc:
            raise InvalidUpdate(f"{self.name}: bad state vector: {exc}") from exc

    def full_state(self) -> bytes:
        return bytes(self._doc.get_update())

    def encoded_size(self) -> int:
        """Bytes of the full doc state: what a new peer downloads, what compaction bounds."""
        return len(self._doc.get_update())

    # ---- verification ---------------------------------------------------------------

    def _verify_blob(self, blob: bytes) -> Held[R]:
        if not SIGNATURE_BYTES < len(blob) <= self.max_blob_bytes:
            raise NotAuthorized(f"{self.name}: blob of {len(blob)} bytes")
        payload = blob[:-SIGNATURE_BYTES]
        try:
            checked = self._check(payload)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
            raise NotAuthorized(f"{self.name}: undecodable payload: {exc}") from exc
        if not verify_detached(checked.signer, self.domain + payload, blob[-SIGNATURE_BYTES:]):
            raise NotAuthorized(f"{self.name}: bad signature on {checked.key}")
        return Held(blob, checked)

    def _verified_for(self, key: str, blob: bytes) -> Held[R] | None:
        cached = self._verified.get(blob, _MISSING)
        held: Held[R] | None = cached
        if cached is _MISSING:
            try:
                held = self._verify_blob(blob)
            except CrdtError:
                held = None
            self._remember(blob, held)
        if held is None or held.checked.key != key:
            return None
        return held

    def _remember(self, blob: bytes, held: Held[R] | None) -> None:
        if len(self._verified) >= VERIFY_CACHE_ENTRIES:
            self._verified.pop(next(iter(self._verified)))
        self._verified[blob] = held

    # ---- change bookkeeping ---------------------------------------------------------

    def _note(self, key: str, held: Held[R] | None, now: int | None = None) -> None:
        if key not in self._pending_change:
            self._pending_change[key] = self._reported.get(key)
        if now is None:
            now = self._clock()
        if held is not None and held.checked.live and now < held.checked.expires_at_ms:
            self._reported[key] = held
        else:
            self._reported.pop(key, None)

    def _touch(self, keys: Iterable[str]) -> None:
        """The views of `keys` changed although their records did not (a document kind
        whose view joins another document's records): told to change listeners as
        changed, now, for those visible."""
        self._touched.update(keys)
        self._flush_changes()

    def _flush_changes(self) -> None:
        pending, self._pending_change = self._pending_change, {}
        touched = self._touched
        if touched:
            self._touched = set()
        if not self._change_listeners or not (pending or touched):
            return
        added: list[V] = []
        changed: list[V] = []
        removed: list[V] = []
        for key, before in pending.items():
            after = self._reported.get(key)
            if after is before:
                continue
            if after is None:
                assert before is not None
                removed.append(self._view_of(before.checked.record))
            elif before is None:
                added.append(self._view_of(after.checked.record))
            else:
                changed.append(self._view_of(after.checked.record))
        for key in touched:
            held = None if key in pending else self._reported.get(key)
            if held is not None:
                changed.append(self._view_of(held.checked.record))
        if added or changed or removed:
            change = Change(added, changed, removed)
            for callback in self._change_listeners:
                callback(change)

    # ---- writes ---------------------------------------------------------------------

    def _write_local(self, writes: dict[str, bytes], deletes: Iterable[str] = ()) -> None:
        deletes = list(deletes)
        if not writes and not deletes:
            return
        # Local writes are the only transactions whose update listeners hear about.
        subscription = self._doc.observe(self._on_txn) if self._update_listeners else None
        # Our own writes hold `best` already: nothing for `_fold` to do with them.
        self._writing_local = True
        try:
            with self._doc.transaction():
                for key, blob in writes.items():
                    self._map[key] = blob
                for key in deletes:
                    if key in self._map:
                        del self._map[key]
        finally:
            self._writing_local = False
            if subscription is not None:
                self._doc.unobserve(subscription)
        if self._repairs:  # what we just wrote supersedes a repair noted earlier
            for key in (*writes, *deletes):
                self._repairs.pop(key, None)

    def _put(self, blob: bytes, *more: bytes) -> Held[R]:
        """Write freshly signed blobs of ours, in one transaction (one update, one change
        notification); returns the first one's record. Raises, writing none, if one does
        not verify or is stale."""
        verified = [self._verify_blob(b) for b in (blob, *more)]
        for held in verified:
            key = held.checked.key
            best = self._best.get(key)
            if best is not None and not held.outranks(best):
                raise StaleRecord(f"{self.name}: {key} already holds rank {best.checked.rank}")
        for held in verified:
            self._remember(held.blob, held)
            self._best[held.checked.key] = held
            self._note(held.checked.key, held)
        self._write_local({held.checked.key: held.blob for held in verified})
        self._flush_changes()
        return verified[0]

    def apply_updates(self, updates: Sequence[bytes]) -> None:
        """Apply remote Yjs updates of the current epoch (one transaction; `_fold` takes
        what changed into `best` as it commits), then write the repairs it asked for."""
        error: ValueError | None = None
        native = self._native
        if native is not None and self._doc._txn is None:
            # `_on_txn` is subscribed only inside `_write_local`'s pycrdt transaction, which
            # sends a re-entrant call down the other branch: nothing to guard here.
            txn = native.create_transaction()
            try:
                for update in updates:
                    try:
                        native.apply_update(txn, update)
                    except ValueError as exc:
                        error = exc
                txn.commit()
            finally:
                txn.drop()
        else:
            self._applying_remote = True
            try:
                with self._doc.transaction():
                    for update in updates:
                        try:
                            self._doc.apply_update(update)
                        except ValueError as exc:
                            error = exc
            finally:
                self._applying_remote = False
        self._after_fold()
        if error is not None:
            raise InvalidUpdate(f"{self.name}: {error}") from error

    def _fold(self, event: Any) -> None:
        """Fold changed keys into `best` and note what the doc got wrong for
        `_after_fold`. `event` is what the Yrs key observer passes (a MapEvent, whose
        `keys` maps each changed key to {"action", "newValue", ...}) or a `_Changes`."""
        if self._writing_local:
            return
        now_ns = self._now_ns()
        best_by_key = self._best
        verified = self._verified
        reported = self._reported
        repairs = self._repairs
        # Before-images are only for change listeners (`_flush_changes`).
        pending = self._pending_change if self._change_listeners else None
        # `_admit` inlined: a record expired for longer than the grace (expiry at or before
        # `too_old_ns`) is not admitted; a document kind's own `_admit` is asked as well.
        too_old_ns = now_ns - self._expiry_grace_ns
        admit = None if self._plain_admit else self._admit
        # The hot path of every remote update, run by the key observer itself (one Python
        # call less than collecting keys for later) and kept flat on purpose (see
        # bench_crdt.py): `_verified_for`, `Held.outranks`, `_admit` and `_note` inlined.
        changes = event.keys
        for key in changes:  # (no items view and iterator to allocate)
            raw = changes[key].get("newValue")  # absent for a delete
            best = best_by_key.get(key)
            in_doc: Held[R] | None
            # Yrs hands stored bytes back as a bytearray: the common case first.
            if type(raw) is bytearray:
                blob = bytes(raw)
                in_doc = verified.get(blob)
                if in_doc is None:  # not verified yet, or refused
                    in_doc = self._verified_for(key, blob)
                elif (best is None or in_doc.key is not best.key) and in_doc.key != key:
                    in_doc = None
            else:
                blob_or_none = as_blob(raw)
                in_doc = None if blob_or_none is None else self._verified_for(key, blob_or_none)
            if (
                in_doc is not None
                and (
                    best is None
                    or in_doc.order > best.order
                    or (in_doc.order == best.order and in_doc.blob > best.blob)
                )
                and in_doc.expires_at_ns > too_old_ns
                and (admit is None or admit(in_doc, now_ns // 1_000_000))
            ):
                best_by_key[key] = in_doc
                if pending is not None and key not in pending:
                    pending[key] = reported.get(key)
                if in_doc.live and now_ns < in_doc.expires_at_ns:
                    reported[key] = in_doc
                else:
                    reported.pop(key, None)
                if repairs:  # noted by an earlier fold, not written yet
                    repairs.pop(key, None)
            elif (
                best is not None
                and (in_doc is None or in_doc.blob != best.blob)
                and now_ns < best.expires_at_ns
            ):
                repairs[key] = best.blob

    def _after_fold(self) -> None:
        """Write back the repairs `_fold` noted, then tell change listeners what changed."""
        if self._repairs:
            repairs, self._repairs = self._repairs, {}
            self._write_local(repairs)
        if self._pending_change or self._touched:
            self._flush_changes()

    def _reconsider(self, keys: Iterable[str]) -> None:
        """Judge again what the doc holds at `keys`, refusals forgotten: a record refused
        because its signer's right to write was not known then (a policy issuer whose
        certificate is known only once it is admitted) enters `best` now if it may. A
        record that arrives again in the same bytes changes nothing in the doc, so no
        fold would ever see it again otherwise."""
        verified = self._verified
        changes: dict[str, dict[str, Any]] = {}
        for key in keys:
            raw = self._map.get(key)
            blob = as_blob(raw)
            if blob is None:
                continue
            if blob in verified and verified[blob] is None:
                del verified[blob]
            changes[key] = {"newValue": raw}
        if changes:
            self._fold(_Changes(changes))
            self._after_fold()

    def offer(self, items: Iterable[tuple[str, Any]]) -> int:
        """Offer (key, blob) pairs from outside the current doc (an older epoch, a
        snapshot): each enters only through verification and only if it outranks `best`;
        accepted ones are written into the current doc. Returns how many were taken."""
        now = self._clock()
        writes: dict[str, bytes] = {}
        for key, raw in items:
            blob = as_blob(raw)
            held = None if blob is None else self._verified_for(key, blob)
            if held is None:
                continue
            best = self._best.get(key)
            if (best is None or held.outranks(best)) and self._admit(held, now):
                self._best[key] = held
                self._note(key, held)
                writes[key] = held.blob
        # A document kind's `_admit` may have evicted a key taken earlier in this loop.
        writes = {key: blob for key, blob in writes.items() if key in self._best}
        self._write_local(writes)
        self._flush_changes()
        return len(writes)

    def offer_update(self, update: bytes) -> int:
        """Read a Yjs update of another epoch in a scratch doc and `offer` its records."""
        scratch: pycrdt.Doc[Any] = pycrdt.Doc()
        ymap: pycrdt.Map[Any] = scratch.get(MAP_NAME, type=pycrdt.Map)
        try:
            scratch.apply_update(update)
        except ValueError as exc:
            raise InvalidUpdate(f"{self.name}: {exc}") from exc
        return self.offer(list(ymap.items()))

    # ---- epochs ---------------------------------------------------------------------

    def switch_epoch(self, epoch: Epoch, full_state: bytes) -> bool:
        """Adopt a newer epoch from its full state, then repair our `best` into it."""
        if epoch <= self.epoch:
            return False
        self._install_new_doc(epoch)
        error: ValueError | None = None
        self._applying_remote = True
        try:
            self._doc.apply_update(full_state)
        except ValueError as exc:
            error = exc
        finally:
            self._applying_remote = False
        self._repair_all()
        if error is not None:
            raise InvalidUpdate(f"{self.name}: epoch {epoch}: {error}") from error
        return True

    def switch_epoch_to_records(self, epoch: Epoch, items: Iterable[tuple[str, Any]]) -> bool:
        """Adopt a newer epoch from (some of) its records instead of its Yjs state (the
        state did not fit in one message): a fresh doc at `epoch`, the records offered
        through verification, then our `best` repaired into it. The epoch's other records
        arrive as offers at the same epoch; the doc holds `best` either way."""
        if epoch <= self.epoch:
            return False
        self._install_new_doc(epoch)
        self.offer(items)
        self._repair_all()
        return True

    def _repair_all(self) -> None:
        self._fold(_Changes({key: {"newValue": self._map.get(key)} for key in self._best}))
        self._after_fold()

    def compact(self) -> Epoch:
        """Rebuild the doc from the retained verified records at the next epoch."""
        now = self._clock()
        for key in [k for k, h in self._best.items() if now >= h.checked.expires_at_ms]:
            self._note(key, None)
            del self._best[key]
            self._forgotten(key)
        self._install_new_doc(Epoch(self.epoch.number + 1, self._replica_id))
        self._write_local({key: held.blob for key, held in self._best.items()})
        self._flush_changes()
        return self.epoch

    def load_state(self, epoch: Epoch, state: bytes) -> None:
        """Merge a full doc state of `epoch` (a snapshot, a peer): switch if newer, apply
        if the same, offer its records through verification if older."""
        if epoch > self.epoch:
            self.switch_epoch(epoch, state)
        elif epoch == self.epoch:
            self.apply_updates([state])
        else:
            self.offer_update(state)

    def prune(self) -> int:
        """Report expiries as removals; forget and delete records past expiry + grace.
        Returns how many records were dropped."""
        now = self._clock()
        dropped: list[str] = []
        for key, held in self._best.items():
            expires = held.checked.expires_at_ms
            if now >= expires and key in self._reported:
                self._note(key, None)
            if now >= expires + self._expiry_grace_ms:
                dropped.append(key)
        for key in dropped:
            del self._best[key]
            self._forgotten(key)
        self._write_local({}, dropped)
        self._flush_changes()
        return len(dropped)
