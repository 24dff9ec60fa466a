"""Server-to-client requests at 2026-07-28: `input_required` rounds of a `tools/call`.

That revision has no back channel: a server that needs its client's input answers the
call with `{"resultType": "input_required", "inputRequests": {key: request},
"requestState": ...}` and the client retries the call with `inputResponses` (keyed
alike) and the same `requestState`. Our calls run on (a provider somewhere in the mesh
is waiting for the answer), so the gateway keeps the running call parked under an
unguessable `requestState` between the rounds:

- the first POST starts the call; its answer is the result, or the requests the call
  made so far (`input_required`);
- a retry with that `requestState` (same caller) hands the responses to the waiting
  requests and answers the next outcome the same way.

The requests themselves are the gateway's ordinary pending requests
(`client_requests.ClientRequests`, keyed by their id, which is the `inputRequests` key):
the same checks of the answer, the same deadline (the call's), the same pending gauge.
A client that never retries leaves its requests to time out; the call then ends and is
dropped. A POST that goes away while it waits cancels the call, as at 2026-07-28 a
closed response stream does.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from vsmcp.node.errors import NodeError
from vsmcp.node.mcp.client_requests import ClientRequests, ClientState, Notify

MAX_PARKED: Final = 256
# One caller's share of them (its calls parked at once), like `max_listeners_per_caller`.
MAX_PARKED_PER_CALLER: Final = 16
OWNER_PREFIX: Final = "rounds:"


class RoundsError(NodeError):
    """A retry that names no parked call of this caller (unknown or expired state)."""


@dataclass(eq=False)
class _Parked:
    caller: object
    task: asyncio.Task[dict[str, Any]] | None = None
    # Requests the call made that the client has not been shown yet, by id.
    new: dict[str, dict[str, Any]] = field(default_factory=dict)
    asked: asyncio.Event = field(default_factory=asyncio.Event)
    # The POST now waiting on the call (its stream carries logs and progress), if any.
    notify: Notify | None = None
    waiting: bool = False


Start = Callable[[Notify, ClientState], Coroutine[Any, Any, dict[str, Any]]]
"""`start(notify, client)`: run the call with this way to the client."""


class InputRounds:
    """The gateway's 2026-07-28 calls parked between `input_required` rounds."""

    def __init__(
        self,
        requests: ClientRequests,
        max_parked: int = MAX_PARKED,
        max_per_caller: int = MAX_PARKED_PER_CALLER,
    ) -> None:
        self._requests = requests
        self._max_parked = max_parked
        self._max_per_caller = max_per_caller
        self._parked: dict[str, _Parked] = {}

    @property
    def parked(self) -> int:
        return len(self._parked)

    async def call(
        self,
        caller: object,
        params: Mapping[str, Any],
        notify: Notify | None,
        capabilities: frozenset[str],
        log_level: str | None,
        start: Start,
    ) -> dict[str, Any]:
        """The call's result, or its `input_required` round. Raises `RoundsError`."""
        state = params.get("requestState")
        if state is None:
            token, parked = self._start(caller, capabilities, log_level, start)
        else:
            token = state if isinstance(state, str) else ""
            found = self._parked.get(token)
            if found is None or found.caller != caller:
                raise RoundsError("unknown or expired requestState: call again without it")
            parked = found
            self._answer(token, params.get("inputResponses"))
        return await self._next(token, parked, notify)

    def _start(
        self,
        caller: object,
        capabilities: frozenset[str],
        log_level: str | None,
        start: Start,
    ) -> tuple[str, _Parked]:
        if len(self._parked) >= self._max_parked:
            raise RoundsError(f"{self._max_parked} calls already wait for their clients' input")
        if sum(p.caller == caller for p in self._parked.values()) >= self._max_per_caller:
            raise RoundsError(f"{self._max_per_caller} calls of yours already wait for your input")
        token = secrets.token_urlsafe(24)
        parked = _Parked(caller)

        async def to_client(message: dict[str, Any]) -> None:
            if "id" in message and "method" in message:
                parked.new[message["id"]] = message
                parked.asked.set()
            elif parked.notify is not None:
                await parked.notify(message)

        client = ClientState(OWNER_PREFIX + token, capabilities, log_level)
        parked.task = asyncio.create_task(start(to_client, client), name="mcp-input-rounds")
        parked.task.add_done_callback(lambda _t: self._ended(token))
        self._parked[token] = parked
        return token, parked

    def _answer(self, token: str, responses: Any) -> None:
        if not isinstance(responses, Mapping):
            return
        for key, result in responses.items():
            self._requests.answer(OWNER_PREFIX + token, {"id": key, "result": result})

    async def _next(self, token: str, parked: _Parked, notify: Notify | None) -> dict[str, Any]:
        task = parked.task
        assert task is not None
        parked.notify, parked.waiting = notify, True
        try:
            if not parked.new and not task.done():
                asked = asyncio.ensure_future(parked.asked.wait())
                try:
                    await asyncio.wait({task, asked}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    asked.cancel()
        except asyncio.CancelledError:
            task.cancel()  # the POST went away: so does the call
            raise
        finally:
            parked.notify, parked.waiting = None, False
        if parked.new and not task.done():
            requests = {
                key: {"method": r["method"], "params": r.get("params", {})}
                for key, r in parked.new.items()
            }
            parked.new.clear()
            parked.asked.clear()
            return {
                "resultType": "input_required",
                "inputRequests": requests,
                "requestState": token,
            }
        self._parked.pop(token, None)
        return task.result()

    def _ended(self, token: str) -> None:
        parked = self._parked.get(token)
        if parked is not None and not parked.waiting:
            # Nobody waits for its answer (the client did not retry): drop it.
            del self._parked[token]
            task = parked.task
            if task is not None and not task.cancelled():
                task.exception()  # retrieved: its failure was the client's silence

    async def stop(self) -> None:
        """Cancel every parked call and wait for them to end (idempotent)."""
        tasks = [p.task for p in self._parked.values() if p.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
