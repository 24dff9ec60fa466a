"""The one Host/Origin policy of the node's HTTP server, applied to every route.

DNS rebinding: a page at `evil.example` whose name is re-pointed at 127.0.0.1 (or at
the node's LAN address) reaches the node from the user's browser as a same-origin
page, with `Host: evil.example`. So when `allowed_hosts` is set (the node always sets
it), a Host naming another host gets 421 on every route (`/`, `/api/*`, `/healthz`,
`/metrics`, `/mcp`); a Host that does not parse (`[::1]evil.example`, `a b`) is another
host. The address the client connected to is always answered as a Host: that is the
node itself, reached by address, which no rebinding page can claim.

A browser `Origin` is answered when it is listed in `allowed_origins`, or when it is a
loopback origin (`http(s)://localhost`, `127.0.0.1` or `[::1]`, any port) and the
request arrived on a loopback address: the page was served by this machine and its
browser runs here (MCP's "check Origin, bind to localhost"). A loopback origin reaching
a LAN address is another machine's page and is refused, like every other Origin: 403
(cross-site requests). A rebinding page's Origin names its own host, never a loopback
one, so this opens nothing to it.

Errors on `/mcp` are JSON-RPC errors (FORBIDDEN_HOST, FORBIDDEN_ORIGIN); elsewhere a
JSON object `{"error": ..., "host" | "origin": ...}`.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Final

from aiohttp import web

from vsmcp.node.errors import clip
from vsmcp.node.mcp.http import MCP_PATH, json_error
from vsmcp.node.mcp.protocol import FORBIDDEN_HOST, FORBIDDEN_ORIGIN, McpError

# RFC 9110 Host = uri-host [ ":" port ]; uri-host here: a DNS name or IPv4 address,
# or an IPv6 address in brackets. Nothing may follow the port.
_HOST_HEADER: Final = re.compile(
    r"(?:\[(?P<ipv6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_.-]+))(?::[0-9]{0,5})?", re.IGNORECASE
)

# RFC 6454 serialized origin: scheme "://" host [ ":" port ], nothing else ("null" and
# origins with paths or credentials are not loopback origins).
_ORIGIN: Final = re.compile(r"(?P<scheme>https?)://(?P<host>[^/?#@\s]+)", re.IGNORECASE)
_LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@functools.lru_cache(maxsize=256)  # a node is reached by the same few Host values
def host_name(host: str) -> str | None:
    """The host in a Host header, lower-case, without port or brackets; None if it is
    not a well-formed Host value."""
    found = _HOST_HEADER.fullmatch(host.strip())
    if found is None:
        return None
    ipv6 = found.group("ipv6")
    if ipv6 is not None:
        try:
            return ipaddress.IPv6Address(ipv6).compressed
        except ValueError:
            return None
    return str(found.group("name")).lower()


def _allowed_name(entry: str) -> str:
    """An allowed-hosts entry: a name, `name:port`, `[v6]:port` or a bare IPv6 address."""
    try:
        return ipaddress.ip_address(entry.strip().strip("[]")).compressed
    except ValueError:
        return host_name(entry) or entry.strip().lower()


def is_wildcard_address(host: str) -> bool:
    """`0.0.0.0`, `::`: every address of the machine, not a name a client uses."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def local_http_url(bind_host: str, port: int) -> str:
    """The URL local tools reach the node at: a wildcard bind is reached on loopback
    (a Host of `0.0.0.0` names no host the policy answers)."""
    host = bind_host.strip("[]")
    if is_wildcard_address(host):
        host = "::1" if ":" in host else "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _dialled(request: web.Request) -> str | None:
    """The address the client connected to (one of the node's own), as `host_name`
    writes an address."""
    transport = request.transport
    sockname = None if transport is None else transport.get_extra_info("sockname")
    if not isinstance(sockname, tuple) or not sockname:
        return None
    try:
        address = ipaddress.ip_address(str(sockname[0]).split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.compressed  # a dual-stack socket's IPv4 client
    return address.compressed


def is_loopback_origin(origin: str) -> bool:
    """`http(s)://localhost|127.0.0.1|[::1]` with any port (or none)."""
    found = _ORIGIN.fullmatch(origin.strip().rstrip("/"))
    return found is not None and host_name(found.group("host")) in _LOOPBACK_NAMES


def _arrived_on_loopback(request: web.Request) -> bool:
    dialled = _dialled(request)
    return dialled is not None and ipaddress.ip_address(dialled).is_loopback


class RequestPolicy:
    """Which Host and Origin headers the node answers (None hosts: any Host)."""

    def __init__(
        self, allowed_hosts: Collection[str] | None = None, allowed_origins: Collection[str] = ()
    ) -> None:
        self.allowed_hosts = (
            None if allowed_hosts is None else frozenset(_allowed_name(h) for h in allowed_hosts)
        )
        self.allowed_origins = frozenset(o.rstrip("/") for o in allowed_origins)

    def check(self, request: web.Request) -> McpError | None:
        if self.allowed_hosts is not None:
            host = request.headers.get("Host", "")
            name = host_name(host)
            if name not in self.allowed_hosts and (name is None or name != _dialled(request)):
                return McpError(
                    FORBIDDEN_HOST,
                    f"Misdirected: Host {clip(host)!r} is not served here",
                    {"host": clip(host)},
                )
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_allowed(origin, request):
            return McpError(
                FORBIDDEN_ORIGIN,
                f"Forbidden: Origin {clip(origin)!r} is not allowed",
                {"origin": clip(origin)},
            )
        return None

    def _origin_allowed(self, origin: str, request: web.Request) -> bool:
        if origin.rstrip("/") in self.allowed_origins:
            return True
        return is_loopback_origin(origin) and _arrived_on_loopback(request)

    def middleware(self) -> Any:
        """The aiohttp middleware applying this policy to every request."""

        @web.middleware
        async def request_policy(request: web.Request, handler: Handler) -> web.StreamResponse:
            refused = self.check(request)
            if refused is None:
                return await handler(request)
            if request.path == MCP_PATH:
                return json_error(refused)
            body = {"error": refused.message, **(refused.data or {})}
            return web.json_response(body, status=421 if refused.code == FORBIDDEN_HOST else 403)

        return request_policy
