"""node.http_policy: Host values parsed strictly; which hosts a node's config allows."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from vsmcp.node.app.config import load_config
from vsmcp.node.app.node import Node
from vsmcp.node.http.policy import RequestPolicy, host_name, is_loopback_origin, local_http_url
from vsmcp.node.mcp.protocol import FORBIDDEN_ORIGIN


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost", "localhost"),
        ("LocalHost:7700", "localhost"),
        ("127.0.0.1:7700", "127.0.0.1"),
        ("[::1]:7700", "::1"),
        ("[0:0:0:0:0:0:0:1]", "::1"),
        ("node-1.lan", "node-1.lan"),
        # Anything else is not a Host value, so it names no host we serve.
        ("[::1]evil.example", None),
        ("[::1]:7700evil.example", None),
        ("[::1", None),
        ("::1", None),
        ("localhost:7700:80", None),
        ("localhost evil.example", None),
        ("evil.example/", None),
        ("", None),
        ("[::g]", None),
    ],
)
def test_host_name(header: str, name: str | None) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize(
    ("bind", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:7"),
        ("0.0.0.0", "http://127.0.0.1:7"),
        ("::", "http://[::1]:7"),
        ("::1", "http://[::1]:7"),
        ("node1.lan", "http://node1.lan:7"),
    ],
)
def test_local_tools_reach_a_wildcard_bind_on_loopback(bind: str, url: str) -> None:
    assert local_http_url(bind, 7) == url


def test_loopback_names_are_allowed_wherever_the_node_listens(tmp_path: Path) -> None:
    def allowed(**overrides: object) -> list[str] | None:
        config = load_config(environ={}, overrides={"node.data_dir": str(tmp_path), **overrides})
        return Node(config)._allowed_hosts()

    assert allowed() == ["localhost", "127.0.0.1", "::1", "127.0.0.1"]
    # Listening on every address, Host is still checked (a wildcard names no host).
    assert allowed(**{"http.host": "0.0.0.0"}) == ["localhost", "127.0.0.1", "::1"]
    on_lan = allowed(**{"http.host": "0.0.0.0", "mcp.allowed_hosts": ["node1.lan"]})
    assert on_lan is not None
    assert {"localhost", "127.0.0.1", "::1", "node1.lan"} <= set(on_lan)


@pytest.mark.parametrize(
    ("origin", "loopback"),
    [
        ("http://localhost:6274", True),
        ("http://localhost", True),
        ("https://LOCALHOST:8443/", True),
        ("http://127.0.0.1:3000", True),
        ("http://[::1]:5173", True),
        ("http://[0:0:0:0:0:0:0:1]:5173", True),
        # Not loopback origins: other hosts, look-alikes, things that are not origins.
        ("http://evil.example", False),
        ("http://localhost.evil.example", False),
        ("http://localhost@evil.example", False),
        ("http://evil.example/?localhost", False),
        ("http://localhost:80/path", False),
        ("file://localhost", False),
        ("null", False),
        ("http://127.0.0.2", False),
        ("", False),
    ],
)
def test_loopback_origins(origin: str, loopback: bool) -> None:
    assert is_loopback_origin(origin) is loopback


def _request_on(address: str, origin: str) -> web.Request:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda key: (address, 7) if key == "sockname" else None
    return make_mocked_request(
        "GET", "/api/status", headers={"Host": "localhost:7", "Origin": origin}, transport=transport
    )


def test_a_loopback_origin_is_answered_only_on_loopback() -> None:
    """A page on this machine (loopback origin, loopback connection) is answered; the
    same origin arriving on a LAN address is another machine's page."""
    policy = RequestPolicy(["localhost", "192.0.2.7"], ["http://app.example"])
    assert policy.check(_request_on("127.0.0.1", "http://localhost:6274")) is None
    assert policy.check(_request_on("::1", "http://[::1]:6274")) is None
    assert policy.check(_request_on("::ffff:127.0.0.1", "http://127.0.0.1")) is None
    refused = policy.check(_request_on("192.0.2.7", "http://localhost:6274"))
    assert refused is not None and refused.code == FORBIDDEN_ORIGIN
    refused = policy.check(_request_on("127.0.0.1", "http://evil.example"))
    assert refused is not None and refused.code == FORBIDDEN_ORIGIN
    # Listed origins are answered on any address.
    assert policy.check(_request_on("192.0.2.7", "http://app.example/")) is None
