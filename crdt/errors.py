"""Errors raised by the replicated-state layer. Every one derives from `CrdtError`."""

from __future__ import annotations


class CrdtError(Exception):
    """Base class of every error the crdt layer raises."""

    reason: str = "crdt_error"


class ValueOutOfRange(CrdtError):
    """An integer outside ±(2**53 - 1) or a non-finite float tried to enter the CRDT."""

    reason = "value_out_of_range"


class InvalidValue(CrdtError):
    """A value of a type, size or shape the CRDT layer does not accept."""

    reason = "invalid_value"


class MetadataTooLarge(InvalidValue):
    """A registry entry's tool metadata over its cap (`tool_metadata.MAX_TOOL_METADATA_BYTES`)."""

    reason = "metadata_too_large"


class MessageTooLarge(CrdtError):
    """A sync message or snapshot exceeds its size cap; it was not decoded."""

    reason = "message_too_large"


class MalformedMessage(CrdtError):
    """A sync message or snapshot that does not decode to a known, valid message."""

    reason = "malformed_message"


class InvalidUpdate(CrdtError):
    """pycrdt refused a Yjs update (garbage, truncated)."""

    reason = "invalid_update"


class UnknownDocument(CrdtError):
    """A sync message names a document this replica does not hold."""

    reason = "unknown_document"


class NotAuthorized(CrdtError):
    """A local write whose signer may not write that record (wrong key, not an issuer)."""

    reason = "not_authorized"


class StaleRecord(CrdtError):
    """A local write that does not supersede what the replica already holds."""

    reason = "stale_record"


class SnapshotInvalid(CrdtError):
    """A snapshot whose signature, signer or content does not check out."""

    reason = "snapshot_invalid"


class OverCap(CrdtError):
    """A policy that would take its issuer over its cap on policies held per issuer."""

    reason = "over_cap"
