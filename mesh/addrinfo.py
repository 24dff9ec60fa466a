"""Address resolution that needs no resolver thread for an IP literal.

Why: the event loop's `getaddrinfo` runs in a worker pool even for "127.0.0.1", and so
does `create_server`/`create_datagram_endpoint` given a host: uvloop starts libuv's four
resolver threads at the first such call, which an idle node then keeps (≈0.25 MiB;
docs/benchmarks.md, "Idle node"). An IP literal needs no resolver: `socket.getaddrinfo`
with `AI_NUMERICHOST` answers at once without blocking. Names still go through the
loop's resolver.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Any

AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]


def numeric_addrinfo(
    host: str | None, port: int, *, type: int, flags: int = 0
) -> Sequence[AddrInfo] | None:
    """`getaddrinfo` for an IP literal (or None with `AI_PASSIVE`: the wildcards);
    None when `host` is a name."""
    try:
        # As bytes: a str host is first encoded with the IDNA codec, which a literal does
        # not need (and an idle node would import only for this).
        literal = None if host is None else host.encode("ascii")
        return socket.getaddrinfo(literal, port, type=type, flags=flags | socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeEncodeError):
        return None


async def getaddrinfo(
    host: str | None, port: int, *, type: int, flags: int = 0
) -> Sequence[AddrInfo]:
    """The running loop's `getaddrinfo`, answered in place for an IP literal."""
    infos = numeric_addrinfo(host, port, type=type, flags=flags)
    if infos is not None:
        return infos
    loop = asyncio.get_running_loop()
    return await loop.getaddrinfo(host, port, type=type, flags=flags)


def bound_stream_socket(info: AddrInfo) -> socket.socket:
    """A non-blocking TCP socket bound to `info`'s address, options as asyncio's
    `create_server(reuse_address=True)` sets them; the server listens on it."""
    family, kind, proto, _, address = info
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
