"""`[bridges.mqtt]` with `mqtts://`: the TLS keys checked when the config is read, each
problem naming its key (missing, unreadable or non-PEM files, a key without its
certificate or not its own, an encrypted or exposed key, TLS keys on a plain url), and
the context they give: the broker's chain and name verified, the name overridable, and
a TLS handshake with a real server (stdlib, on loopback) that succeeds or fails as it
should."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.tls_ca import Issued, TestCa
from vsmcp.node.bridges.mqtt_config import MqttSection, broker_of, redacted
from vsmcp.node.bridges.mqtt_tls import NamedServerContext
from vsmcp.node.errors import ConfigError


def _section(**values: Any) -> MqttSection:
    return msgspec.convert(values, MqttSection)


@pytest.fixture
def ca(tmp_path: Path) -> TestCa:
    return TestCa.create(tmp_path, "ca")


@pytest.fixture
def client(ca: TestCa, tmp_path: Path) -> Issued:
    return ca.issue(tmp_path, "client", client=True)


def _refused(key: str, **values: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        _section(**values)
    assert caught.value.key == f"bridges.mqtt.{key}", caught.value
    return caught.value.reason


def test_mqtts_url_defaults_to_port_8883_and_keeps_credentials() -> None:
    broker = broker_of("mqtts://edge%40site:s%3Acret@broker.example")
    assert (broker.host, broker.port, broker.tls) == ("broker.example", 8883, True)
    assert (broker.username, broker.password) == ("edge@site", "s:cret")
    assert broker_of("mqtt://h").tls is False


def test_a_bad_url_is_echoed_without_its_password() -> None:
    reason = _refused("url", url="http://edge:hunter2@broker:1883")
    assert "hunter2" not in reason
    assert "edge:***@broker" in reason
    assert "hunter2" not in _refused("url", url="mqtt://edge:hunter2@broker:0")


@pytest.mark.parametrize(
    "url",
    [
        "mqtts://user:hun/ter2@host:8883",
        "mqtts://user:hun#ter2@host:8883",
        "mqtts://user:hun?ter2@host:8883",
        "mqtt://user:42/ter2@host",
    ],
)
def test_a_password_with_unencoded_reserved_characters_is_not_echoed(url: str) -> None:
    # Not a URL, or one that splits inside the password: no piece of it is shown.
    reason = _refused("url", url=url)
    assert "hun" not in reason and "ter2" not in reason and "42" not in reason, reason
    assert "user:***@host" in reason
    assert redacted("mqtt://user:s3@cr@host") == "mqtt://user:***@host"


def test_a_good_tls_config_gives_a_verifying_context(ca: TestCa, client: Issued) -> None:
    section = _section(
        url="mqtts://127.0.0.1:8883",
        ca_file=str(ca.cert),
        cert_file=str(client.cert),
        key_file=str(client.key),
    )
    context = section.tls_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.cert_store_stats()["x509_ca"] == 1  # only the configured CA
    assert not isinstance(context, NamedServerContext)
    assert _section(url="mqtt://127.0.0.1").tls_context() is None
    # No ca_file: the system's CAs.
    system = _section(url="mqtts://broker.example").tls_context()
    assert system is not None and system.verify_mode == ssl.CERT_REQUIRED


def test_the_key_may_be_in_the_certificate_file(ca: TestCa, client: Issued, tmp_path: Path) -> None:
    both = tmp_path / "both.pem"
    both.touch(mode=0o600)
    both.write_bytes(client.cert.read_bytes() + client.key.read_bytes())
    section = _section(url="mqtts://h", ca_file=str(ca.cert), cert_file=str(both))
    assert section.tls_context() is not None


@pytest.mark.parametrize("key", ["ca_file", "cert_file", "key_file", "server_hostname"])
def test_tls_keys_on_a_plain_url_are_refused(key: str, ca: TestCa) -> None:
    reason = _refused(key, url="mqtt://edge:hunter2@h", **{key: str(ca.cert)})
    assert "mqtts://" in reason
    assert "hunter2" not in reason


def test_file_problems_name_their_key(ca: TestCa, client: Issued, tmp_path: Path) -> None:
    url = "mqtts://127.0.0.1"
    missing = str(tmp_path / "nope.pem")
    assert "No such file" in _refused("ca_file", url=url, ca_file=missing)
    assert "directory" in _refused("ca_file", url=url, ca_file=str(tmp_path))
    assert "no PEM certificate" in _refused("ca_file", url=url, ca_file=str(client.key))
    assert "No such file" in _refused("cert_file", url=url, cert_file=missing)
    assert "needs cert_file" in _refused("key_file", url=url, key_file=str(client.key))
    assert "No such file" in _refused(
        "key_file", url=url, cert_file=str(client.cert), key_file=missing
    )
    # A certificate without its key, and no key_file.
    assert "set key_file" in _refused("cert_file", url=url, cert_file=str(client.cert))
    # Another certificate's key.
    other = ca.issue(tmp_path, "other", client=True)
    assert "not the key of" in _refused(
        "key_file", url=url, cert_file=str(client.cert), key_file=str(other.key)
    )
    huge = tmp_path / "huge.pem"
    huge.write_bytes(b"-----BEGIN CERTIFICATE-----\n" + b"A" * (1024 * 1024 + 1))
    assert "larger than" in _refused("ca_file", url=url, ca_file=str(huge))
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    assert "not a usable CA" in _refused("ca_file", url=url, ca_file=str(garbage))


def test_an_exposed_or_encrypted_key_is_refused(client: Issued, tmp_path: Path) -> None:
    url, cert = "mqtts://127.0.0.1", str(client.cert)
    client.key.chmod(0o640)
    assert "readable by others" in _refused(
        "key_file", url=url, cert_file=cert, key_file=str(client.key)
    )
    client.key.chmod(0o600)
    encrypted = tmp_path / "encrypted.key"
    encrypted.touch(mode=0o600)
    encrypted.write_bytes(
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n"
    )
    assert "encrypted" in _refused("key_file", url=url, cert_file=cert, key_file=str(encrypted))


@pytest.mark.parametrize("name", ["", " ", "a..b", "-a", "a/b", "x" * 254])
def test_a_bad_server_hostname_is_refused(name: str) -> None:
    if name:
        _refused("server_hostname", url="mqtts://127.0.0.1", server_hostname=name)
    else:  # "" is the default: the url's host
        assert _section(url="mqtts://127.0.0.1", server_hostname=name).server_hostname == ""


async def _handshake(context: ssl.SSLContext, port: int) -> str:
    """Connect to the loopback server and return the outcome."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    except ssl.SSLCertVerificationError as e:
        return f"refused: {e.verify_message}"
    writer.close()
    return "ok"


async def test_the_broker_is_verified_by_chain_and_name(ca: TestCa, tmp_path: Path) -> None:
    """A stdlib TLS server on loopback whose certificate names only broker.test: refused
    by address (the name does not match) and by a context trusting another CA; accepted
    with server_hostname = broker.test."""
    server = ca.issue(tmp_path, "server", dns=("broker.test",))
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(server.cert, server.key)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context)
    port = listener.sockets[0].getsockname()[1]
    try:
        by_address = _section(url=f"mqtts://127.0.0.1:{port}", ca_file=str(ca.cert))
        outcome = await _handshake(_context(by_address), port)
        assert outcome.startswith("refused") and "mismatch" in outcome, outcome
        named = _section(
            url=f"mqtts://127.0.0.1:{port}", ca_file=str(ca.cert), server_hostname="broker.test"
        )
        assert await _handshake(_context(named), port) == "ok"
        other = TestCa.create(tmp_path, "other")
        wrong_ca = _section(
            url=f"mqtts://127.0.0.1:{port}", ca_file=str(other.cert), server_hostname="broker.test"
        )
        outcome = await _handshake(_context(wrong_ca), port)
        assert outcome.startswith("refused") and "issuer" in outcome, outcome
    finally:
        listener.close()
        await listener.wait_closed()


def _context(section: MqttSection) -> ssl.SSLContext:
    context = section.tls_context()
    assert context is not None
    return context
