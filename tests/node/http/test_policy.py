"""node.http_policy: Host values parsed strictly; which hosts a node's config allows."""

from __future__ import annotations

from pathlib import Path

import pytest

from vsmcp.node.app.config import load_config
from vsmcp.node.app.node import Node
from vsmcp.node.http.policy import host_name


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


def test_loopback_names_are_allowed_wherever_the_node_listens(tmp_path: Path) -> None:
    def allowed(**overrides: object) -> list[str] | None:
        config = load_config(environ={}, overrides={"node.data_dir": str(tmp_path), **overrides})
        return Node(config)._allowed_hosts()

    assert allowed() == ["localhost", "127.0.0.1", "::1", "127.0.0.1"]
    assert allowed(**{"http.host": "0.0.0.0"}) is None  # nothing configured: any Host
    on_lan = allowed(**{"http.host": "0.0.0.0", "mcp.allowed_hosts": ["node1.lan"]})
    assert on_lan is not None
    assert {"localhost", "127.0.0.1", "::1", "node1.lan"} <= set(on_lan)
