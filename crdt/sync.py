"""Transport-independent sync of `VerifiedDoc`s: the Yjs protocol (state vector -> missing
diff) plus epochs, as bytes the mesh carries in its signed envelopes.

Messages (msgpack, tagged arrays, append-only tags), each naming its doc and epoch:
  SyncStep1(doc, epoch, state_vector)   "here is what I have"; empty vector = "send all"
  SyncStep2(doc, epoch, update, full)   the diff answering a SyncStep1; `full` when it
                                        is the whole doc (the answer to an empty vector)
  SyncUpdate(doc, epoch, updates)       local updates pushed as they happen (batched)
  SyncRecords(doc, epoch, records)      (key, signed blob) pairs: one piece of an answer
                                        too large for one message (see below)
  SyncPart(doc, epoch, transfer, index, count, data)
                                        one slice of an encoded SyncStep2 too large for
                                        one message (see below)

Handling, with L our epoch and M the message's (see `crdt.replica` for why):
  SyncStep1: M == L -> SyncStep2(diff); M < L -> SyncStep2(L, full state);
             M > L -> SyncStep1(M, empty) to fetch that epoch whole.
  SyncStep2/SyncUpdate: M == L -> apply; M > L and full -> switch epoch;
             M > L otherwise -> SyncStep1(M, empty) once per epoch;
             M < L -> offer its records through verification, reply SyncStep1(L, ours)
             so the sender learns of L and fetches it.
  SyncRecords: M == L -> offer; M > L -> switch to M from these records;
             M < L -> offer, no reply (a piece of a k-piece answer would otherwise
             trigger k full fetches; the sender learns of L from our next push or sync).
Anti-entropy is the caller calling `make_sync_request()` every few seconds to each peer;
a lost message, a dropped push queue or a missed epoch heals on the next round.

Message size cap (`max_message_bytes`, what one envelope carries)
    Every message the endpoint produces fits the cap. An answer (diff or full state)
    whose SyncStep2 would exceed the cap travels as SyncPart slices of that encoded
    message, up to `MAX_ASSEMBLED_BYTES` in all. The receiver reassembles them per sending
    peer (at most `MAX_OPEN_TRANSFERS_PER_PEER` transfers per peer, `MAX_OPEN_TRANSFERS`
    and `MAX_ASSEMBLY_BYTES` in all, the oldest dropped first, the sender's own first;
    duplicates and late slices of ended transfers ignored) and handles the whole
    SyncStep2 as if it had come in one message: the peers then hold the same Yjs structs,
    so the next anti-entropy round finds nothing to send. A transfer missing a slice
    never completes; the next round sends a new one (transfer ids are random).
    Larger still, the answer is sent as
    SyncRecords pieces: every verified record we retain (`retained_records()`: live
    records and live tombstones), packed by encoded size. The receiver takes each
    record only through `offer` (signature, key and rank checked, long-expired refused),
    so pieces cannot forge anything; tombstones travel with the records and outrank what
    they retire, so nothing retired comes back. Pieces commute and are idempotent (offer
    is a join into `best`), so any order, duplicates or a lost piece (healed by the next
    anti-entropy round) converge to the same view. An epoch switch in pieces: the first
    piece of a newer epoch switches the receiver to a fresh doc at that epoch holding its
    `best` plus the piece (`switch_epoch_to_records`); later pieces are same-epoch offers.
    Cost: accepted records are rewritten by the receiver under its own Yjs client, so the
    docs agree on content but not on Yjs structs; while a peer's diff stays above the cap
    each anti-entropy round with it sends the records again (views are unaffected).
    Pushes (SyncUpdate) are batched by bytes; a single update larger than the cap cannot
    be sent and is dropped (`stats["update_too_large"]`): anti-entropy carries its
    content. A single record larger than the cap is skipped (`stats["record_too_large"]`).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import msgspec

from vsmcp.crdt.errors import MalformedMessage, MessageTooLarge, UnknownDocument
from vsmcp.crdt.replica import Epoch, VerifiedDoc

MAX_SYNC_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_UPDATES_PER_MESSAGE = 1024
MAX_RECORDS_PER_MESSAGE = 16_384
MAX_PENDING_UPDATES = 10_000
MAX_DOC_NAME_CHARS = 64
# The largest answer sent in SyncPart slices: half the transport's per-peer queue (16 MiB),
# so a whole transfer fits there even behind other traffic.
MAX_ASSEMBLED_BYTES = 8 * 1024 * 1024
MAX_PARTS_PER_TRANSFER = 4096
MAX_OPEN_TRANSFERS = 16
MAX_OPEN_TRANSFERS_PER_PEER = 2
MAX_ASSEMBLY_BYTES = 4 * MAX_ASSEMBLED_BYTES  # buffered slices, all transfers together
RECENT_TRANSFERS = 256  # ended transfers remembered, so that their late slices are ignored
_MAX_TRANSFER_ID = (1 << 63) - 1

_DocName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_DOC_NAME_CHARS)]


# gc=False: messages hold only strings, bytes, ints and lists of them, so they cannot be
# part of a reference cycle; untracked structs are cheaper to make and free (every
# incoming message is one).
class SyncStep1(msgspec.Struct, frozen=True, array_like=True, tag=1, gc=False):
    doc: _DocName
    epoch: Epoch
    state_vector: bytes


class SyncStep2(msgspec.Struct, frozen=True, array_like=True, tag=2, gc=False):
    doc: _DocName
    epoch: Epoch
    update: bytes
    full: bool


class SyncUpdate(msgspec.Struct, frozen=True, array_like=True, tag=3, gc=False):
    doc: _DocName
    epoch: Epoch
    updates: Annotated[list[bytes], msgspec.Meta(max_length=MAX_UPDATES_PER_MESSAGE)]


class SyncRecords(msgspec.Struct, frozen=True, array_like=True, tag=4, gc=False):
    doc: _DocName
    epoch: Epoch
    records: Annotated[list[tuple[str, bytes]], msgspec.Meta(max_length=MAX_RECORDS_PER_MESSAGE)]


class SyncPart(msgspec.Struct, frozen=True, array_like=True, tag=5, gc=False):
    doc: _DocName
    epoch: Epoch
    transfer: Annotated[int, msgspec.Meta(ge=0, le=_MAX_TRANSFER_ID)]
    index: Annotated[int, msgspec.Meta(ge=0, lt=MAX_PARTS_PER_TRANSFER)]
    count: Annotated[int, msgspec.Meta(ge=1, le=MAX_PARTS_PER_TRANSFER)]
    data: bytes


SyncMessage = SyncStep1 | SyncStep2 | SyncUpdate | SyncRecords | SyncPart
_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[SyncMessage] = msgspec.msgpack.Decoder(SyncMessage)


# Slack for a msgpack array header growing from 1 byte (fixarray) to 5 (array32).
_ARRAY_HEADER_SLACK_BYTES = 4
# Slack for a msgpack bin header growing from 2 bytes (bin8) to 5 (bin32).
_BIN_HEADER_SLACK_BYTES = 3


_TransferKey = tuple[bytes, str, int]  # (sending peer, doc, transfer id)


@dataclass(slots=True)
class _Assembly:
    """A SyncPart transfer being reassembled."""

    epoch: Epoch
    count: int
    parts: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


_T = TypeVar("_T")


def encode_message(message: SyncMessage) -> bytes:
    return _encoder.encode(message)


def _pack(
    items: Sequence[_T], sizes: Sequence[int], budget: int, max_count: int
) -> tuple[list[list[_T]], int]:
    """Greedy chunks of `items` whose summed sizes stay within `budget` (and `max_count`
    items); returns the chunks and how many items were skipped for exceeding it alone."""
    chunks: list[list[_T]] = []
    chunk: list[_T] = []
    used = 0
    too_large = 0
    for item, size in zip(items, sizes, strict=True):
        if size > budget:
            too_large += 1
            continue
        if chunk and (used + size > budget or len(chunk) >= max_count):
            chunks.append(chunk)
            chunk, used = [], 0
        chunk.append(item)
        used += size
    if chunk:
        chunks.append(chunk)
    return chunks, too_large


def decode_message(data: bytes, *, max_bytes: int = MAX_SYNC_MESSAGE_BYTES) -> SyncMessage:
    """Decode a sync message; the size cap is checked before any decoding."""
    if len(data) > max_bytes:
        raise MessageTooLarge(f"sync message of {len(data)} bytes exceeds {max_bytes}")
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise MalformedMessage(f"sync message: {exc}") from exc


class SyncEndpoint:
    """One sync endpoint for a set of documents (one per name)."""

    def __init__(
        self,
        docs: Iterable[VerifiedDoc[Any, Any]],
        *,
        max_message_bytes: int = MAX_SYNC_MESSAGE_BYTES,
        max_pending_updates: int = MAX_PENDING_UPDATES,
    ) -> None:
        self._docs: dict[str, VerifiedDoc[Any, Any]] = {}
        self._max_message_bytes = max_message_bytes
        self._max_pending_updates = max_pending_updates
        self._pending: dict[str, tuple[Epoch, list[bytes]]] = {}
        self._pending_count = 0
        self._push: list[Callable[[bytes], None]] = []
        self._requested: dict[str, Epoch] = {}
        self._assemblies: OrderedDict[_TransferKey, _Assembly] = OrderedDict()
        self._ended: OrderedDict[_TransferKey, None] = OrderedDict()
        self._assembly_bytes = 0
        self.stats: dict[str, int] = {
            "handled": 0,
            "epoch_switches": 0,
            "stale_epoch_messages": 0,
            "dropped_pending_updates": 0,
            "split_answers": 0,  # sent as SyncPart slices
            "record_answers": 0,  # too large even for slices: sent as SyncRecords
            "transfers_completed": 0,
            "transfers_dropped": 0,  # incomplete, pushed out by newer ones
            "update_too_large": 0,
            "record_too_large": 0,
        }
        for doc in docs:
            if doc.name in self._docs:
                raise ValueError(f"two documents named {doc.name!r}")
            self._docs[doc.name] = doc
            doc.on_update(self._local_update_hook(doc))

    def on_update(self, callback: Callable[[bytes], None]) -> None:
        """Push every local update at once as a SyncUpdate message (instead of queueing
        it for `outgoing()`)."""
        self._push.append(callback)

    def _local_update_hook(self, doc: VerifiedDoc[Any, Any]) -> Callable[[bytes], None]:
        def hook(update: bytes) -> None:
            if self._push:
                message = encode_message(SyncUpdate(doc.name, doc.epoch, [update]))
                if len(message) > self._max_message_bytes:
                    # Cannot be cut; anti-entropy carries its content (as records).
                    self.stats["update_too_large"] += 1
                    return
                for callback in self._push:
                    callback(message)
                return
            epoch, updates = self._pending.get(doc.name, (doc.epoch, []))
            if epoch != doc.epoch:
                self._pending_count -= len(updates)
                epoch, updates = doc.epoch, []
            if self._pending_count >= self._max_pending_updates:
                # Bounded queue: drop, anti-entropy resends the content.
                self.stats["dropped_pending_updates"] += self._pending_count
                self._pending.clear()
                self._pending_count = 0
                epoch, updates = doc.epoch, []
            updates.append(update)
            self._pending[doc.name] = (epoch, updates)
            self._pending_count += 1

        return hook

    def outgoing(self) -> list[bytes]:
        """Drain queued local updates: SyncUpdate messages to send to every peer."""
        messages: list[bytes] = []
        for name, (epoch, updates) in self._pending.items():
            if epoch != self._docs[name].epoch:
                continue
            messages.extend(self._update_messages(name, epoch, updates))
        self._pending.clear()
        self._pending_count = 0
        return messages

    def _update_messages(self, name: str, epoch: Epoch, updates: list[bytes]) -> list[bytes]:
        base = len(encode_message(SyncUpdate(name, epoch, []))) + _ARRAY_HEADER_SLACK_BYTES
        sizes = [len(_encoder.encode(update)) for update in updates]
        chunks, too_large = _pack(
            updates, sizes, self._max_message_bytes - base, MAX_UPDATES_PER_MESSAGE
        )
        self.stats["update_too_large"] += too_large
        return [encode_message(SyncUpdate(name, epoch, chunk)) for chunk in chunks]

    def _record_messages(self, doc: VerifiedDoc[Any, Any]) -> list[bytes]:
        """Our retained verified records as SyncRecords pieces, each within the cap."""
        records = doc.retained_records()
        base = len(encode_message(SyncRecords(doc.name, doc.epoch, [])))
        base += _ARRAY_HEADER_SLACK_BYTES
        sizes = [len(_encoder.encode(record)) for record in records]
        chunks, too_large = _pack(
            records, sizes, self._max_message_bytes - base, MAX_RECORDS_PER_MESSAGE
        )
        self.stats["record_too_large"] += too_large
        return [encode_message(SyncRecords(doc.name, doc.epoch, chunk)) for chunk in chunks]

    def make_sync_request(self) -> list[bytes]:
        """Anti-entropy: one SyncStep1 per document, to send to a peer."""
        return [
            encode_message(SyncStep1(doc.name, doc.epoch, doc.state_vector()))
            for doc in self._docs.values()
        ]

    def handle(self, message: bytes, peer: bytes = b"") -> list[bytes]:
        """Process one message from `peer`; returns the replies to send back to it.
        Raises a CrdtError subclass for oversized, malformed or unknown-doc messages and
        for updates pycrdt refuses. `peer` (any stable id) keeps reassembly per sender."""
        decoded = decode_message(message, max_bytes=self._max_message_bytes)
        doc = self._docs.get(decoded.doc)
        if doc is None:
            raise UnknownDocument(f"no document named {decoded.doc!r}")
        self.stats["handled"] += 1
        # Pushed updates first: the steady-state message.
        if isinstance(decoded, SyncUpdate):
            if decoded.epoch == doc.epoch:  # `_on_content`'s first case, inlined
                doc.apply_updates(decoded.updates)
                return []
            return self._on_content(doc, decoded.epoch, decoded.updates, full=False)
        if isinstance(decoded, SyncStep1):
            return self._on_step1(doc, decoded)
        if isinstance(decoded, SyncStep2):
            return self._on_content(doc, decoded.epoch, [decoded.update], full=decoded.full)
        if isinstance(decoded, SyncPart):
            return self._on_part(doc, decoded, peer)
        return self._on_records(doc, decoded)

    def _on_step1(self, doc: VerifiedDoc[Any, Any], message: SyncStep1) -> list[bytes]:
        if message.epoch == doc.epoch:
            full = not message.state_vector
            return self._answer(doc, doc.diff(message.state_vector), full=full)
        if message.epoch < doc.epoch:
            self.stats["stale_epoch_messages"] += 1
            return self._answer(doc, doc.full_state(), full=True)
        return self._request_epoch(doc, message.epoch, force=True)

    def _answer(self, doc: VerifiedDoc[Any, Any], update: bytes, *, full: bool) -> list[bytes]:
        message = encode_message(SyncStep2(doc.name, doc.epoch, update, full))
        if len(message) <= self._max_message_bytes:
            return [message]
        parts = self._part_messages(doc, message)
        if parts:
            self.stats["split_answers"] += 1
            return parts
        self.stats["record_answers"] += 1
        return self._record_messages(doc)

    def _part_messages(self, doc: VerifiedDoc[Any, Any], message: bytes) -> list[bytes]:
        """`message` in SyncPart slices that each fit the cap ([] if it cannot be)."""
        transfer = secrets.randbits(63)
        largest = MAX_PARTS_PER_TRANSFER
        empty = SyncPart(doc.name, doc.epoch, _MAX_TRANSFER_ID, largest - 1, largest, b"")
        overhead = len(encode_message(empty)) + _BIN_HEADER_SLACK_BYTES
        chunk = self._max_message_bytes - overhead
        if len(message) > MAX_ASSEMBLED_BYTES or chunk <= 0:
            return []
        count = -(-len(message) // chunk)
        if count > MAX_PARTS_PER_TRANSFER:
            return []
        view = memoryview(message)
        slices = [bytes(view[i * chunk : (i + 1) * chunk]) for i in range(count)]
        return [
            encode_message(SyncPart(doc.name, doc.epoch, transfer, i, count, data))
            for i, data in enumerate(slices)
        ]

    def _on_part(self, doc: VerifiedDoc[Any, Any], part: SyncPart, peer: bytes) -> list[bytes]:
        if part.index >= part.count:
            raise MalformedMessage(f"sync part {part.index} of {part.count}")
        key = (peer, doc.name, part.transfer)
        if key in self._ended:
            return []  # a late slice of a transfer already completed or dropped
        assembly = self._assemblies.get(key)
        if assembly is None:
            assembly = self._assemblies[key] = _Assembly(part.epoch, part.count)
        elif (assembly.epoch, assembly.count) != (part.epoch, part.count):
            raise MalformedMessage("sync part disagrees with its transfer's epoch or count")
        if part.index in assembly.parts:
            return []  # a duplicate
        if assembly.size + len(part.data) > MAX_ASSEMBLED_BYTES:
            self._drop_assembly(key)
            raise MessageTooLarge(f"sync transfer exceeds {MAX_ASSEMBLED_BYTES} bytes")
        assembly.parts[part.index] = part.data
        assembly.size += len(part.data)
        self._assembly_bytes += len(part.data)
        self._make_room(keep=key)
        if len(assembly.parts) < assembly.count:
            return []
        self._drop_assembly(key)
        self.stats["transfers_completed"] += 1
        whole = decode_message(
            b"".join(assembly.parts[i] for i in range(assembly.count)),
            max_bytes=MAX_ASSEMBLED_BYTES,
        )
        if not isinstance(whole, SyncStep2) or (whole.doc, whole.epoch) != (doc.name, part.epoch):
            raise MalformedMessage("sync parts do not make the SyncStep2 they announce")
        return self._on_content(doc, whole.epoch, [whole.update], full=whole.full)

    def _make_room(self, keep: _TransferKey) -> None:
        """Bound reassembly: beyond the limits drop the oldest other transfer, the same
        sender's first (so one peer cannot push out everyone else's)."""
        own = [k for k in self._assemblies if k[0] == keep[0] and k != keep]
        while len(own) >= MAX_OPEN_TRANSFERS_PER_PEER:
            self._drop_assembly(own.pop(0))
            self.stats["transfers_dropped"] += 1
        while (
            len(self._assemblies) > MAX_OPEN_TRANSFERS or self._assembly_bytes > MAX_ASSEMBLY_BYTES
        ):
            oldest = next(k for k in self._assemblies if k != keep)
            self._drop_assembly(oldest)
            self.stats["transfers_dropped"] += 1

    def _drop_assembly(self, key: _TransferKey) -> None:
        assembly = self._assemblies.pop(key, None)
        if assembly is not None:
            self._assembly_bytes -= assembly.size
        self._ended[key] = None
        if len(self._ended) > RECENT_TRANSFERS:
            self._ended.popitem(last=False)

    def _on_records(self, doc: VerifiedDoc[Any, Any], message: SyncRecords) -> list[bytes]:
        if message.epoch == doc.epoch:
            doc.offer(message.records)
        elif message.epoch > doc.epoch:
            doc.switch_epoch_to_records(message.epoch, message.records)
            self.stats["epoch_switches"] += 1
        else:
            self.stats["stale_epoch_messages"] += 1
            doc.offer(message.records)
        return []

    def _on_content(
        self, doc: VerifiedDoc[Any, Any], epoch: Epoch, updates: list[bytes], *, full: bool
    ) -> list[bytes]:
        if epoch == doc.epoch:
            doc.apply_updates(updates)
            return []
        if epoch > doc.epoch:
            if full and len(updates) == 1:
                doc.switch_epoch(epoch, updates[0])
                self.stats["epoch_switches"] += 1
                return []
            return self._request_epoch(doc, epoch, force=False)
        self.stats["stale_epoch_messages"] += 1
        for update in updates:
            doc.offer_update(update)
        return [encode_message(SyncStep1(doc.name, doc.epoch, doc.state_vector()))]

    def _request_epoch(
        self, doc: VerifiedDoc[Any, Any], epoch: Epoch, *, force: bool
    ) -> list[bytes]:
        if not force and self._requested.get(doc.name) == epoch:
            return []
        self._requested[doc.name] = epoch
        return [encode_message(SyncStep1(doc.name, epoch, b""))]
