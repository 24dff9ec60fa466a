"""The live status page: its static assets, `/api/events` and the `GET /api/stream` feed.

The page (`static/index.html`, `page.css`, `page.js`, written by hand, no build step and
no CDN: it works air-gapped) reads the node's JSON APIs and listens to `/api/stream`, a
Server-Sent Events feed of the node's event stream, to re-fetch what an event changed.

`PageHub` is one subscriber of the event stream (`page`), for every kind but tool calls
(thousands a second under load; the page reads their KPIs from `/api/vsm`). Each batch
is encoded once into one SSE frame and offered to every page client's bounded queue. A
client whose queue is full (it does not read, so its socket and then its queue filled)
is dropped: its connection is aborted, so what it held is freed, and `dropped` counts it.
Past `[http] max_page_clients` open clients, `/api/stream` answers 503 with Retry-After.
The last `RECENT_EVENTS` events are kept for `/api/events`, so a page opened late sees
what happened before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import Callable
from importlib import resources
from typing import Any, Final

import msgspec
from aiohttp import web

from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.app.config import DEFAULT_MAX_PAGE_CLIENTS
from vsmcp.node.vsm.events import NODE_CATALOG, Event, Telemetry, ToolCallFinished
from vsmcp.node.vsm.stream import EventStream

# Frames queued per client before it counts as not reading and is dropped.
CLIENT_QUEUE_FRAMES: Final = 64
# A frame holds at most this many events; a bigger batch sends a `resync` instead
# (the page then re-reads every API), so a frame's size stays bounded.
MAX_FRAME_EVENTS: Final = 100
MAX_FRAME_BYTES: Final = 64 * 1024
# Events the hub's stream subscription buffers between batches.
HUB_CAPACITY: Final = 4096
RECENT_EVENTS: Final = 200
# The kernel's send buffer of a stream's socket (Linux doubles it): without a cap, its
# autotuning lets a client that does not read hold megabytes before the node notices.
STREAM_SNDBUF_BYTES: Final = 64 * 1024
# A comment line this often: proxies keep the stream open, dead peers are found.
KEEPALIVE_S: Final = 15.0
# How often the VSM view is pushed to the page clients: computed once for all of them
# (it sorts the KPI window's latencies; every page polling it would cost that N times).
VSM_PUSH_S: Final = 5.0
# What EventSource waits before reconnecting after the stream ends.
RETRY_MS: Final = 2000
KEEPALIVE_FRAME: Final = b": keepalive\n\n"

# Every kind but the high-volume ones: one per call, one per telemetry reading (the page
# shows neither one by one; a page must not slow the telemetry intake, which waits for
# room in the buffers telemetry goes to).
PAGE_KINDS: Final = frozenset(k.cls for k in NODE_CATALOG.kinds.values()) - {
    ToolCallFinished,
    Telemetry,
}
# The page's files: name -> content type. Nothing else under static/ is served.
STATIC_FILES: Final = {
    "index.html": "text/html",
    "page.css": "text/css",
    "page.js": "text/javascript",
}

_encode = msgspec.json.Encoder().encode


def static_file(name: str) -> bytes:
    return resources.files("vsmcp.node.http").joinpath("static", name).read_bytes()


def sse_frame(event: str, data: object) -> bytes:
    # JSON has no raw newlines, so the payload is one `data:` line.
    return b"event: " + event.encode() + b"\ndata: " + _encode(data) + b"\n\n"


class PageClient:
    """One open `/api/stream`: a bounded queue of frames; `None` ends it."""

    __slots__ = ("dropped", "queue", "transport")

    def __init__(self, transport: asyncio.Transport | None) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(CLIENT_QUEUE_FRAMES)
        self.transport = transport
        self.dropped = False


class PageHub:
    """The page clients of one node and the event subscription that feeds them."""

    def __init__(self, events: EventStream, *, max_clients: int = DEFAULT_MAX_PAGE_CLIENTS):
        self.max_clients = max_clients
        self._clients: set[PageClient] = set()
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self.opened = 0  # clients admitted
        self.refused = 0  # clients refused at the cap
        self.dropped = 0  # clients dropped: their queue was full
        self.frames = 0  # frames offered to clients
        self.resyncs = 0  # batches too big for one frame: a resync was sent instead
        self._closing = False
        self._vsm_push: asyncio.Task[None] | None = None
        self._subscriber = events.subscribe(
            "page", self._on_batch, capacity=HUB_CAPACITY, kinds=PAGE_KINDS
        )

    # -- clients ---------------------------------------------------------------------

    @property
    def clients(self) -> int:
        return len(self._clients)

    def open(self, transport: asyncio.Transport | None) -> PageClient | None:
        """A new client, or None at the cap (or while the node stops)."""
        if self._closing or len(self._clients) >= self.max_clients:
            self.refused += 1
            return None
        client = PageClient(transport)
        self._clients.add(client)
        self.opened += 1
        return client

    def close(self, client: PageClient) -> None:
        self._clients.discard(client)

    def _drop(self, client: PageClient) -> None:
        """A client that stopped reading: abort its connection, which frees its buffers
        (and cancels its handler, blocked in a write)."""
        self._clients.discard(client)
        self.dropped += 1
        client.dropped = True
        if client.transport is not None:
            client.transport.abort()

    async def shutdown(self, _app: web.Application | None = None) -> None:
        """End every stream (the HTTP server waits for open handlers when it stops)."""
        self._closing = True
        for client in list(self._clients):
            self._clients.discard(client)
            with contextlib.suppress(asyncio.QueueFull):
                client.queue.put_nowait(None)
            if client.transport is not None and client.queue.full():
                client.transport.abort()

    def stats(self) -> dict[str, Any]:
        return {
            "clients": len(self._clients),
            "max_clients": self.max_clients,
            "opened": self.opened,
            "refused": self.refused,
            "dropped": self.dropped,
            "frames": self.frames,
            "resyncs": self.resyncs,
            "subscriber": self._subscriber.stats(),
        }

    # -- the VSM view ----------------------------------------------------------------

    def start_vsm_push(self, loops: LoopSupervisor, view: Callable[[], dict[str, Any]]) -> None:
        """Push `view()` (the node's /api/vsm) to every client each VSM_PUSH_S."""

        async def push() -> None:
            while True:
                await asyncio.sleep(VSM_PUSH_S)
                if self._clients:
                    self.offer(sse_frame("vsm", view()))

        self._vsm_push = loops.spawn("page-vsm", push)

    async def stop_vsm_push(self) -> None:
        task, self._vsm_push = self._vsm_push, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    # -- events ----------------------------------------------------------------------

    def _on_batch(self, batch: list[Event]) -> None:
        items = [msgspec.to_builtins(e) for e in batch]
        self.recent.extend(items)
        if not self._clients:
            return
        frame = sse_frame("events", items) if len(items) <= MAX_FRAME_EVENTS else b""
        if not frame or len(frame) > MAX_FRAME_BYTES:
            self.resyncs += 1
            frame = sse_frame("resync", {"events": len(items)})
        self.offer(frame)

    def offer(self, frame: bytes) -> None:
        self.frames += 1
        for client in list(self._clients):
            try:
                client.queue.put_nowait(frame)
            except asyncio.QueueFull:
                self._drop(client)

    def recent_events(self, limit: int) -> list[dict[str, Any]]:
        return list(self.recent)[-limit:]


def page_routes(app: web.Application, hub: PageHub) -> None:
    """`/`, `/static/<file>` and `/api/stream` on `app`."""

    async def index(_: web.Request) -> web.Response:
        return _static_response("index.html")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound()
        return _static_response(name)

    async def stream(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF_BYTES)
        client = hub.open(transport)
        if client is None:
            return web.json_response(
                {
                    "error": f"too many page clients: {hub.max_clients} open "
                    "(http.max_page_clients); close a page or raise the cap",
                    "max_page_clients": hub.max_clients,
                },
                status=503,
                headers={"Retry-After": "5"},
            )
        try:
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-store",
                    "X-Accel-Buffering": "no",
                }
            )
            await response.prepare(request)
            hello = {"ts": time.time(), "max_clients": hub.max_clients}
            await response.write(f"retry: {RETRY_MS}\n".encode() + sse_frame("hello", hello))
            while True:
                try:
                    frame = await asyncio.wait_for(client.queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    frame = KEEPALIVE_FRAME
                if frame is None or client.dropped:
                    break
                await response.write(frame)
            return response
        finally:
            hub.close(client)

    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/stream", stream)
    app.on_shutdown.append(hub.shutdown)


def _static_response(name: str) -> web.Response:
    return web.Response(
        body=static_file(name),
        content_type=STATIC_FILES[name],
        charset="utf-8",
        headers={
            "Cache-Control": "no-cache",
            # Everything the page loads comes from this node; no inline script.
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
            "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
        },
    )
