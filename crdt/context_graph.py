"""Context graph: signed events linked to the events that led to them.

Each event is content-addressed (id = first 16 bytes of SHA-256 of its payload, hex) and
signed by the node that recorded it, so no relay can forge or alter one. Bounded by age
(an event expires `max_age_ms` after its ts_ms) and by count: when more than `max_events`
are held, the oldest by (ts_ms, id) are dropped and a floor remembers the newest dropped,
so a stale replica re-sending them does not bring them back. Replicas holding the same
events keep the same newest ones, whatever order they saw them in.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from vsmcp.crdt.errors import InvalidValue
from vsmcp.crdt.replica import Checked, Held, VerifiedDoc, WallClockMs, wall_clock_ms
from vsmcp.crdt.signing import PUBLIC_KEY_BYTES, Signer
from vsmcp.crdt.values import MAX_SAFE_INT, check_int, dump_json, load_json_object

DEFAULT_MAX_EVENTS = 10_000
DEFAULT_MAX_EVENT_AGE_MS = 24 * 3600 * 1000
MAX_PARENTS = 32
EVENT_ID_HEX_CHARS = 32

_EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=EVENT_ID_HEX_CHARS)]


class EventRecord(msgspec.Struct, frozen=True, array_like=True, tag=1):
    node: Annotated[bytes, msgspec.Meta(min_length=PUBLIC_KEY_BYTES, max_length=PUBLIC_KEY_BYTES)]
    kind: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    ts_ms: Annotated[int, msgspec.Meta(ge=0, le=MAX_SAFE_INT)]
    data: str  # canonical JSON text of an object
    parents: Annotated[list[_EventId], msgspec.Meta(max_length=MAX_PARENTS)]


_decoder: msgspec.msgpack.Decoder[EventRecord] = msgspec.msgpack.Decoder(EventRecord)
_encoder = msgspec.msgpack.Encoder()


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    kind: str
    node: bytes
    ts_ms: int
    data: dict[str, Any]
    parents: list[str]


def event_id(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()[:EVENT_ID_HEX_CHARS]


class ContextGraph(VerifiedDoc[Event, Event]):
    """Verified, bounded, causality-linked events."""

    domain = b"vsmcp/crdt/v1/context\n"

    def __init__(
        self,
        *,
        replica_id: bytes,
        clock: WallClockMs = wall_clock_ms,
        max_events: int = DEFAULT_MAX_EVENTS,
        max_age_ms: int = DEFAULT_MAX_EVENT_AGE_MS,
        name: str = "context",
        **kwargs: Any,
    ) -> None:
        self._max_events = max_events
        self._max_age_ms = max_age_ms
        self._floor: tuple[int, str] | None = None  # newest event dropped for count
        super().__init__(name, replica_id=replica_id, clock=clock, **kwargs)

    def _check(self, payload: bytes) -> Checked[Event]:
        record = _decoder.decode(payload)
        if _encoder.encode(record) != payload:
            raise InvalidValue("event payload is not canonical")
        key = event_id(payload)
        event = Event(
            id=key,
            kind=record.kind,
            node=record.node,
            ts_ms=record.ts_ms,
            data=load_json_object(record.data, what="data"),
            parents=list(record.parents),
        )
        return Checked(key, record.node, event, (0, 0), record.ts_ms + self._max_age_ms, True)

    def _view_of(self, record: Event) -> Event:
        return record

    def _admit(self, held: Held[Event], now_ms: int) -> bool:
        event = held.checked.record
        if self._floor is not None and (event.ts_ms, event.id) <= self._floor:
            return False
        return super()._admit(held, now_ms)

    def record(
        self,
        signer: Signer,
        kind: str,
        data: Mapping[str, Any] | None = None,
        *,
        parents: Iterable[str] = (),
        ts_ms: int | None = None,
    ) -> Event:
        """Record an event signed by `signer` (the node it happened on)."""
        ts = self._clock() if ts_ms is None else check_int(ts_ms, what="ts_ms")
        record = EventRecord(
            node=signer.public_key,
            kind=kind,
            ts_ms=ts,
            data=dump_json(dict(data or {}), what="data"),
            parents=list(parents),
        )
        payload = _encoder.encode(record)
        held = self._put(payload + signer.sign_detached(self.domain + payload))
        if len(self._best) > self._max_events:
            self.prune()
        return held.checked.record

    def apply_updates(self, updates: Sequence[bytes]) -> None:
        super().apply_updates(updates)
        if len(self._best) > self._max_events:
            self.prune()

    def prune(self) -> int:
        """Drop expired events (see VerifiedDoc.prune) and all but the newest
        `max_events` by (ts_ms, id)."""
        dropped = super().prune()
        excess = len(self._best) - self._max_events
        if excess <= 0:
            return dropped
        oldest = heapq.nsmallest(
            excess, self._best.values(), key=lambda h: (h.checked.record.ts_ms, h.checked.key)
        )
        for held in oldest:
            self._note(held.checked.key, None)
            del self._best[held.checked.key]
        last = oldest[-1].checked.record
        if self._floor is None or (last.ts_ms, last.id) > self._floor:
            self._floor = (last.ts_ms, last.id)
        self._write_local({}, [h.checked.key for h in oldest])
        self._flush_changes()
        return dropped + excess

    def get(self, event_id: str) -> Event | None:
        held = self.held(event_id)
        if held is None or self._clock() >= held.checked.expires_at_ms:
            return None
        return held.checked.record

    def events(self) -> list[Event]:
        """Held live events, oldest first by (ts_ms, id)."""
        return sorted(self._visible_records(), key=lambda e: (e.ts_ms, e.id))

    def ancestors(self, event_id: str, max_depth: int) -> list[Event]:
        """What led to `event_id`: its parents, their parents, ... up to `max_depth`
        levels, breadth first (each level oldest first), each event once. Pruned or
        unknown events end their branch."""
        start = self.get(event_id)
        if start is None or max_depth <= 0:
            return []
        seen = {event_id}
        frontier = [start]
        found: list[Event] = []
        for _ in range(max_depth):
            level: list[Event] = []
            for event in frontier:
                for parent_id in event.parents:
                    if parent_id in seen:
                        continue
                    seen.add(parent_id)
                    parent = self.get(parent_id)
                    if parent is not None:
                        level.append(parent)
            if not level:
                break
            level.sort(key=lambda e: (e.ts_ms, e.id))
            found.extend(level)
            frontier = level
        return found
