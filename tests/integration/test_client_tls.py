"""aiohttp's default HTTPS client still verifies certificates in a node, though an idle
node does not read the CA bundle (node/client_tls.py): a plugin tool of a real `vsmcpd`
fetching from local TLS servers is refused by one with a self-signed certificate and
answered by one whose certificate comes from a CA the node trusts (`SSL_CERT_FILE`)."""

from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.harness import NodeProcess, call_tool
from tests.skips import skip_or_fail

pytestmark = pytest.mark.integration

TOKEN = "client-tls-test-token"
CONFIG = f"""
[tools]
entry_points = false
[[tools.plugins]]
name = "fetch_https"
target = "tests.integration.plugin_tools:fetch_https"
[[mcp.tokens]]
name = "tester"
token = "{TOKEN}"
zone = "public"
"""
EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        skip_or_fail("needs the openssl command to make certificates")
    d = tmp_path_factory.mktemp("certs")
    days = ["-days", "2"]
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE"]
    ca_ext += ["-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    _openssl("req", "-x509", *EC_KEY, *days, "-subj", "/CN=vsmcp test CA", *ca_ext,
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))  # fmt: skip
    _openssl("req", *EC_KEY, "-subj", "/CN=127.0.0.1",
             "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"))  # fmt: skip
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.pem"),
             "-CAkey", str(d / "ca.key"), "-CAcreateserial", *days,
             "-extfile", str(d / "server.ext"), "-out", str(d / "server.pem"))  # fmt: skip
    _openssl("req", "-x509", *EC_KEY, *days, "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(d / "self.key"), "-out", str(d / "self.pem"))  # fmt: skip
    return d


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def _tls_server(cert: Path, key: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="tls-server", daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[NodeProcess]:
    base = tmp_path_factory.mktemp("client-tls")
    (base / "vsmcp.toml").write_text(CONFIG)
    (base / "no-ca-dir").mkdir()
    env = {"SSL_CERT_FILE": str(certs / "ca.pem"), "SSL_CERT_DIR": str(base / "no-ca-dir")}
    started = NodeProcess(
        base / "n", "--config", str(base / "vsmcp.toml"), "--no-mdns", env=env
    ).start()
    yield started
    started.stop()


def _fetch(node: NodeProcess, url: str) -> dict[str, object]:
    reply = call_tool(node, TOKEN, "fetch_https", {"url": url})
    structured: dict[str, object] = reply["result"]["structuredContent"]
    return structured


def test_a_server_certified_by_a_trusted_ca_is_accepted(node: NodeProcess, certs: Path) -> None:
    with _tls_server(certs / "server.pem", certs / "server.key") as url:
        assert _fetch(node, url) == {"status": 200}


def test_a_self_signed_server_is_refused(node: NodeProcess, certs: Path) -> None:
    with _tls_server(certs / "self.pem", certs / "self.key") as url:
        answer = _fetch(node, url)
    assert "status" not in answer
    assert "certificate verify failed" in str(answer["refused"]), answer
