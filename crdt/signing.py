"""Signing is injected (the node owns its key); verification uses PyNaCl directly."""

from __future__ import annotations

from typing import Protocol

import nacl.exceptions
import nacl.signing

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
MAX_CACHED_VERIFY_KEYS = 4096


class Signer(Protocol):
    """Anything holding an Ed25519 key: the node's identity, an authority, a test key."""

    @property
    def public_key(self) -> bytes: ...

    def sign_detached(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `message`."""
        ...


class Ed25519Signer:
    """A `Signer` over a PyNaCl signing key (tests, benchmarks, tools)."""

    def __init__(self, seed: bytes | None = None) -> None:
        self._key = nacl.signing.SigningKey(seed) if seed else nacl.signing.SigningKey.generate()
        self._public_key = bytes(self._key.verify_key)

    @property
    def public_key(self) -> bytes:
        return self._public_key

    def sign_detached(self, message: bytes) -> bytes:
        return bytes(self._key.sign(message).signature)


_verify_keys: dict[bytes, nacl.signing.VerifyKey] = {}


def verify_detached(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when `signature` is `public_key`'s Ed25519 signature over `message`."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    verify_key = _verify_keys.get(public_key)
    if verify_key is None:
        try:
            verify_key = nacl.signing.VerifyKey(public_key)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            return False
        if len(_verify_keys) >= MAX_CACHED_VERIFY_KEYS:
            _verify_keys.pop(next(iter(_verify_keys)))
        _verify_keys[public_key] = verify_key
    try:
        verify_key.verify(message, signature)
    except nacl.exceptions.BadSignatureError:
        return False
    return True
