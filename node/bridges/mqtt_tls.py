"""TLS of the MQTT bridge's broker connections (`mqtts://`; docs/bridges.md "MQTT").

One client context serves both connections (the main MQTT 5 one through aiomqtt/paho,
and the telemetry one, the node's own subscriber on asyncio): TLS 1.2 or later, the
broker's certificate verified against `ca_file` (or the system's CAs) and its name
against the URL's host or `server_hostname`; with `cert_file` (and `key_file`) the node
presents a client certificate. Every problem with a file is a `ConfigError` naming its
key: the daemon builds the context once when it reads its config (exit 2), the bridge
builds it again, off the event loop, before its first connection.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from vsmcp.node.errors import ConfigError

# A CA bundle, a certificate chain or a key: far below this.
MAX_PEM_BYTES: Final = 1024 * 1024
_PEM_CERTIFICATE: Final = b"-----BEGIN CERTIFICATE-----"
_PEM_KEY: Final = re.compile(rb"-----BEGIN ([A-Z]+ )?PRIVATE KEY-----")
_PEM_ENCRYPTED: Final = (b"-----BEGIN ENCRYPTED PRIVATE KEY-----", b"Proc-Type: 4,ENCRYPTED")
_HOST_NAME: Final = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """What `[bridges.mqtt]` says about TLS ("": not set)."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_hostname: str = ""


class NamedServerContext(ssl.SSLContext):
    """A client context that expects the broker's certificate to name `server_name`,
    whatever address the connection was opened to (paho and asyncio pass the host they
    connect to as the server name; both wrap through these two methods)."""

    server_name: str = ""

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock,
            server_side,
            do_handshake_on_connect,
            suppress_ragged_eofs,
            self.server_name or server_hostname,
            session,
        )

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        return super().wrap_bio(
            incoming, outgoing, server_side, self.server_name or server_hostname, session
        )


def check_server_hostname(key: str, name: str) -> None:
    """A host name or an IP address; `ConfigError` naming `key` otherwise."""
    try:
        ipaddress.ip_address(name)
        return
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(key, f"{name!r} is not a host name or an IP address")


def client_context(files: TlsFiles, section: str) -> ssl.SSLContext:
    """The client context `files` describe; `ConfigError` naming `<section>.<key>` of the
    first file that is missing, unreadable, too large, not PEM, an encrypted or exposed
    key, or a key that is not the certificate's."""
    context: ssl.SSLContext
    if files.server_hostname:
        named = NamedServerContext(ssl.PROTOCOL_TLS_CLIENT)
        named.server_name = files.server_hostname
        context = named
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.ca_file:
        key = f"{section}.ca_file"
        pem = _read(key, files.ca_file)
        if _PEM_CERTIFICATE not in pem:
            raise ConfigError(key, f"{files.ca_file}: no PEM certificate in it")
        try:
            context.load_verify_locations(cadata=pem.decode("latin-1"))
        except (ssl.SSLError, ValueError) as e:
            raise ConfigError(key, f"{files.ca_file}: not a usable CA certificate: {e}") from e
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if files.cert_file:
        _load_client_certificate(context, files, section)
    return context


def _load_client_certificate(context: ssl.SSLContext, files: TlsFiles, section: str) -> None:
    cert_key = f"{section}.cert_file"
    cert = _read(cert_key, files.cert_file)
    if _PEM_CERTIFICATE not in cert:
        raise ConfigError(cert_key, f"{files.cert_file}: no PEM certificate in it")
    key_key, key_path = (
        (f"{section}.key_file", files.key_file) if files.key_file else (cert_key, files.cert_file)
    )
    key = _read(key_key, key_path) if files.key_file else cert
    if not _PEM_KEY.search(key):
        hint = "" if files.key_file else " (set key_file)"
        raise ConfigError(key_key, f"{key_path}: no PEM private key in it{hint}")
    if any(marker in key for marker in _PEM_ENCRYPTED):
        raise ConfigError(key_key, f"{key_path}: the key is encrypted; give it unencrypted")
    try:
        mode = stat.S_IMODE(Path(key_path).stat().st_mode)
    except OSError as e:  # gone since it was read
        raise ConfigError(key_key, f"cannot read {key_path}: {e.strerror or e}") from e
    if mode & 0o077:
        raise ConfigError(
            key_key, f"{key_path}: mode {mode:04o}, readable by others (chmod 600 it)"
        )

    def no_password() -> bytes:  # never an interactive prompt (checked above)
        raise ConfigError(key_key, f"{key_path}: the key is encrypted; give it unencrypted")

    try:
        context.load_cert_chain(files.cert_file, files.key_file or None, password=no_password)
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e):
            raise ConfigError(key_key, f"{key_path}: not the key of {files.cert_file}") from e
        raise ConfigError(cert_key, f"{files.cert_file}: not usable: {e}") from e
    except OSError as e:  # gone since it was read
        raise ConfigError(cert_key, f"cannot read {files.cert_file}: {e.strerror or e}") from e


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror or e}") from e
    if len(data) > MAX_PEM_BYTES:
        raise ConfigError(key, f"{path} is larger than {MAX_PEM_BYTES} bytes")
    return data
