"""The bridge's one `subscriptions/listen` at the node, for every URI its stdio gateway
subscribes.

The node bounds listen streams per caller (`mcp.max_listeners_per_caller`), and every
bridge bearing the node's stdio secret is one caller there: a stream per URI would run
out after a few subscriptions. So the bridge keeps one stream for the whole set (one per
`MAX_SUBSCRIPTIONS_PER_SESSION` URIs, what a listen at the node holds). When a stream's
set changes the bridge opens a stream for the new set and only then closes the old one,
so a URI in both loses no update (one may come twice meanwhile: an update says "read
again"). If the node has no spare listen for that (the caller's cap), the old
one is closed first.

Each subscribe call of the gateway is a `hold`: it waits here, told when the node holds
its URI (`HELD_METHOD` on the call's channel), its updates passed on, until the call is
cancelled or its URI can no longer be held (the node refused the stream, left the URI out
of it, or the stream was lost): then the hold fails with a `ProviderError`, which the
gateway reports to its client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vsmcp.node.mcp.listen import is_too_many_listens
from vsmcp.node.mcp.subscriptions import MAX_SUBSCRIPTIONS_PER_SESSION
from vsmcp.node.tools.client_channel import HELD_METHOD, UPDATED_METHOD, ClientChannel
from vsmcp.node.tools.errors import ProviderError
from vsmcp.node.tools.offers import SUBSCRIBE_METHOD

if TYPE_CHECKING:
    from mcp.client.client import Client

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Stream:
    """One listen at the node: the URIs asked for, and once open, those it honoured
    (`ready`: the honoured URIs, or why it did not open)."""

    uris: frozenset[str]
    ready: asyncio.Future[frozenset[str] | str]
    task: asyncio.Task[None] | None = None
    # Refused for the caller's listener cap at the node (no spare listen).
    capped: bool = False

    def refusal(self) -> str | None:
        """Why it did not open (once `ready`), or None: it did."""
        outcome = self.ready.result()
        return outcome if isinstance(outcome, str) else None


@dataclass(eq=False)
class _Hold:
    """One gateway subscribe call waiting on `uri`."""

    tool: str
    uri: str
    channel: ClientChannel
    ended: asyncio.Future[None]
    held_by: _Stream | None = field(default=None)


class NodeListen:
    """The URIs subscribed through this bridge, held by one listen at the node."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._holds: dict[str, list[_Hold]] = {}
        # The streams open at the node, each for at most MAX_SUBSCRIPTIONS_PER_SESSION URIs.
        self._current: list[_Stream] = []
        self._changed = asyncio.Event()
        self._manager: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def hold(self, tool: str, uri: str, channel: ClientChannel) -> None:
        """Pass the node's updates of `uri` to `channel` until cancelled; raises
        `ProviderError` once the node does not hold it."""
        hold = _Hold(tool, uri, channel, asyncio.get_running_loop().create_future())
        self._holds.setdefault(uri, []).append(hold)
        self._wake()
        try:
            await hold.ended
        finally:
            holds = self._holds.get(uri, [])
            if hold in holds:
                holds.remove(hold)
            if not holds:
                self._holds.pop(uri, None)
            self._wake()

    async def aclose(self) -> None:
        """The bridge ends: so do its streams (the gateway ended its holds already)."""
        tasks = [t for t in (self._manager, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def _wake(self) -> None:
        self._changed.set()
        if self._manager is None or self._manager.done():
            self._manager = asyncio.create_task(self._manage(), name="mcp-bridge-listen")

    async def _manage(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                await self._reconcile()
            except Exception:  # top-level handler: the manager outlives one round
                # Dead, it would leave every later hold waiting unconfirmed; the next change
                # reconciles again.
                log.exception("holding the bridge's subscriptions at the node failed")

    async def _reconcile(self) -> None:
        """Make the streams at the node match the URIs held, then settle the holds."""
        wanted = frozenset(self._holds)
        self._current = [s for s in self._current if s.task is not None and not s.task.done()]
        for old, asked in _plan(self._current, wanted):
            if old is not None and old.uris == asked:
                await self._settle(old, asked)
            elif not asked:
                assert old is not None
                self._forget(old)
                await self._close(old)
            else:
                await self._replace(old, asked)

    async def _replace(self, old: _Stream | None, asked: frozenset[str]) -> None:
        """Open a stream for `asked`, then close `old`: the URIs in both lose nothing.
        With no spare listen at the node for that (its listener cap), `old` is closed
        first: its URIs may miss an update meanwhile, rather than all new ones failing."""
        opened = await self._open(asked)
        closed = None
        if opened.capped and old is not None:
            self._forget(old)
            await self._close(old)
            closed, old = old, None
            opened = await self._open(asked)
        why = opened.refusal()
        if why is not None:
            # Refused: the stream held so far (unless closed for this) goes on for the
            # URIs it holds; the others cannot be held now.
            log.warning("the node refused a listen of %d URIs: %s", len(asked), why)
            self._fail(lambda h: h.uri in asked and (h.held_by is None or h.held_by is closed), why)
            return
        self._current.append(opened)
        if old is not None:
            self._forget(old)
        # Settled before the old stream is closed: the holds it held are the new one's
        # from here, and new holds hear they are held without waiting for that close.
        await self._settle(opened, asked)
        if old is not None:
            await self._close(old)

    def _forget(self, stream: _Stream) -> None:
        """`stream` is no longer one the bridge holds (it may have removed itself already,
        lost while the manager awaited something else)."""
        if stream in self._current:
            self._current.remove(stream)

    async def _settle(self, stream: _Stream, asked: frozenset[str]) -> None:
        """Holds of URIs `stream` honours are held by it (told so once, before any update
        of the URI is passed on to them); holds of URIs it was asked for and left out
        fail. Holds added since it was asked wait their turn."""
        honoured = stream.ready.result() if stream.ready.done() else frozenset()
        assert not isinstance(honoured, str)
        for holds in list(self._holds.values()):
            for hold in list(holds):
                if hold.uri in honoured and not hold.ended.done():
                    if hold.held_by is None:
                        # Told directly, not from a task of its own: an update (passed on
                        # only to holds told) cannot overtake the subscribe's answer.
                        await hold.channel.notify(HELD_METHOD, {"uri": hold.uri})
                    hold.held_by = stream
        self._fail(
            lambda h: h.uri in asked and h.uri not in honoured, "the node did not take the URI"
        )

    def _fail(self, which: Callable[[_Hold], bool], why: str) -> None:
        for holds in list(self._holds.values()):
            for hold in holds:
                if which(hold) and not hold.ended.done():
                    detail = f"{SUBSCRIBE_METHOD} {hold.uri!r} at the node: {why}"
                    hold.ended.set_exception(ProviderError(hold.tool, detail))

    async def _open(self, uris: frozenset[str]) -> _Stream:
        """A stream for `uris`, once open or refused (see `_Stream.refusal`)."""
        stream = _Stream(uris, asyncio.get_running_loop().create_future())
        stream.task = asyncio.create_task(self._run(stream), name="mcp-bridge-listen-stream")
        self._tasks.add(stream.task)
        stream.task.add_done_callback(self._tasks.discard)
        await stream.ready
        return stream

    async def _close(self, stream: _Stream) -> None:
        if stream.task is not None:
            stream.task.cancel()
            await asyncio.wait([stream.task])

    async def _run(self, stream: _Stream) -> None:
        """Hold one listen at the node: updates to the holds of their URI; its loss fails
        the holds it held."""
        from mcp.client.subscriptions import (
            ListenNotSupportedError,
            ResourceUpdated,
            SubscriptionLost,
        )
        from mcp.shared.exceptions import MCPError

        why = "the node ended the listen"
        try:
            async with self._client.listen(resource_subscriptions=sorted(stream.uris)) as sub:
                stream.ready.set_result(frozenset(sub.honored.resource_subscriptions or ()))
                async for event in sub:
                    if isinstance(event, ResourceUpdated):
                        for hold in list(self._holds.get(event.uri, ())):
                            if hold.held_by is not None:  # its subscribe answered first
                                await hold.channel.notify(UPDATED_METHOD, {"uri": event.uri})
        except (MCPError, SubscriptionLost, ListenNotSupportedError, TimeoutError) as e:
            why = str(e) or type(e).__name__
            stream.capped = isinstance(e, MCPError) and is_too_many_listens(e.code, e.data)
        except Exception as e:  # top-level handler of the stream's task
            # Anything else (the transport's errors, the SDK's once its session closed)
            # loses the stream as well: its holds must hear so, not wait on it for good.
            log.warning("the bridge's listen at the node failed", exc_info=e)
            why = str(e) or type(e).__name__
        finally:
            if not stream.ready.done():
                stream.ready.set_result(why)  # also when cancelled: the opener is gone
        if stream in self._current:
            self._current.remove(stream)
            self._fail(lambda h: h.held_by is stream, f"listen lost: {why}")
            self._wake()


def _plan(
    streams: list[_Stream], wanted: frozenset[str]
) -> list[tuple[_Stream | None, frozenset[str]]]:
    """Which URIs each stream should hold (None: a stream to open): each keeps those of
    its URIs still wanted, new URIs fill the room left, then new streams."""
    kept = [(stream, set(stream.uris & wanted)) for stream in streams]
    new = sorted(wanted.difference(*(uris for _, uris in kept)))
    for _, uris in kept:
        while new and len(uris) < MAX_SUBSCRIPTIONS_PER_SESSION:
            uris.add(new.pop(0))
    plan: list[tuple[_Stream | None, frozenset[str]]] = [(s, frozenset(u)) for s, u in kept]
    for start in range(0, len(new), MAX_SUBSCRIPTIONS_PER_SESSION):
        plan.append((None, frozenset(new[start : start + MAX_SUBSCRIPTIONS_PER_SESSION])))
    return plan
