"""Errors raised by the mesh transport (re-exported by `mesh.transport`)."""

from __future__ import annotations

from vsmcp.mesh.errors import MeshError


class TransportError(MeshError):
    """Base of every transport error; `reason` is the short machine label we count by."""

    reason: str = "transport"

    def __init__(self, message: str = "", *, reason: str | None = None) -> None:
        super().__init__(message or self.reason)
        if reason is not None:
            self.reason = reason


class TransportClosedError(TransportError):
    """The transport is not running (not started yet, or stopped while a call was waiting)."""

    reason = "closed"


class RequestTimeoutError(TransportError, TimeoutError):
    """No response arrived within the request's `timeout_s`; a CANCEL was sent to the peer."""

    reason = "timeout"


class PeerUnreachableError(TransportError):
    """The peer was forgotten (its connection closed) while a request to it was waiting."""

    reason = "unreachable"


class QueueFullError(TransportError):
    """The request frame was dropped by the bounded outgoing queue before it was sent."""

    reason = "queue_full"


class FrameTooLargeError(TransportError):
    """A payload exceeds the transport's size cap (`TransportConfig.max_payload_bytes`)."""

    reason = "oversize"


class InvalidPeerKeyError(TransportError):
    """A peer public key is not a valid 32-byte Ed25519 point."""

    reason = "bad_peer_key"


class RemoteError(TransportError):
    """The peer answered a request with an error instead of a response.

    `reason` is the peer's machine label: "handler_error" (its handler raised; `detail`
    is the exception's class name), "no_handler", "busy" (its handler limit was reached)
    or "response_too_large".
    """

    reason = "remote"

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(
            f"remote error: {reason}" + (f" ({detail})" if detail else ""), reason=reason
        )
        self.detail = detail


class RequestRefused(TransportError):
    """Raised by a request handler to refuse a request on purpose (not a failure): the
    caller gets `RemoteError(reason, detail)`, and nothing is logged above debug."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"refused: {reason}" + (f" ({detail})" if detail else ""), reason=reason)
        self.detail = detail
