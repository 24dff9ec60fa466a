"""This node's identity and its place in the mesh: key pair, certificate, zone.

Outside dev mode a node needs a certificate signed by the mesh authority for its own
key; its zone comes from that certificate, never from its own config. In dev mode it
certifies itself (it is its own authority), and says so loudly.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from vsmcp.mesh.certs import (
    Certificate,
    SignedCertificate,
    ZoneOrder,
    certificate_from_pem,
    fingerprint,
    self_certify,
    verify_certificate,
)
from vsmcp.mesh.errors import CertificateError, MeshError
from vsmcp.mesh.identity import (
    NodeKey,
    load_or_create_key_file,
    node_id_from_public_key,
    public_key_from_node_id,
)
from vsmcp.node.app.config import Config
from vsmcp.node.errors import ConfigError, StartupError
from vsmcp.node.vsm.immune.model import IMMUNE_ROLE
from vsmcp.node.wasmdist.model import PUBLISHER_ROLE

log = logging.getLogger(__name__)

KEY_FILE_NAME = "node.key"
CERT_FILE_NAME = "node.cert"
DEV_CERT_LIFETIME_S = 365 * 24 * 3600
PUBLIC_KEY_BYTES = 32
# A `--dev` node's self-issued certificate carries every role there is.
DEV_ROLES = (IMMUNE_ROLE, PUBLISHER_ROLE)


class TrustError(StartupError):
    """The node's key or certificate is unusable."""


@dataclass(frozen=True)
class NodeIdentity:
    key: NodeKey
    signed_certificate: SignedCertificate
    certificate: Certificate
    authority_public_key: bytes
    zones: ZoneOrder
    dev: bool

    @property
    def node_id(self) -> str:
        return self.key.node_id

    @property
    def zone(self) -> str:
        return self.certificate.zone

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.signed_certificate)


def parse_public_key(text: str) -> bytes:
    """A public key given as 64 hex digits, base64 of 32 bytes, or a node id (12D3KooW…)."""
    text = text.strip()
    if len(text) == 2 * PUBLIC_KEY_BYTES:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    if text.startswith("12D3KooW"):
        try:
            return public_key_from_node_id(text)
        except MeshError as e:
            raise ValueError(f"not a valid node id: {e}") from e
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ValueError("expected 64 hex digits, base64 of 32 bytes, or a node id")
    return raw


def ensure_data_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError("node.data_dir", f"cannot create {path}: {e.strerror or e}") from e
    if not os.access(path, os.W_OK):
        raise ConfigError("node.data_dir", f"{path} is not writable")


def load_node_key(data_dir: Path) -> NodeKey:
    path = data_dir / KEY_FILE_NAME
    try:
        key, created = load_or_create_key_file(path)
    except MeshError as e:
        raise TrustError(str(e)) from e
    if created:
        log.info("created node key %s (node id %s)", path, key.node_id)
    return key


def load_identity(config: Config, *, now_s: int | None = None) -> NodeIdentity:
    data_dir = config.data_dir  # created (and locked) by the node before this runs
    key = load_node_key(data_dir)
    zones = ZoneOrder(config.trust.zones)
    if config.node.dev:
        signed = self_certify(key, config.trust.dev_zone, DEV_CERT_LIFETIME_S, roles=DEV_ROLES)
        authority = key.public_key
    else:
        authority = _configured_authority(config, key)
        signed = _read_certificate(config, key)
    try:
        certificate = verify_certificate(signed, authority, zones, now_s=now_s)
    except CertificateError as e:
        raise TrustError(f"node certificate rejected: {e}") from e
    if certificate.node_public_key != key.public_key:
        raise TrustError(
            f"the certificate was issued for another key, not for this node ({key.node_id})"
        )
    if config.node.dev:
        log.warning(
            "DEV MODE: node %s certified itself in zone %r; it trusts only itself. "
            "Never run --dev in a real mesh.",
            key.node_id,
            certificate.zone,
        )
    return NodeIdentity(key, signed, certificate, authority, zones, config.node.dev)


def _configured_authority(config: Config, key: NodeKey) -> bytes:
    text = config.trust.authority_public_key
    if not text:
        raise ConfigError(
            "trust.authority_public_key",
            "not set: give the mesh authority's public key, or run with --dev on a single "
            f"machine (this node's id is {key.node_id})",
        )
    try:
        return parse_public_key(text)
    except ValueError as e:
        raise ConfigError("trust.authority_public_key", str(e)) from e


def certificate_path(config: Config) -> Path:
    configured = config.trust.certificate_file
    return Path(configured).expanduser() if configured else config.data_dir / CERT_FILE_NAME


def _read_certificate(config: Config, key: NodeKey) -> SignedCertificate:
    path = certificate_path(config)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TrustError(
            f"no node certificate at {path}. Ask the mesh authority for one:\n"
            f"  vsmcp keys issue --authority-key AUTHORITY.key --node {key.node_id} "
            f"--zone ZONE --out {path}"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise TrustError(f"cannot read node certificate {path}: {e}") from e
    try:
        return certificate_from_pem(text)
    except CertificateError as e:
        raise TrustError(f"node certificate {path} is unreadable: {e}") from e


def renewed_identity(
    current: NodeIdentity, signed: SignedCertificate, *, now_s: int | None = None
) -> NodeIdentity:
    """`current` with a renewed certificate, or `TrustError` saying why not.

    The new certificate must verify against the same authority, be for this node's key,
    keep its zone, depth and roles, and, for a child VSM, be issued by the same parent:
    a certificate its parent did not issue is refused (the child keeps the one it has).
    """
    try:
        certificate = verify_certificate(
            signed, current.authority_public_key, current.zones, now_s=now_s
        )
    except CertificateError as e:
        raise TrustError(f"renewed certificate rejected: {e}") from e
    old = current.certificate
    if certificate.node_public_key != current.key.public_key:
        raise TrustError(
            f"renewed certificate rejected: issued for another key, not for this node "
            f"({current.node_id})"
        )
    if old.depth > 0 and certificate.issuer_public_key != old.issuer_public_key:
        raise TrustError(
            "renewed certificate rejected: issued by "
            f"{node_id_from_public_key(certificate.issuer_public_key)}, not by this node's "
            f"parent {node_id_from_public_key(old.issuer_public_key)}"
        )
    changed = [
        name
        for name, before, after in (
            ("zone", old.zone, certificate.zone),
            ("depth", old.depth, certificate.depth),
            ("roles", sorted(old.roles), sorted(certificate.roles)),
        )
        if before != after
    ]
    if changed:
        raise TrustError(
            f"renewed certificate rejected: its {', '.join(changed)} differ from the running "
            "node's (restart the node to take them)"
        )
    if certificate.issued_at_s < old.issued_at_s:
        # An older certificate put back (a restored backup, a replayed file): no rollback.
        raise TrustError(
            f"renewed certificate rejected: issued at {certificate.issued_at_s}, before the "
            f"running node's ({old.issued_at_s})"
        )
    return NodeIdentity(
        current.key, signed, certificate, current.authority_public_key, current.zones, current.dev
    )
