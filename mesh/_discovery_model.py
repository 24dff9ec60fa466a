"""Candidate peers and the validation every discovery source applies to what it reads.

Pure code, no I/O. Discovery trusts nothing: a candidate is only an address worth
trying; the layer above admits a peer after verifying its signed hello and certificate.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

from vsmcp.mesh.errors import MeshError

CandidateSource = Literal["mdns", "seed", "gossip"]
CANDIDATE_SOURCES: tuple[CandidateSource, ...] = ("mdns", "seed", "gossip")

MAX_NODE_ID_CHARS = 128
MIN_FINGERPRINT_HEX_CHARS = 32
MAX_FINGERPRINT_HEX_CHARS = 128
MAX_HOSTNAME_CHARS = 253
MAX_PROTOCOL_VERSION = 0xFFFF
MAX_PORT = 0xFFFF

# A libp2p PeerID is base58 (alphanumeric); the extra punctuation keeps room for other
# id encodings while excluding anything that could confuse a log line or a DNS name.
_NODE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class DiscoveryError(MeshError):
    """Base of every discovery error; `reason` is a short machine-readable counter key."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class InvalidCandidateError(DiscoveryError):
    """A field of a candidate (from TXT, gossip or a constructor) failed validation."""


def validate_node_id(node_id: object) -> str:
    if not isinstance(node_id, str):
        raise InvalidCandidateError("node id must be a string", "bad_node_id")
    if not 0 < len(node_id) <= MAX_NODE_ID_CHARS:
        raise InvalidCandidateError(
            f"node id must be 1..{MAX_NODE_ID_CHARS} characters", "bad_node_id"
        )
    if not _NODE_ID_RE.fullmatch(node_id):
        raise InvalidCandidateError(
            "node id may contain only letters, digits, '.', '_' and '-'", "bad_node_id"
        )
    return node_id


def validate_fingerprint(fingerprint: object) -> str:
    """Returns the fingerprint as lowercase hex."""
    if not isinstance(fingerprint, str):
        raise InvalidCandidateError("fingerprint must be a string", "bad_fingerprint")
    n = len(fingerprint)
    if not MIN_FINGERPRINT_HEX_CHARS <= n <= MAX_FINGERPRINT_HEX_CHARS or n % 2:
        raise InvalidCandidateError(
            f"fingerprint must be an even number of hex digits, "
            f"{MIN_FINGERPRINT_HEX_CHARS}..{MAX_FINGERPRINT_HEX_CHARS}",
            "bad_fingerprint",
        )
    if not _HEX_RE.fullmatch(fingerprint):
        raise InvalidCandidateError("fingerprint must be hex", "bad_fingerprint")
    return fingerprint.lower()


def validate_port(port: object, what: str = "port") -> int:
    # bool is an int subclass; True must not become port 1.
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port <= MAX_PORT:
        raise InvalidCandidateError(f"{what} must be an integer 1..{MAX_PORT}", "bad_port")
    return port


def validate_protocol_version(version: object) -> int:
    if (
        not isinstance(version, int)
        or isinstance(version, bool)
        or not 0 <= version <= MAX_PROTOCOL_VERSION
    ):
        raise InvalidCandidateError(
            f"protocol version must be an integer 0..{MAX_PROTOCOL_VERSION}",
            "bad_protocol_version",
        )
    return version


def validate_host(host: object) -> str:
    """Returns an IP literal in canonical form or a lowercase DNS host name."""
    if not isinstance(host, str) or not host:
        raise InvalidCandidateError("host must be a non-empty string", "bad_host")
    if len(host) > MAX_HOSTNAME_CHARS:
        raise InvalidCandidateError(
            f"host must be at most {MAX_HOSTNAME_CHARS} characters", "bad_host"
        )
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        raise InvalidCandidateError(f"host {host!r} is neither an IP nor a DNS name", "bad_host")
    # An all-numeric dotted name is a malformed IPv4 literal, not a host name.
    if labels[-1].isdigit():
        raise InvalidCandidateError(f"host {host!r} is not a valid IP address", "bad_host")
    return name.lower()


def format_address(host: str, port: int) -> str:
    """`host:port`, with IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """An address where a mesh peer may be reached, and who claims to be there.

    For `mdns` and `gossip` candidates `node_id`, `cert_fingerprint` and
    `protocol_version` are always set. For `seed` candidates the identity is unknown
    until the hello: `cert_fingerprint` and `protocol_version` are None and `node_id`
    is None unless the seed was written `node_id@host:port`. None of these claims is
    trusted: the hello must prove them.

    Construction validates and normalises every field (IP literals canonical,
    fingerprint lowercase) and raises `InvalidCandidateError`.
    """

    node_id: str | None
    host: str
    mesh_port: int
    http_port: int | None = None
    cert_fingerprint: str | None = None
    protocol_version: int | None = None
    source: CandidateSource

    def __post_init__(self) -> None:
        if self.source not in CANDIDATE_SOURCES:
            raise InvalidCandidateError(f"unknown source {self.source!r}", "bad_source")
        identified = self.source != "seed"
        if identified and (
            self.node_id is None or self.cert_fingerprint is None or self.protocol_version is None
        ):
            raise InvalidCandidateError(
                f"{self.source} candidate needs node id, fingerprint and protocol version",
                "missing_identity",
            )
        if not identified and (
            self.cert_fingerprint is not None or self.protocol_version is not None
        ):
            raise InvalidCandidateError(
                "seed candidate cannot carry a fingerprint or protocol version", "bad_seed"
            )
        # The dataclass is frozen; normalising in place is the documented escape hatch.
        setattr_ = object.__setattr__
        if self.node_id is not None:
            validate_node_id(self.node_id)
        setattr_(self, "host", validate_host(self.host))
        validate_port(self.mesh_port, "mesh port")
        if self.http_port is not None:
            validate_port(self.http_port, "http port")
        if self.cert_fingerprint is not None:
            setattr_(self, "cert_fingerprint", validate_fingerprint(self.cert_fingerprint))
        if self.protocol_version is not None:
            validate_protocol_version(self.protocol_version)

    @property
    def address(self) -> str:
        """`host:mesh_port`, IPv6 in brackets."""
        return format_address(self.host, self.mesh_port)

    def same_claims(self, other: Candidate) -> bool:
        """True when both describe the same peer at the same place (source ignored)."""
        return (
            self.node_id == other.node_id
            and self.host == other.host
            and self.mesh_port == other.mesh_port
            and self.http_port == other.http_port
            and self.cert_fingerprint == other.cert_fingerprint
            and self.protocol_version == other.protocol_version
        )
