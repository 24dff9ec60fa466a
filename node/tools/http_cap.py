"""The HTTP client of mounted Streamable HTTP servers, with answers capped in size.

The SDK reads a JSON answer whole (`response.aread()`), however large; SSE events it
caps itself (`max_sse_event_size`). Here the body of every response that is not an
event stream is counted as it arrives and the read fails once it passes the cap: the
SDK turns that `httpx2.StreamError` into an error for that request alone, which
`MountedServer.call` reports as `ResultTooLarge`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Final

import httpx2

# Marks the SDK's error for a request whose answer we cut (the SDK passes our text on).
ANSWER_TOO_LARGE_MARK: Final = "answer over the cap of"
# Same as the SDK's client: connect/write/pool, and read (a server may hold a stream open).
HTTP_TIMEOUT_S: Final = 30.0
HTTP_READ_TIMEOUT_S: Final = 300.0


class AnswerTooLarge(httpx2.StreamError):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"{ANSWER_TOO_LARGE_MARK} {max_bytes} bytes")


class _CappedBody(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, max_bytes: int) -> None:
        self._inner = inner
        self._max_bytes = max_bytes

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._inner:
            seen += len(chunk)
            if seen > self._max_bytes:
                raise AnswerTooLarge(self._max_bytes)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class CappedTransport(httpx2.AsyncBaseTransport):
    """`httpx2.AsyncHTTPTransport` whose non-SSE response bodies stop at `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self._max_bytes = max_bytes

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return response
        stream = response.stream
        assert isinstance(stream, httpx2.AsyncByteStream)
        return httpx2.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_CappedBody(stream, self._max_bytes),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


def capped_http_client(headers: Mapping[str, str], max_bytes: int) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        headers=dict(headers),
        timeout=httpx2.Timeout(HTTP_TIMEOUT_S, read=HTTP_READ_TIMEOUT_S),
        transport=CappedTransport(max_bytes),
    )
