"""Zones and node certificates (SPEC §3).

A mesh is defined by its authority key. The authority signs a node certificate (node key,
zone, roles, validity); a node may delegate a certificate to its child VSM (same or
narrower zone, depth + 1, expiry within the parent's, roles a subset of the parent's).

A `SignedCertificate` keeps the exact body bytes that were signed; verification never
re-encodes. The signature covers `CERT_SIGNING_CONTEXT || body`: node keys also sign
envelopes, and the domain prefix makes sure no envelope can ever pass for a certificate
(or the reverse).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Iterable, Sequence
from typing import Final

import msgspec
import nacl.bindings
import nacl.exceptions

from vsmcp.mesh.errors import (
    CertificateChainError,
    CertificateDepthError,
    CertificateExpiredError,
    CertificateNotYetValidError,
    CertificateSignatureError,
    ForeignAuthorityError,
    MalformedCertificateError,
    UnknownZoneError,
)
from vsmcp.mesh.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, NodeKey

DEFAULT_ZONES: Final = ("public", "ops", "restricted")
CERT_SIGNING_CONTEXT: Final = b"vsmcp node certificate v1\x00"
MAX_CERTIFICATE_BYTES: Final = 16 * 1024
MAX_PEM_CHARS: Final = 32 * 1024
CLOCK_SKEW_S: Final = 60
DEFAULT_MAX_DEPTH: Final = 4
MAX_ROLES: Final = 64
PEM_BEGIN: Final = "-----BEGIN VSMCP NODE CERTIFICATE-----"
PEM_END: Final = "-----END VSMCP NODE CERTIFICATE-----"


class ZoneOrder:
    """Zones from least to most privileged, e.g. public < ops < restricted."""

    __slots__ = ("_ranks", "_zones")

    def __init__(self, zones: Iterable[str] = DEFAULT_ZONES) -> None:
        self._zones = tuple(zones)
        if not self._zones or len(set(self._zones)) != len(self._zones):
            raise ValueError("zones must be a non-empty list of distinct names")
        self._ranks = {zone: rank for rank, zone in enumerate(self._zones)}

    @property
    def zones(self) -> tuple[str, ...]:
        return self._zones

    def __contains__(self, zone: object) -> bool:
        return zone in self._ranks

    def rank(self, zone: str) -> int:
        try:
            return self._ranks[zone]
        except KeyError:
            raise UnknownZoneError(f"unknown zone {zone!r}") from None

    def allows(self, caller_zone: str, tool_zone: str) -> bool:
        """A caller may use tools at or below its own zone."""
        return self.rank(tool_zone) <= self.rank(caller_zone)


class SignedCertificate(msgspec.Struct, array_like=True, frozen=True):
    """`body` is the exact msgpack encoding of a `Certificate`; `signature` signs
    `CERT_SIGNING_CONTEXT || body`."""

    body: bytes
    signature: bytes


class Certificate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # forbid_unknown_fields: a field this version does not understand may restrict the
    # certificate; ignoring it would widen what the holder may do, so fail closed.
    node_public_key: bytes
    zone: str
    roles: tuple[str, ...]
    issued_at_s: int
    expires_at_s: int
    depth: int
    issuer_public_key: bytes
    parent: SignedCertificate | None = None


_ENCODER: Final = msgspec.msgpack.Encoder()
_SIGNED_DECODER: Final = msgspec.msgpack.Decoder(SignedCertificate)
_BODY_DECODER: Final = msgspec.msgpack.Decoder(Certificate)


def _now_s() -> int:
    return int(time.time())


def _decode_body(signed: SignedCertificate) -> Certificate:
    if not isinstance(signed.body, bytes) or len(signed.body) > MAX_CERTIFICATE_BYTES:
        raise MalformedCertificateError("certificate body missing or too large")
    try:
        cert = _BODY_DECODER.decode(signed.body)
    except msgspec.DecodeError as exc:
        raise MalformedCertificateError(f"undecodable certificate body: {exc}") from None
    if len(cert.node_public_key) != PUBLIC_KEY_BYTES:
        raise MalformedCertificateError("node public key is not 32 bytes")
    if len(cert.issuer_public_key) != PUBLIC_KEY_BYTES:
        raise MalformedCertificateError("issuer public key is not 32 bytes")
    if len(cert.roles) > MAX_ROLES:
        raise MalformedCertificateError("too many roles")
    if cert.expires_at_s <= cert.issued_at_s:
        raise MalformedCertificateError("certificate expires before it is issued")
    if (cert.parent is None) != (cert.depth == 0):
        raise CertificateChainError("depth 0 if and only if there is no parent")
    return cert


def _check_signature(signed: SignedCertificate, public_key: bytes) -> None:
    if len(signed.signature) != SIGNATURE_BYTES:
        raise CertificateSignatureError("signature is not 64 bytes")
    try:
        nacl.bindings.crypto_sign_open(
            signed.signature + CERT_SIGNING_CONTEXT + signed.body, public_key
        )
    except nacl.exceptions.CryptoError:
        raise CertificateSignatureError("certificate signature does not verify") from None


def peek_certificate(signed: SignedCertificate) -> Certificate:
    """Decode the body WITHOUT verifying anything (for display and routing hints only)."""
    return _decode_body(signed)


def issue_certificate(
    issuer: NodeKey,
    node_public_key: bytes,
    zone: str,
    roles: Sequence[str],
    lifetime_s: int,
    *,
    now_s: int | None = None,
    parent: SignedCertificate | None = None,
    zones: ZoneOrder | None = None,
) -> SignedCertificate:
    """Sign a certificate for `node_public_key`.

    Without `parent`, `issuer` is the mesh authority (depth 0). With `parent`, `issuer` is
    the node holding `parent` and this is a delegated certificate for its child: depth is
    parent depth + 1, the zone must not be wider than the parent's, roles must be a subset
    of the parent's, and the expiry is clamped to the parent's.
    """
    if len(node_public_key) != PUBLIC_KEY_BYTES:
        raise ValueError("node_public_key must be 32 bytes")
    if lifetime_s <= 0:
        raise ValueError("lifetime_s must be positive")
    zones = zones or ZoneOrder()
    zones.rank(zone)
    issued = _now_s() if now_s is None else now_s
    expires = issued + lifetime_s
    depth = 0
    if parent is not None:
        parent_cert = _decode_body(parent)
        if parent_cert.node_public_key != issuer.public_key:
            raise CertificateChainError("only the holder of the parent certificate may delegate")
        if zones.rank(zone) > zones.rank(parent_cert.zone):
            raise CertificateChainError(f"zone {zone!r} is wider than the parent's")
        if not set(roles) <= set(parent_cert.roles):
            raise CertificateChainError("delegated roles must be a subset of the parent's")
        expires = min(expires, parent_cert.expires_at_s)
        if expires <= issued:
            raise CertificateChainError("the parent certificate has already expired")
        depth = parent_cert.depth + 1
    cert = Certificate(
        node_public_key=node_public_key,
        zone=zone,
        roles=tuple(roles),
        issued_at_s=issued,
        expires_at_s=expires,
        depth=depth,
        issuer_public_key=issuer.public_key,
        parent=parent,
    )
    body = _ENCODER.encode(cert)
    if len(body) > MAX_CERTIFICATE_BYTES:
        raise CertificateChainError("certificate chain too large")
    return SignedCertificate(body=body, signature=issuer.sign_detached(CERT_SIGNING_CONTEXT + body))


def self_certify(
    key: NodeKey,
    zone: str,
    lifetime_s: int,
    *,
    roles: Sequence[str] = (),
    now_s: int | None = None,
    zones: ZoneOrder | None = None,
) -> SignedCertificate:
    """A certificate where the node is its own authority (`--dev` mode only)."""
    return issue_certificate(key, key.public_key, zone, roles, lifetime_s, now_s=now_s, zones=zones)


def verify_certificate(
    signed: SignedCertificate,
    authority_public_key: bytes,
    zones: ZoneOrder,
    *,
    now_s: int | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Certificate:
    """Return the certificate if it (and its whole chain) is valid now; else raise a
    `CertificateError` subclass whose `reason` says why."""
    if len(authority_public_key) != PUBLIC_KEY_BYTES:
        raise ValueError("authority_public_key must be 32 bytes")
    now = _now_s() if now_s is None else now_s
    return _verify(signed, authority_public_key, zones, now, max_depth, max_depth)


def _verify(
    signed: SignedCertificate,
    authority_public_key: bytes,
    zones: ZoneOrder,
    now: int,
    max_depth: int,
    levels_left: int,
) -> Certificate:
    cert = _decode_body(signed)
    # levels_left bounds the recursion whatever the depth fields claim.
    if cert.depth > max_depth or levels_left < 0:
        raise CertificateDepthError(f"delegation depth {cert.depth} exceeds {max_depth}")
    if cert.parent is None:
        if cert.issuer_public_key != authority_public_key:
            raise ForeignAuthorityError("certificate is not issued by this mesh's authority")
        _check_signature(signed, authority_public_key)
    else:
        parent = _verify(cert.parent, authority_public_key, zones, now, max_depth, levels_left - 1)
        if cert.issuer_public_key != parent.node_public_key:
            raise CertificateChainError("issuer is not the holder of the parent certificate")
        _check_signature(signed, parent.node_public_key)
        if cert.depth != parent.depth + 1:
            raise CertificateChainError("depth is not the parent's depth + 1")
        if zones.rank(cert.zone) > zones.rank(parent.zone):
            raise CertificateChainError("zone is wider than the parent's")
        if cert.expires_at_s > parent.expires_at_s:
            raise CertificateChainError("expires after the parent")
        if not set(cert.roles) <= set(parent.roles):
            raise CertificateChainError("roles are not a subset of the parent's")
    zones.rank(cert.zone)
    if now + CLOCK_SKEW_S < cert.issued_at_s:
        raise CertificateNotYetValidError(f"certificate valid from {cert.issued_at_s}")
    if now - CLOCK_SKEW_S >= cert.expires_at_s:
        raise CertificateExpiredError(f"certificate expired at {cert.expires_at_s}")
    return cert


# --- encodings ----------------------------------------------------------------------------


def encode_certificate(signed: SignedCertificate) -> bytes:
    return _ENCODER.encode(signed)


def decode_certificate(data: bytes) -> SignedCertificate:
    """Parse (not verify) an encoded certificate; size-capped."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedCertificateError("certificate is not bytes")
    if len(data) > MAX_CERTIFICATE_BYTES + 128:
        raise MalformedCertificateError("certificate too large")
    try:
        signed = _SIGNED_DECODER.decode(data)
    except msgspec.DecodeError as exc:
        raise MalformedCertificateError(f"undecodable certificate: {exc}") from None
    _decode_body(signed)  # structure only; the signature is checked by verify_certificate
    return signed


def fingerprint(signed: SignedCertificate) -> str:
    """Hex SHA-256 of the encoded certificate."""
    return hashlib.sha256(encode_certificate(signed)).hexdigest()


def certificate_to_pem(signed: SignedCertificate) -> str:
    b64 = base64.b64encode(encode_certificate(signed)).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return "\n".join([PEM_BEGIN, *lines, PEM_END]) + "\n"


def certificate_from_pem(text: str) -> SignedCertificate:
    if not isinstance(text, str) or len(text) > MAX_PEM_CHARS:
        raise MalformedCertificateError("certificate text missing or too large")
    start = text.find(PEM_BEGIN)
    end = text.find(PEM_END, start + 1)
    if start < 0 or end < 0:
        raise MalformedCertificateError("no VSMCP NODE CERTIFICATE block")
    b64 = "".join(text[start + len(PEM_BEGIN) : end].split())
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedCertificateError("certificate block is not base64") from None
    return decode_certificate(data)
