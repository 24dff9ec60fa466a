"""ZeroMQ sockets on an asyncio loop, without zmq.asyncio's per-call futures.

zmq.asyncio builds a poller and several futures for every await; on the request path
that tripled the round trip. We use plain sockets with non-blocking calls and wake one
owning task per socket from the socket's ZMQ_FD.

ZMQ_FD is edge-like: it signals that ZMQ_EVENTS may have changed, and any send, recv or
EVENTS read can consume that signal. So the owner re-reads EVENTS before it sleeps, and
whoever sends on a socket outside its owner calls `after_foreign_io()` so a message that
arrived meanwhile is not left unnoticed.
"""

from __future__ import annotations

import asyncio

import zmq

# Plain ints: pyzmq's flag enums cost an enum construction per operation on the hot path.
_EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)
POLLOUT = int(zmq.POLLOUT)


def socket_events(sock: zmq.Socket[bytes]) -> int:
    """ZMQ_EVENTS (POLLIN / POLLOUT bits); reading it also re-arms ZMQ_FD."""
    return int(sock.getsockopt(_EVENTS))


class SocketWaker:
    """An asyncio.Event set whenever the socket's ZMQ_FD signals."""

    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        self.sock = sock
        self.event = asyncio.Event()
        self._fd = int(sock.get(zmq.FD))
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self.event.set)
        self._closed = False

    async def wait(self, mask: int) -> int:
        """Wait until ZMQ_EVENTS intersects `mask` (or `poke()`); return ZMQ_EVENTS."""
        while True:
            self.event.clear()
            events = socket_events(self.sock)
            if events & mask:
                return events
            await self.event.wait()

    async def wait_or_poke(self) -> None:
        """Sleep until the FD signals or `poke()`; the caller re-reads ZMQ_EVENTS."""
        await self.event.wait()
        self.event.clear()

    def poke(self) -> None:
        self.event.set()

    def after_foreign_io(self) -> None:
        """Call after sending on this socket from outside its owner task."""
        if socket_events(self.sock) & POLLIN:
            self.event.set()

    def close(self) -> None:
        """Stop watching the FD; call before closing the socket."""
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self._fd)
