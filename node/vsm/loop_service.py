"""A service that is one supervised loop: started with the service, cancelled at stop."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.mesh.service import Service


class LoopService(Service):
    """Subclasses name their loop (`loop_name`) and write `_run`; the node's
    `LoopSupervisor` restarts it if it fails."""

    loop_name: ClassVar[str]

    def __init__(self, loops: LoopSupervisor) -> None:
        self._loops = loops
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        raise NotImplementedError

    def _after_stop(self) -> None:
        """Runs once the loop has ended at stop (nothing by default)."""

    async def start(self) -> None:
        if self._task is None:
            self._task = self._loops.spawn(self.loop_name, self._run)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self._after_stop()
