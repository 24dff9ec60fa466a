"""Transport-independent sync of `VerifiedDoc`s: the Yjs protocol (state vector -> missing
diff) plus epochs, as bytes the mesh carries in its signed envelopes.

Messages (msgpack, tagged arrays, append-only tags), each naming its doc and epoch:
  SyncStep1(doc, epoch, state_vector)   "here is what I have"; empty vector = "send all"
  SyncStep2(doc, epoch, update, full)   the diff answering a SyncStep1; `full` when it
                                        is the whole doc (the answer to an empty vector)
  SyncUpdate(doc, epoch, updates)       local updates pushed as they happen (batched)

Handling, with L our epoch and M the message's (see `crdt.replica` for why):
  SyncStep1: M == L -> SyncStep2(diff); M < L -> SyncStep2(L, full state);
             M > L -> SyncStep1(M, empty) to fetch that epoch whole.
  SyncStep2/SyncUpdate: M == L -> apply; M > L and full -> switch epoch;
             M > L otherwise -> SyncStep1(M, empty) once per epoch;
             M < L -> offer its records through verification, reply SyncStep1(L, ours)
             so the sender learns of L and fetches it.
Anti-entropy is the caller calling `make_sync_request()` every few seconds to each peer;
a lost message, a dropped push queue or a missed epoch heals on the next round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated, Any

import msgspec

from crdt.errors import MalformedMessage, MessageTooLarge, UnknownDocument
from crdt.replica import Epoch, VerifiedDoc

MAX_SYNC_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_UPDATES_PER_MESSAGE = 1024
MAX_PENDING_UPDATES = 10_000
MAX_DOC_NAME_CHARS = 64

_DocName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_DOC_NAME_CHARS)]


class SyncStep1(msgspec.Struct, frozen=True, array_like=True, tag=1):
    doc: _DocName
    epoch: Epoch
    state_vector: bytes


class SyncStep2(msgspec.Struct, frozen=True, array_like=True, tag=2):
    doc: _DocName
    epoch: Epoch
    update: bytes
    full: bool


class SyncUpdate(msgspec.Struct, frozen=True, array_like=True, tag=3):
    doc: _DocName
    epoch: Epoch
    updates: Annotated[list[bytes], msgspec.Meta(max_length=MAX_UPDATES_PER_MESSAGE)]


SyncMessage = SyncStep1 | SyncStep2 | SyncUpdate
_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[SyncMessage] = msgspec.msgpack.Decoder(SyncMessage)


def encode_message(message: SyncMessage) -> bytes:
    return _encoder.encode(message)


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
        self.stats: dict[str, int] = {
            "handled": 0,
            "epoch_switches": 0,
            "stale_epoch_messages": 0,
            "dropped_pending_updates": 0,
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
            for start in range(0, len(updates), MAX_UPDATES_PER_MESSAGE):
                chunk = updates[start : start + MAX_UPDATES_PER_MESSAGE]
                messages.append(encode_message(SyncUpdate(name, epoch, chunk)))
        self._pending.clear()
        self._pending_count = 0
        return messages

    def make_sync_request(self) -> list[bytes]:
        """Anti-entropy: one SyncStep1 per document, to send to a peer."""
        return [
            encode_message(SyncStep1(doc.name, doc.epoch, doc.state_vector()))
            for doc in self._docs.values()
        ]

    def handle(self, message: bytes) -> list[bytes]:
        """Process one message from a peer; returns the replies to send back to it.
        Raises a CrdtError subclass for oversized, malformed or unknown-doc messages and
        for updates pycrdt refuses."""
        decoded = decode_message(message, max_bytes=self._max_message_bytes)
        doc = self._docs.get(decoded.doc)
        if doc is None:
            raise UnknownDocument(f"no document named {decoded.doc!r}")
        self.stats["handled"] += 1
        if isinstance(decoded, SyncStep1):
            return self._on_step1(doc, decoded)
        if isinstance(decoded, SyncStep2):
            return self._on_content(doc, decoded.epoch, [decoded.update], full=decoded.full)
        return self._on_content(doc, decoded.epoch, decoded.updates, full=False)

    def _on_step1(self, doc: VerifiedDoc[Any, Any], message: SyncStep1) -> list[bytes]:
        if message.epoch == doc.epoch:
            full = not message.state_vector
            update = doc.diff(message.state_vector)
            return [encode_message(SyncStep2(doc.name, doc.epoch, update, full))]
        if message.epoch < doc.epoch:
            self.stats["stale_epoch_messages"] += 1
            return [encode_message(SyncStep2(doc.name, doc.epoch, doc.full_state(), True))]
        return self._request_epoch(doc, message.epoch, force=True)

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
