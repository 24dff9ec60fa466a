"""Bounded per-peer outgoing queue with priority classes (pure, no I/O).

Policy: frames leave in priority order (MEMBERSHIP, then REQUEST, then BULK), FIFO within
a class. The queue is bounded by frame count and by bytes. When a push would exceed a
bound, the oldest frame of the lowest-priority non-empty class is dropped, repeatedly,
until the new frame fits. Only frames of the new frame's class or less important ones
are ever dropped for it; if dropping all of those would still not make room, the new
frame alone is dropped (nothing is evicted in vain). So a full queue of gossip never
delays a probe, and a probe is never dropped to make room for gossip.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Protocol, TypeVar

from vsmcp.mesh._transport_wire import Priority


class Queueable(Protocol):
    @property
    def priority(self) -> Priority: ...

    @property
    def size(self) -> int: ...


T = TypeVar("T", bound=Queueable)


class OutboundQueue(Generic[T]):
    def __init__(self, *, max_frames: int, max_bytes: int) -> None:
        if max_frames < 1 or max_bytes < 1:
            raise ValueError("queue bounds must be positive")
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self._classes: tuple[deque[T], ...] = tuple(deque() for _ in Priority)
        self._class_bytes = [0 for _ in Priority]
        self._count = 0
        self._bytes = 0

    def __len__(self) -> int:
        return self._count

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def push(self, item: T) -> list[T]:
        """Queue `item`; return the frames dropped to respect the bounds (maybe `item`)."""
        size = item.size
        if self._count < self.max_frames and self._bytes + size <= self.max_bytes:
            self._append(item, size)
            return []
        if not self._fits_if_evicting_for(item):
            return [item]
        dropped: list[T] = []
        while self._count >= self.max_frames or self._bytes + item.size > self.max_bytes:
            # Cannot reach a class more important than item's: the check above says so.
            victim_class = self._lowest_nonempty_class()
            assert victim_class is not None and victim_class >= item.priority
            dropped.append(self._take(victim_class))
        self._append(item, size)
        return dropped

    def _append(self, item: T, size: int) -> None:
        self._classes[item.priority].append(item)
        self._class_bytes[item.priority] += size
        self._count += 1
        self._bytes += size

    def peek(self) -> T | None:
        """The next frame to send: the oldest of the most important non-empty class."""
        for frames in self._classes:
            if frames:
                return frames[0]
        return None

    def pop(self) -> T:
        for priority, frames in enumerate(self._classes):
            if frames:
                return self._take(priority)
        raise IndexError("pop from an empty OutboundQueue")

    def clear(self) -> list[T]:
        items = [item for frames in self._classes for item in frames]
        for frames in self._classes:
            frames.clear()
        self._class_bytes = [0 for _ in Priority]
        self._count = 0
        self._bytes = 0
        return items

    def _fits_if_evicting_for(self, item: T) -> bool:
        """Would `item` fit once every frame not more important than it were gone?"""
        frames = sum(len(self._classes[p]) for p in range(item.priority))
        size = sum(self._class_bytes[p] for p in range(item.priority))
        return frames + 1 <= self.max_frames and size + item.size <= self.max_bytes

    def _lowest_nonempty_class(self) -> int | None:
        for priority in range(len(self._classes) - 1, -1, -1):
            if self._classes[priority]:
                return priority
        return None

    def _take(self, priority: int) -> T:
        item = self._classes[priority].popleft()
        self._class_bytes[priority] -= item.size
        self._count -= 1
        self._bytes -= item.size
        return item
