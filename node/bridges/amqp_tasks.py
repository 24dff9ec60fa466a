"""The short tasks that write frames for a channel (batched acks, batched answers):
owned, so that the end of a connection cancels and awaits them instead of leaving them
to write on a closed channel. Once closed, it refuses new ones (the caller's channel is
gone): nothing it owned outlives the bridge's stop."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class WriteTasks:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> bool:
        """Run `coro` in an owned task; False (and `coro` closed, never run) once
        `close` was called."""
        if self._closed:
            coro.close()
            return False
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
