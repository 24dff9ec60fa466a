"""CURVE keys derived from the node's Ed25519 identity.

ZeroMQ CURVE is X25519; we convert the Ed25519 key pair (libsodium's birational map) so
that the key a peer must prove it holds during the CURVE handshake is the one its node
identity signs with. The map is many-to-one on public keys (the Edwards x sign bit is
lost), so the transport reports the peer's *X25519* key; the layer above compares it with
`curve_public_key(envelope_sender_ed25519_key)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from nacl import bindings
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey
from zmq.utils import z85

from vsmcp.mesh._transport_errors import InvalidPeerKeyError

ED25519_SEED_BYTES = 32
ED25519_PUBLIC_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class CurveIdentity:
    ed25519_public: bytes
    curve_public: bytes
    curve_secret: bytes

    @property
    def curve_public_z85(self) -> bytes:
        return z85.encode(self.curve_public)

    @property
    def curve_secret_z85(self) -> bytes:
        return z85.encode(self.curve_secret)


def curve_identity(identity: bytes | SigningKey) -> CurveIdentity:
    """The node's CURVE key pair from its Ed25519 32-byte seed or nacl `SigningKey`."""
    seed = bytes(identity) if isinstance(identity, SigningKey) else identity
    if len(seed) != ED25519_SEED_BYTES:
        raise ValueError(f"Ed25519 seed must be {ED25519_SEED_BYTES} bytes, got {len(seed)}")
    ed_public, ed_secret = bindings.crypto_sign_seed_keypair(seed)
    return CurveIdentity(
        ed25519_public=ed_public,
        curve_public=bindings.crypto_sign_ed25519_pk_to_curve25519(ed_public),
        curve_secret=bindings.crypto_sign_ed25519_sk_to_curve25519(ed_secret),
    )


def curve_public_key(ed25519_public_key: bytes) -> bytes:
    """The 32-byte X25519 key a peer with this Ed25519 public key uses on the wire."""
    if len(ed25519_public_key) != ED25519_PUBLIC_KEY_BYTES:
        raise InvalidPeerKeyError(
            f"Ed25519 public key must be {ED25519_PUBLIC_KEY_BYTES} bytes, "
            f"got {len(ed25519_public_key)}"
        )
    try:
        return bytes(bindings.crypto_sign_ed25519_pk_to_curve25519(ed25519_public_key))
    except CryptoError as exc:
        raise InvalidPeerKeyError("not a valid Ed25519 public key") from exc
