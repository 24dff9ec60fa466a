"""A loopback TCP proxy a test can cut and restore: a real outage of a real service
(PostgreSQL here) for one node, without stopping the service others use.

Runs its own event loop in a thread. `cut()` closes every open connection and stops
listening (new connections are refused); `restore()` listens again on the same port.
`hold_replies()` stops passing what the service sends (the client's side still goes
through): the client waits for an answer the service already sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Final

CHUNK: Final = 65_536
WAIT_S: Final = 10.0


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._serving: set[asyncio.Task[None]] = set()
        self._replies_pass = asyncio.Event()
        self._loop.call_soon_threadsafe(self._replies_pass.set)

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(WAIT_S)
        self._loop.close()

    def cut(self) -> None:
        self._call(self._cut())

    def hold_replies(self) -> None:
        self._loop.call_soon_threadsafe(self._replies_pass.clear)

    def restore(self) -> None:
        self._call(self._listen())

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(WAIT_S)  # type: ignore[arg-type]

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        self._replies_pass.set()  # a held pipe wakes to find its connection gone
        if self._serving:
            await asyncio.wait(set(self._serving), timeout=WAIT_S)
        if server is not None:
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer),
            self._pipe(up_reader, writer, self._replies_pass),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        passing: asyncio.Event | None = None,
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(CHUNK):
                if passing is not None:
                    await passing.wait()
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
