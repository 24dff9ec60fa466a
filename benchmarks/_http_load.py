"""A lean HTTP/1.1 load generator for JSON-RPC POSTs (benchmark apparatus, not product).

Each caller holds one keep-alive connection and has one request in flight at a time, as
an MCP client does. Its request is built by hand, once, and a response is read by its
Content-Length, so a call costs the generator well under 100 us of CPU instead of the
~250 us of aiohttp's client: on a 2-core box shared with the nodes under test, every
microsecond the generator spends is taken from them. `drive_processes` spreads callers
over several processes, so they do not all move in lockstep with one event loop.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from typing import Any

MAX_RESPONSE_BYTES = 1 << 20


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[bytes] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > MAX_RESPONSE_BYTES:
            self._fail(ConnectionError("response too large"))
            return
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0 or self.waiter is None:
            return
        head = bytes(self.buffer[:head_end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self._fail(ConnectionError("response without Content-Length"))
            return
        line_end = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : line_end if line_end >= 0 else len(head)])
        end = head_end + 4 + length
        if len(self.buffer) >= end:
            response = bytes(self.buffer[:end])
            del self.buffer[:end]
            waiter, self.waiter = self.waiter, None
            waiter.set_result(response)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"connection lost: {exc}"))

    def _fail(self, error: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)


def _request(host: str, port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def drive(
    url_host: str,
    port: int,
    path: str,
    headers: dict[str, str],
    params: dict[str, Any],
    callers: int,
    seconds: float,
) -> tuple[int, float, float]:
    """Run `callers` callers for `seconds`; return (calls, elapsed s, own CPU s).

    Every response must be HTTP 200 with a JSON-RPC result, or this raises.
    """
    loop = asyncio.get_running_loop()
    done = 0

    async def caller(k: int) -> None:
        nonlocal done
        _, conn = await loop.create_connection(_Connection, url_host, port)
        assert conn.transport is not None
        # One call in flight per connection, so one id per caller will do: the request
        # is built once (as wrk does), not per call.
        message = {"jsonrpc": "2.0", "id": k, "method": "tools/call", "params": params}
        request = _request(url_host, port, path, headers, json.dumps(message).encode())
        try:
            while time.perf_counter() < stop_at:
                conn.waiter = loop.create_future()
                conn.transport.write(request)
                response = await conn.waiter
                if not response.startswith(b"HTTP/1.1 200") or b'"result"' not in response:
                    raise RuntimeError(f"call failed: {response[:300]!r}")
                done += 1
        finally:
            conn.transport.close()

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    stop_at = t0 + seconds
    await asyncio.gather(*(caller(k) for k in range(callers)))
    return done, time.perf_counter() - t0, time.process_time() - cpu0


def _drive_in_process(args: tuple[Any, ...]) -> tuple[int, float, float]:
    return asyncio.run(drive(*args))


def drive_processes(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str],
    params: dict[str, Any],
    *,
    processes: int,
    callers_per_process: int,
    seconds: float,
) -> tuple[float, float]:
    """Callers spread over `processes` processes; return (calls/s, generator CPU us/call)."""
    args = (host, port, path, headers, params, callers_per_process, seconds)
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        results = pool.map(_drive_in_process, [args] * processes)
    calls = sum(r[0] for r in results)
    elapsed = max(r[1] for r in results)
    cpu = sum(r[2] for r in results)
    return calls / elapsed, cpu / max(calls, 1) * 1e6
