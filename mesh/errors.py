"""Errors raised by the mesh layer. Every one derives from `MeshError`."""

from __future__ import annotations


class MeshError(Exception):
    """Base class of every error the mesh layer raises."""


# --- identity -------------------------------------------------------------------------


class InvalidNodeIdError(MeshError):
    """A node id string is not a well-formed Ed25519 libp2p PeerID."""

    reason = "invalid_node_id"


class KeyFileError(MeshError):
    """A node key file cannot be used."""

    reason = "key_file"


class KeyFilePermissionError(KeyFileError):
    """The key file is readable or writable by group or other."""

    reason = "key_file_permissions"


class CorruptKeyFileError(KeyFileError):
    """The key file exists but its content is not a valid node key."""

    reason = "key_file_corrupt"


# --- certificates ---------------------------------------------------------------------


class CertificateError(MeshError):
    """A node certificate is not acceptable. `reason` says why (counted, logged)."""

    reason = "certificate"


class CertificateSignatureError(CertificateError):
    reason = "bad_signature"


class CertificateExpiredError(CertificateError):
    reason = "expired"


class CertificateNotYetValidError(CertificateError):
    reason = "not_yet_valid"


class UnknownZoneError(CertificateError):
    """A zone name that the local `ZoneOrder` does not know."""

    reason = "unknown_zone"


class ForeignAuthorityError(CertificateError):
    """The root of the chain is signed by a key that is not our mesh authority."""

    reason = "foreign_authority"


class CertificateChainError(CertificateError):
    """A delegated certificate does not follow from its parent."""

    reason = "bad_chain"


class CertificateDepthError(CertificateChainError):
    reason = "depth_exceeded"


class MalformedCertificateError(CertificateError):
    reason = "malformed"


# --- envelope and replay guard --------------------------------------------------------


class EnvelopeError(MeshError):
    """An incoming envelope was rejected. `reason` is the counter label."""

    reason = "envelope"


class OversizeEnvelopeError(EnvelopeError):
    reason = "oversize"


class MalformedEnvelopeError(EnvelopeError):
    reason = "malformed"


class BadVersionError(EnvelopeError):
    reason = "bad_version"


class BadSignatureError(EnvelopeError):
    reason = "bad_signature"


class WrongRecipientError(EnvelopeError):
    reason = "recipient"


class ReplayGuardError(EnvelopeError):
    """Rejected by the replay guard (freshness or sequence window)."""

    reason = "replay_guard"


class StaleMessageError(ReplayGuardError):
    """Timestamp older than now - max skew."""

    reason = "stale"


class FutureMessageError(ReplayGuardError):
    """Timestamp newer than now + max skew."""

    reason = "future"


class ReplayedMessageError(ReplayGuardError):
    """This (sender, seq) was already accepted."""

    reason = "replay"


class TooOldSequenceError(ReplayGuardError):
    """Sequence number below the sender's window: cannot tell whether it was seen."""

    reason = "too_old"


class BelowReplayFloorError(ReplayGuardError):
    """Sender's state was evicted or lost (flood, crash) and the timestamp is at or
    below the floor under which its earlier messages may lie: refused, never risked."""

    reason = "below_floor"


class ReplayStateError(MeshError):
    """A replay guard dump/checkpoint cannot be restored."""

    reason = "replay_state"
