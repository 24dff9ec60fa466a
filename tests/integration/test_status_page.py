"""The live status page against real `vsmcpd` processes.

- Headless Chromium (Debian's, driven by playwright-core from tests/integration/browser)
  on node A of a 3-node mesh: the page shows the three nodes; a tool added on B appears;
  an immune block (a public caller probing a restricted tool at A) appears with its
  note; C killed with SIGKILL turns dead on the page — all without a reload. Keyboard:
  Tab reaches the page's buttons. Screenshots at 1280×800 and 390×844 (written to docs/
  with VSMCP_WRITE_SCREENSHOTS=1).
- `/api/stream` (SSE): the VSM view pushed to every client; a client that never reads
  is dropped once its queue is full (the node's `dropped` counter moves, its buffers
  stay bounded); past `http.max_page_clients` every client is refused with 503 naming
  the cap, while the admitted ones keep receiving events.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import (
    REPO_ROOT,
    NodeProcess,
    call_tool,
    counters,
    wait_mesh_states,
)
from tests.integration.test_mesh import DETECT_TIMEOUT_S
from tests.polling import wait_for
from tests.skips import require_browser
from vsmcp.node.http.status_page import CLIENT_QUEUE_FRAMES, HUB_CAPACITY, MAX_FRAME_BYTES

pytestmark = pytest.mark.integration

DRIVER_DIR = REPO_ROOT / "tests" / "integration" / "browser"
DOCS = REPO_ROOT / "docs"
ATTACKER = "attacker-token-0123456789"
OPERATOR = "operator-token-0123456789"
ADMIN_CONTROLS = "document.querySelectorAll('[data-admin-action]').length"
# What Chromium logs for the refused token's `GET /api/admin` (the page shows it too).
REFUSED_FETCH = "Failed to load resource: the server responded with a status of 403 (Forbidden)"
DENIALS = 4
ZONE_DENIED = -32010
DESKTOP = (1280, 800)
PHONE = (390, 844)
PAGE_WAIT_S = 30.0
ATTACKER_ORIGIN = "http:attacker"
# What sticks out past a phone's width (to name it when the layout breaks).
WIDER_THAN_THE_SCREEN = (
    "[...document.querySelectorAll('body *')]"
    ".filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)"
    ".slice(0, 5).map(e => `${e.tagName}#${e.id}.${e.className}`)"
)


def _config(extra: str = "") -> str:
    return f"""
[mesh]
preset = "local"
mdns = false
[node]
debug_api = true
[tools]
entry_points = false
[vsm.immune]
block_ttl_s = 120
denial_count = {DENIALS}
denial_window_s = 30
[[mcp.tokens]]
name = "attacker"
token = "{ATTACKER}"
zone = "public"
[[mcp.tokens]]
name = "operator"
token = "{OPERATOR}"
zone = "restricted"
{extra}
"""


class Browser:
    """tests/integration/browser/drive.mjs: one JSON command a line, one answer a line."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["node", str(DRIVER_DIR / "drive.mjs")],
            cwd=DRIVER_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self._answer(60.0) == "ready"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put("")

    def _answer(self, timeout_s: float) -> Any:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"the browser driver did not answer in {timeout_s} s") from None
        if not line:
            assert self.proc.stderr is not None
            raise AssertionError(f"the browser driver ended:\n{self.proc.stderr.read()}")
        answer = json.loads(line)
        if not answer["ok"]:
            raise AssertionError(f"browser: {answer['error']}")
        return answer["value"]

    def run(self, op: str, *, timeout_s: float = 60.0, **args: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        return self._answer(timeout_s)

    def wait(self, js: str, timeout_s: float, what: str) -> Any:
        try:
            limit_ms = int(timeout_s * 1000)
            return self.run("wait", js=js, timeout_ms=limit_ms, timeout_s=timeout_s + 30)
        except AssertionError as e:
            raise AssertionError(f"page: {what}: {e}") from e

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write('{"op": "close"}\n')
            self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    base = tmp_path_factory.mktemp("page")
    config = base / "node.toml"
    config.write_text(_config())
    started: list[NodeProcess] = []
    failed = True
    try:
        first = NodeProcess(base / "a", "--config", str(config)).start()
        started.append(first)
        seed = f"127.0.0.1:{first.mesh_port}"
        for name in "bc":
            node = NodeProcess(base / name, "--config", str(config), "--seed", seed)
            started.append(node.start(wait=False))
        for node in started:
            node.wait_ready()
        wait_mesh_states(started, {n.node_id: "alive" for n in started}, timeout_s=60)
        assert first.post("/api/debug/tools?name=secret.echo&zone=restricted") == 200
        failed = False
        yield started
    finally:
        for node in started:
            node.stop()
            if failed:
                print(f"--- log of {node.data_dir} ---\n{node.log_text()[-6000:]}")


def _row(node_id: str) -> str:
    return f"document.querySelector('#nodes tr[data-node-id=\"{node_id}\"]')"


def _row_state(node_id: str) -> str:
    return f"({_row(node_id)} || {{}}).dataset?.state"


def _screenshot(browser: Browser, name: str, size: tuple[int, int], out: Path) -> Path:
    browser.run("viewport", width=size[0], height=size[1])
    path = out / name
    browser.run("screenshot", path=str(path))
    assert path.read_bytes().startswith(b"\x89PNG"), path
    if os.environ.get("VSMCP_WRITE_SCREENSHOTS") == "1":
        shutil.copy(path, DOCS / name)
    return path


def _use_token(browser: Browser, token: str) -> None:
    """Type `token` into the page's admin field and press its button, as an operator."""
    browser.run(
        "eval",
        js=f"document.getElementById('admin-token').value = {json.dumps(token)};"
        "document.getElementById('admin-use').click(); 1",
    )


def _revoke_the_block_from_the_page(browser: Browser, a: NodeProcess, b: NodeProcess) -> None:
    """Read-only without an admin token (no controls; the node refuses the action); with
    the operator's token the block is revoked from the page and leaves it live."""
    assert browser.run("eval", js=ADMIN_CONTROLS) == 0
    block = next(
        p for p in a.get_json("/api/policies")["policies"] if p.get("target") == ATTACKER_ORIGIN
    )
    revoke = {"issuer": block["issuer"], "id": block["id"]}
    assert a.post_json("/api/policies/revoke", revoke)[0] == 401
    assert a.post_json("/api/policies/revoke", revoke, token=ATTACKER)[0] == 403
    # B holds the block too, but neither issued it nor is A's authority: it may not sign.
    status, answer = b.post_json("/api/policies/revoke", revoke, token=OPERATOR)
    assert status == 403 and "vsmcp policies revoke --key" in answer["error"], answer

    admin_state = "document.getElementById('admin-state').dataset.state"
    _use_token(browser, ATTACKER)  # a token below http.admin_zone
    browser.wait(f"{admin_state} === 'refused'", PAGE_WAIT_S, "the public token refused")
    assert browser.run("eval", js=ADMIN_CONTROLS) == 0

    _use_token(browser, OPERATOR)
    browser.wait(f"{admin_state} === 'admin'", PAGE_WAIT_S, "the operator's token taken")
    button = (
        'document.querySelector(\'#policy-list [data-admin-action="revoke-policy"]'
        f'[data-policy-key="{block["key"]}"]\')'
    )
    browser.wait(f"!!{button}", PAGE_WAIT_S, "a revoke button on the block")
    stored = browser.run("eval", js="sessionStorage.getItem('vsmcp.admin-token')")
    assert stored == OPERATOR
    assert OPERATOR not in browser.run("eval", js="location.href")
    browser.run("eval", js=f"{button}.click(); 1")  # arms it ("Confirm: Revoke")
    browser.run("eval", js=f"{button}.click(); 1")  # confirms
    browser.wait(
        f"!document.querySelector('#policy-list [data-policy=\"{block['id']}\"]')",
        PAGE_WAIT_S,
        "the revoked block gone from the page",
    )
    message = browser.run("eval", js="document.getElementById('admin-message').textContent")
    assert message == f"revoked {block['id']}"

    def held(node: NodeProcess) -> bool:
        return any(p["key"] == block["key"] for p in node.get_json("/api/policies")["policies"])

    assert not held(a)
    wait_for(lambda: not held(b), timeout_s=PAGE_WAIT_S, what="the revocation replicated to B")


def test_the_page_shows_the_mesh_live_without_a_reload(
    three: list[NodeProcess], tmp_path: Path
) -> None:
    require_browser(str(DRIVER_DIR))
    a, b, c = three
    browser = Browser()
    try:
        browser.run("goto", url=a.url + "/", width=DESKTOP[0], height=DESKTOP[1])
        # Set once: a reload (or navigation) would lose it.
        browser.run("eval", js="window.__sameDocument = 1")
        all_alive = " && ".join(f"{_row_state(n.node_id)} === 'alive'" for n in three)
        browser.wait(all_alive, PAGE_WAIT_S, "the three nodes alive")
        graph = browser.run("eval", js="document.querySelectorAll('[data-graph-node]').length")
        assert graph == 3
        live = "document.getElementById('live').dataset.state === 'live'"
        browser.wait(live, PAGE_WAIT_S, "the stream live")

        # A tool added on B appears, with B as its provider.
        assert b.post("/api/debug/tools?name=page.probe&zone=public") == 200
        row = browser.wait(
            "(document.querySelector('[data-tool=\"page.probe\"]') || {}).textContent",
            PAGE_WAIT_S,
            "the tool added on B",
        )
        assert b.node_id[-8:] in row

        # An immune block appears with its note.
        for _ in range(DENIALS):
            reply = call_tool(a, ATTACKER, "secret.echo")
            assert reply["error"]["code"] == ZONE_DENIED, reply
        note = browser.wait(
            "[...document.querySelectorAll('#policy-list [data-policy][data-state=\"enforced\"]')]"
            ".map(p => p.textContent).find(t => t.includes('http:attacker'))",
            PAGE_WAIT_S,
            "the immune block of http:attacker",
        )
        assert "pattern:immune-zone-denials" in note and "blocked caller http:attacker" in note

        # Keyboard: Tab from the top reaches the skip link, then the page's buttons.
        focused = [browser.run("press", key="Tab") for _ in range(4)]
        assert focused[0]["text"] == "Skip to content", focused
        assert any(f["id"] == "refresh" for f in focused), focused

        _screenshot(browser, "status-page-desktop.png", DESKTOP, tmp_path)
        _screenshot(browser, "status-page-phone.png", PHONE, tmp_path)
        # Phone width: one column, nothing wider than the screen.
        width = browser.run("eval", js="document.documentElement.scrollWidth")
        wide = browser.run("eval", js=WIDER_THAN_THE_SCREEN)
        assert width <= PHONE[0], (width, wide)
        browser.run("viewport", width=DESKTOP[0], height=DESKTOP[1])

        # Admin actions: none without a token; with the operator's, the block is revoked.
        _revoke_the_block_from_the_page(browser, a, b)

        # C killed: the page turns it dead within the detection time, without a reload.
        c.kill()
        c.wait_exit()
        browser.wait(f"{_row_state(c.node_id)} === 'dead'", DETECT_TIMEOUT_S, "C dead")
        badge = browser.run("eval", js=f"{_row(c.node_id)}.querySelector('.badge').textContent")
        assert badge == "dead"  # the state in text, not only in colour
        assert browser.run("eval", js="window.__sameDocument") == 1
        assert [e for e in browser.run("errors") if e != REFUSED_FETCH] == []
    finally:
        browser.close()


# -- the stream without a browser ---------------------------------------------------------


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[NodeProcess]:
    config = tmp_path / "node.toml"
    config.write_text(_config("[http]\nmax_page_clients = 2\n"))
    node = NodeProcess(tmp_path / "n", "--config", str(config)).start()
    try:
        yield node
    finally:
        node.stop()


def _open_stream(node: NodeProcess, rcvbuf: int | None = None) -> socket.socket:
    """A raw `GET /api/stream`; its answer is not read here."""
    url = urllib.parse.urlsplit(node.url)
    sock = socket.socket()
    if rcvbuf is not None:  # before connecting: the window the client offers stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((url.hostname, url.port))
    sock.sendall(f"GET /api/stream HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
    return sock


def _page(node: NodeProcess) -> dict[str, Any]:
    page: dict[str, Any] = node.get_json("/api/events")["page"]
    return page


def _read_until(sock: socket.socket, marker: bytes, limit: int = 1 << 20) -> bytes:
    sock.settimeout(30)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, f"stream closed before {marker!r}: {data[-500:]!r}"
        data += chunk
        assert len(data) < limit
    return data


def test_a_page_client_that_never_reads_is_dropped_and_its_memory_freed(
    capped: NodeProcess,
) -> None:
    reader = _open_stream(capped)
    assert b"200 OK" in _read_until(reader, b"event: hello")
    stalled = _open_stream(capped, rcvbuf=4096)
    wait_for(lambda: _page(capped)["clients"] == 2, timeout_s=10, what="two page clients")

    conn = http.client.HTTPConnection(urllib.parse.urlsplit(capped.url).netloc, timeout=10)

    def churn(i: int) -> None:
        # Each add and remove is a registry event, and so a frame to every client.
        for method in ("POST", "DELETE"):
            conn.request(method, f"/api/debug/tools?name=churn.{i}&zone=public")
            assert conn.getresponse().read()

    def dropped() -> bool:
        for i in range(50):
            churn(i)
        reader.recv(1 << 20)  # the reading client keeps reading
        return bool(_page(capped)["dropped"] >= 1)

    wait_for(dropped, timeout_s=120, what="the client that never reads dropped")
    page = _page(capped)
    assert page["clients"] == 1  # the reading one stays
    assert page["subscriber"]["buffered"] <= HUB_CAPACITY
    assert counters(capped, "vsmcp_page_clients")["dropped"] == 1
    # The dropped client's connection was aborted: it reads to the end, bounded (what
    # the kernel and the node held for it: its socket buffers and at most the queue).
    stalled.settimeout(30)
    received = 0
    deadline = time.monotonic() + 60
    try:
        while chunk := stalled.recv(1 << 20):
            received += len(chunk)
            assert time.monotonic() < deadline, "the dropped client's connection stays open"
    except ConnectionResetError:
        pass  # aborted with data still unsent: what it held was thrown away
    assert received < CLIENT_QUEUE_FRAMES * MAX_FRAME_BYTES + (8 << 20)
    stalled.close()
    # The reading client still gets events.
    churn(999)
    assert b"churn.999" in _read_until(reader, b"churn.999")
    reader.close()
    conn.close()


def test_page_clients_past_the_cap_are_refused_with_503_naming_it(capped: NodeProcess) -> None:
    admitted = [_open_stream(capped) for _ in range(2)]
    for sock in admitted:
        assert b"200 OK" in _read_until(sock, b"event: hello")
    conn = http.client.HTTPConnection(urllib.parse.urlsplit(capped.url).netloc, timeout=10)
    refusals = 1000
    for _ in range(refusals):
        conn.request("GET", "/api/stream")
        response = conn.getresponse()
        body = json.loads(response.read())
        assert response.status == 503, body
        assert response.getheader("Retry-After") == "5"
        assert "max_page_clients" in body["error"] and body["max_page_clients"] == 2
    conn.close()
    assert counters(capped, "vsmcp_page_clients")["refused"] == refusals
    page = _page(capped)
    assert page["clients"] == 2 and page["refused"] == refusals
    # The admitted clients are still served.
    assert capped.post("/api/debug/tools?name=after.cap&zone=public") == 200
    for sock in admitted:
        assert b"after.cap" in _read_until(sock, b"after.cap")
    # The VSM view comes on the stream (every VSM_PUSH_S), computed once for both.
    pushed = _read_until(admitted[0], b"event: vsm")
    vsm = json.loads(pushed.split(b"event: vsm\ndata: ", 1)[1].split(b"\n", 1)[0])
    assert {"s1", "s5", "viability"} <= set(vsm)
    for sock in admitted:
        sock.close()
    # A closed client frees its place.
    wait_for(lambda: _page(capped)["clients"] == 0, timeout_s=10, what="clients closed")
    probe = _open_stream(capped)
    assert b"200 OK" in _read_until(probe, b"event: hello")
    probe.close()


def _admin_status(node: NodeProcess, token: str | None) -> tuple[int, Any]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(node.url + "/api/admin", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return int(r.status), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), json.loads(e.read())


def test_the_admin_actions_want_a_token_of_the_admin_zone(tmp_path: Path) -> None:
    # Even with loopback callers given the highest zone, the page's actions want a token.
    config = tmp_path / "node.toml"
    config.write_text(_config('[mcp]\nloopback_zone = "restricted"\n'))
    node = NodeProcess(tmp_path / "n", "--config", str(config)).start()
    try:
        status, answer = _admin_status(node, None)
        assert status == 401 and "http.admin_zone" in answer["error"], answer
        status, answer = _admin_status(node, ATTACKER)
        assert status == 403 and "http.admin_zone" in answer["error"], answer
        assert _admin_status(node, "not-a-token")[0] == 401
        assert _admin_status(node, OPERATOR) == (
            200,
            {"caller": "http:operator", "actions": ["revoke-policy", "stop-child"]},
        )
        owner = (node.data_dir / "stdio.token").read_text().strip()
        assert _admin_status(node, owner)[1]["caller"] == "data-dir-owner"
        unknown = {"issuer": node.node_id, "id": "origin:http:nobody"}
        status, answer = node.post_json("/api/policies/revoke", unknown, token=OPERATOR)
        assert status == 404 and "origin:http:nobody" in answer["error"], answer
        assert node.post_json("/api/policies/revoke", {"id": 3}, token=OPERATOR)[0] == 400
    finally:
        node.stop()
