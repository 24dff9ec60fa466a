"""node.http_policy: Host values parsed strictly; which hosts a node's config allows."""

from __future__ import annotations

from pathlib import Path

import pytest

from vsmcp.node.app.config import load_config
from vsmcp.node.app.node import Node
from vsmcp.node.http.policy import host_name, local_http_url


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
