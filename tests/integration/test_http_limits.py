"""A real `vsmcpd` under slow-loris and connection floods: bounded connections, read
timeouts, and `/healthz` and tool calls that keep answering."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import HTTP_TIMEOUT_S, NodeProcess
from tests.polling import wait_for
from tests.skips import skip_or_fail

pytestmark = pytest.mark.integration

HALF_SENT = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
SHORT_TIMEOUTS = {"VSMCP_HTTP_HEAD_TIMEOUT_S": "1.5", "VSMCP_HTTP_BODY_IDLE_TIMEOUT_S": "1.5"}
CLOSE_DEADLINE_S = 30.0
MODERN = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}


def _connect(port: int, source: str, stack: ExitStack) -> socket.socket:
    try:
        sock = socket.create_connection(
            ("127.0.0.1", port), timeout=HTTP_TIMEOUT_S, source_address=(source, 0)
        )
    except OSError as e:
        if source != "127.0.0.1" and "assign" in str(e):
            skip_or_fail(f"cannot bind a client socket to {source}: {e}")
        raise
    return stack.enter_context(sock)


def _half_sent(port: int, source: str, count: int, stack: ExitStack) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = _connect(port, source, stack)
        with contextlib.suppress(OSError):  # refused already (and reset): a read tells
            sock.sendall(HALF_SENT)
        socks.append(sock)
    return socks


def _closed_by_server(sock: socket.socket) -> bytes | None:
    """What the server sent before closing `sock`, or None while it stays open."""
    sock.settimeout(0.05)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received or b"<closed>"


def _wait_all_closed(socks: list[socket.socket], what: str) -> list[bytes]:
    answers: dict[int, bytes] = {}

    def all_closed() -> bool:
        for i, sock in enumerate(socks):
            if i not in answers and (answer := _closed_by_server(sock)) is not None:
                answers[i] = answer
        return len(answers) == len(socks)

    wait_for(all_closed, timeout_s=CLOSE_DEADLINE_S, what=what)
    return [answers[i] for i in range(len(socks))]


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    sock.settimeout(HTTP_TIMEOUT_S)
    received = b""
    while marker not in received:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r}: {received!r}"
        received += chunk
    return received


def _listen(port: int, source: str, stack: ExitStack) -> bytes:
    """Open a `subscriptions/listen` stream; what the node answered first."""
    listen = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "subscriptions/listen",
            "params": {"notifications": {"toolsListChanged": True}, "_meta": META},
        }
    ).encode()
    head = (
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Accept: application/json, text/event-stream\r\n"
        f"MCP-Protocol-Version: {MODERN}\r\nMcp-Method: subscriptions/listen\r\n"
        f"Content-Length: {len(listen)}\r\n\r\n"
    ).encode()
    sock = _connect(port, source, stack)
    sock.sendall(head + listen)
    return _read_until(sock, b"\r\n\r\n")


def _call_echo(node: NodeProcess, text: str) -> Any:
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": text}, "_meta": META},
    }
    request = urllib.request.Request(
        node.url + "/mcp",
        data=json.dumps(message).encode(),
        headers={
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": "tools/call",
            "Mcp-Name": "echo",
        },
    )
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
        return json.loads(response.read())["result"]["content"][0]["text"]


def _started(
    tmp_path: Path, nodes: list[NodeProcess], env: dict[str, str]
) -> tuple[NodeProcess, int]:
    """A node started with `env`, and its HTTP port."""
    node = NodeProcess(tmp_path / "n", env=env).start()
    nodes.append(node)
    return node, int(node.info["http_port"])


def _fill_with_listens(port: int, count: int, stack: ExitStack) -> None:
    """`count` subscription streams from 127.0.0.2: connections busy being served."""
    for _ in range(count):
        assert _listen(port, "127.0.0.2", stack).startswith(b"HTTP/1.1 200")


def _metric(node: NodeProcess, name: str, label: str) -> float:
    _, body, _ = node.get("/metrics")
    found = re.search(rf'^{name}\{{[^}}]*="{label}"\}} (\S+)$', body.decode(), re.M)
    assert found, f"{name}{{{label}}} not in /metrics"
    return float(found.group(1))


def test_slow_loris_from_one_address_is_capped_and_timed_out(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    env = {**SHORT_TIMEOUTS, "VSMCP_HTTP_MAX_CONNECTIONS_PER_CLIENT": "12"}
    node = NodeProcess(tmp_path / "n", env=env).start()
    nodes.append(node)
    port = int(node.info["http_port"])
    with ExitStack() as stack:
        socks = _half_sent(port, "127.0.0.2", 40, stack)
        # The bound that matters: 12 of that client's at most (plus this scrape's own).
        assert _metric(node, "vsmcp_http_connections", "open") <= 12 + 1
        # Another client (127.0.0.1) is served meanwhile.
        assert node.get_json("/healthz")["status"] == "ok"
        assert _call_echo(node, "still here") == "still here"
        answers = _wait_all_closed(socks, "every half-sent connection closed by the node")
    # At most 12 were open at once (closed when their head timed out), the rest refused
    # at once, with a 503 unless the refusal was lost to a reset (the client had sent
    # already). How many exactly depends on how many timed out while the 40 opened.
    refused_count = _metric(node, "vsmcp_http_refused_total", "per_client")
    assert 0 < refused_count <= 40 - 12
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
    assert all(b'"limit":"per_client"' in a for a in refused)
    assert len(refused) <= refused_count
    assert _metric(node, "vsmcp_http_connections", "open") <= 1  # the scrape's own


def test_a_flood_from_many_addresses_stays_within_the_cap(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """More half-sent connections than the node has descriptors for: connections that
    send nothing give way to new ones, so /healthz and calls keep answering."""

    class LowFdNode(NodeProcess):
        def command(self) -> list[str]:
            return ["prlimit", "--nofile=256:256", "--", *super().command()]

    env = {
        **SHORT_TIMEOUTS,
        "VSMCP_HTTP_HEAD_TIMEOUT_S": "60",  # the flood outlives it: only the cap helps
        "VSMCP_HTTP_MAX_CONNECTIONS": "64",
        "VSMCP_HTTP_MAX_CONNECTIONS_PER_CLIENT": "64",
    }
    node = LowFdNode(tmp_path / "n", env=env).start()
    nodes.append(node)
    port = int(node.info["http_port"])
    with ExitStack() as stack:
        for i in range(2, 12):
            _half_sent(port, f"127.0.0.{i}", 30, stack)
        assert node.get_json("/healthz")["status"] == "ok"
        assert _call_echo(node, "flooded") == "flooded"
        assert _metric(node, "vsmcp_http_connections", "open") <= 64 + 16
        assert _metric(node, "vsmcp_http_refused_total", "evicted_waiting") > 0


def test_an_idle_request_body_closes_the_connection(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    node = NodeProcess(tmp_path / "n", env=SHORT_TIMEOUTS).start()
    nodes.append(node)
    port = int(node.info["http_port"])
    with ExitStack() as stack:
        sock = _connect(port, "127.0.0.1", stack)
        sock.sendall(
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Accept: application/json, text/event-stream\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"jsonrpc": "2.0", '
        )
        _wait_all_closed([sock], "the connection with an idle body closed")
    assert _metric(node, "vsmcp_http_refused_total", "body_idle") == 1
    # A body that keeps coming is read whole, however large (within the body cap), and
    # it is not mistaken for a request head that went on too long.
    with pytest.raises(urllib.error.HTTPError) as too_long:
        _call_echo(node, "x" * 900_000)  # read whole, and refused by the tool's schema
    error = json.loads(too_long.value.read())["error"]
    assert (too_long.value.code, error["code"]) == (400, -32602)
    assert "is too long" in error["message"] and len(error["message"]) < 500
    assert _metric(node, "vsmcp_http_refused_total", "head_too_large") == 0


def test_healthz_gets_through_when_every_connection_is_busy(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """Four open subscription streams fill a cap of four: /healthz is still answered (on
    a reserved connection), a tool call is told to come back."""
    env = {"VSMCP_HTTP_MAX_CONNECTIONS": "4", "VSMCP_HTTP_MAX_CONNECTIONS_PER_CLIENT": "4"}
    node, port = _started(tmp_path, nodes, env)
    with ExitStack() as stack:
        _fill_with_listens(port, 4, stack)
        assert node.get_json("/healthz")["status"] == "ok"
        with pytest.raises(urllib.error.HTTPError) as refused:
            _call_echo(node, "no room")
        assert refused.value.code == 503
        assert refused.value.headers["Retry-After"] == "1"


def test_mcp_max_listeners_is_the_limit_it_says(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    env = {"VSMCP_MCP_MAX_LISTENERS": "2", "VSMCP_MCP_MAX_LISTENERS_PER_CALLER": "2"}
    node = NodeProcess(tmp_path / "n", env=env).start()
    nodes.append(node)
    port = int(node.info["http_port"])
    with ExitStack() as stack:
        for source in ("127.0.0.1", "127.0.0.2"):
            assert _listen(port, source, stack).startswith(b"HTTP/1.1 200")
        refused = _listen(port, "127.0.0.3", stack)
        assert refused.startswith(b"HTTP/1.1 503"), refused


def test_a_request_refused_by_policy_is_still_bounded_by_the_connection_limits(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """With the cap full, a connection past it serves one operational request and
    closes, whether the Host policy answers it or not; other paths get a 503 first."""
    env = {
        "VSMCP_HTTP_MAX_CONNECTIONS": "4",
        "VSMCP_HTTP_MAX_CONNECTIONS_PER_CLIENT": "8",
        # Only the limits may close the connections here, not an idle timer.
        "VSMCP_HTTP_HEAD_TIMEOUT_S": "300",
    }
    node, port = _started(tmp_path, nodes, env)
    with ExitStack() as stack:
        _fill_with_listens(port, 4, stack)
        # Before: the policy answered first, so a reserved connection stayed open for
        # as many refused requests as a client cared to send, and none was counted.
        reserved = _connect(port, "127.0.0.3", stack)
        reserved.sendall(b"GET /healthz HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        head = _read_until(reserved, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 421"), head
        assert b"Connection: close" in head, head
        _wait_all_closed([reserved], "the reserved connection closed")
        elsewhere = _connect(port, "127.0.0.3", stack)
        elsewhere.sendall(b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        head = _read_until(elsewhere, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), head
        _wait_all_closed([elsewhere], "the other reserved connection closed")
    assert _metric(node, "vsmcp_http_refused_total", "reserved_only") == 1
