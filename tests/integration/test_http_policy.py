"""One Host/Origin policy on every route of a real `vsmcpd` (DNS rebinding, foreign
pages), and what it answers instead of tracebacks for oversized request heads."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp.shared.exceptions import MCPError

from tests.integration.harness import HTTP_TIMEOUT_S, NodeProcess
from tests.integration.sdk_client import MODES, sdk_client
from vsmcp.node.mcp.protocol import FORBIDDEN_ORIGIN

pytestmark = pytest.mark.integration

ROUTES = ("/", "/api/status", "/api/peers", "/api/tools", "/healthz", "/metrics", "/mcp")
MCP_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": "2026-07-28",
    "Mcp-Method": "server/discover",
}
DISCOVER = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "server/discover",
        "params": {
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        },
    }
)


def _request(
    node: NodeProcess, path: str, headers: dict[str, str]
) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", int(node.info["http_port"]), HTTP_TIMEOUT_S)
    try:
        if path == "/mcp":
            conn.request("POST", path, body=DISCOVER, headers={**MCP_HEADERS, **headers})
        else:
            conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read(), dict(response.headers)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    started = NodeProcess(tmp_path_factory.mktemp("policy") / "n").start()
    yield started
    started.stop()


@pytest.mark.parametrize("path", ROUTES)
def test_every_route_answers_its_own_host_only(node: NodeProcess, path: str) -> None:
    port = node.info["http_port"]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        status, _, _ = _request(node, path, {"Host": host})
        assert status == 200, (path, host)
    for host in ("evil.example", f"evil.example:{port}", "[::1]evil.example", "[::1]:1x"):
        status, body, _ = _request(node, path, {"Host": host})
        assert status == 421, (path, host)
        answer = json.loads(body)
        error = answer["error"] if path == "/mcp" else answer
        assert "Misdirected" in (error["message"] if path == "/mcp" else error["error"])


@pytest.mark.parametrize("path", ROUTES)
def test_every_route_refuses_a_foreign_origin(node: NodeProcess, path: str) -> None:
    status, body, _ = _request(node, path, {"Origin": "http://evil.example"})
    assert status == 403, path
    assert "evil.example" in body.decode()


@pytest.mark.parametrize("path", ROUTES)
def test_every_route_answers_a_page_served_on_this_machine(node: NodeProcess, path: str) -> None:
    """A browser client on the same machine (a page at http://localhost:<any port>)
    reaches a loopback node; a look-alike origin does not."""
    for origin in ("http://localhost:6274", "http://127.0.0.1:3000", "http://[::1]:5173"):
        status, _, _ = _request(node, path, {"Origin": origin})
        assert status == 200, (path, origin)
    status, _, _ = _request(node, path, {"Origin": "http://localhost.evil.example"})
    assert status == 403, path


@pytest.mark.parametrize("mode", MODES)
async def test_sdk_client_from_a_localhost_page_is_served(node: NodeProcess, mode: str) -> None:
    local_page = {"Origin": f"http://localhost:{node.info['http_port']}"}
    async with sdk_client(f"{node.url}/mcp", mode, local_page) as client:
        echoed = await client.call_tool("echo", {"text": "from a local page"})
        assert echoed.content[0].text == "from a local page"  # type: ignore[union-attr]
    # The SDK raises the JSON-RPC error of the 403 answer inside its task groups.
    with pytest.RaisesGroup(
        pytest.RaisesGroup(pytest.RaisesExc(MCPError, check=_forbidden_origin))
    ):
        foreign = {"Origin": "http://evil.example"}
        async with sdk_client(f"{node.url}/mcp", mode, foreign) as client:
            await client.call_tool("echo", {"text": "x"})


def _forbidden_origin(error: MCPError) -> bool:
    return error.error.code == FORBIDDEN_ORIGIN and "evil.example" in error.error.message


def test_an_oversized_header_gets_431_and_one_log_line(node: NodeProcess) -> None:
    before = node.log_text()
    for _ in range(5):
        status, _, _ = _request(node, "/healthz", {"X-Big": "a" * 9000})
        assert status == 431
    status, _, _ = _request(node, "/healthz", {})
    assert status == 200
    added = node.log_text()[len(before) :]
    assert "Traceback" not in added
    assert added.count("431") <= 1, added  # throttled: one line per interval at most


def test_a_request_head_is_capped_in_all(node: NodeProcess) -> None:
    """Each line within aiohttp's 8 KiB, 13 of them: 104 KiB of head that never ends is
    refused with 431 (instead of held until the head timeout), while a 40 KiB head is
    served."""
    status, _, _ = _request(node, "/healthz", {f"X-{i}": "a" * 8000 for i in range(5)})
    assert status == 200
    with socket.create_connection(("127.0.0.1", int(node.info["http_port"])), 10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            for i in range(13):
                sock.sendall(b"X-%d: %s\r\n" % (i, b"a" * 8000))
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]


def _request_via(
    address: str, port: int, host: str, path: str = "/api/status"
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(address, port, HTTP_TIMEOUT_S)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_listening_on_every_address_answers_only_its_own_hosts(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """Before: with http.host 0.0.0.0 and no mcp.allowed_hosts, any Host was answered,
    so a page rebinding its name to the node's LAN address read it."""
    node = NodeProcess(tmp_path / "n", "--http-host", "0.0.0.0").start()
    nodes.append(node)
    port = int(node.info["http_port"])
    assert node.url == f"http://127.0.0.1:{port}"  # where local tools reach it
    status, body = _request_via("127.0.0.1", port, f"evil.example:{port}")
    assert status == 421, body
    assert "Host 'evil.example:" in json.loads(body)["error"]
    assert _request_via("127.0.0.1", port, f"localhost:{port}")[0] == 200
    # The address the client dialled is the node's own: answered. Another is not.
    assert _request_via("127.0.0.2", port, f"127.0.0.2:{port}")[0] == 200
    assert _request_via("127.0.0.1", port, f"127.0.0.2:{port}")[0] == 421
