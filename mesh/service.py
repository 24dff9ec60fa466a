"""The shape of every long-lived part of a node: idempotent `start`/`stop`, used as
`async with part:`. Lives in `mesh` so that both `mesh` and `node` can use it."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Service:
    """Subclasses implement `start` and `stop`; both must be safe to call twice."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
