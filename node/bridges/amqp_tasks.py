"""The short tasks that write frames for a channel (batched acks, batched answers):
owned, so that the end of a connection cancels and awaits them instead of leaving them
to write on a closed channel."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class WriteTasks:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
