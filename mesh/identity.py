"""Node identity: Ed25519 key pair, libp2p-compatible node id, key files.

The node id is the libp2p PeerID of the Ed25519 public key: the protobuf
`PublicKey{Type: Ed25519, Data: pk}` wrapped in an identity multihash, base58btc.
Every such id starts with "12D3KooW".
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import json
import os
import secrets
import stat
from pathlib import Path

import base58
import nacl.bindings
import nacl.exceptions

from vsmcp.mesh.errors import (
    CorruptKeyFileError,
    InvalidNodeIdError,
    KeyFileError,
    KeyFilePermissionError,
)

PUBLIC_KEY_BYTES = 32
SEED_BYTES = 32
SIGNATURE_BYTES = 64

# identity multihash (code 0x00, length 0x24=36) of protobuf PublicKey{Type=1, Data=<32 bytes>}
_PEER_ID_PREFIX = b"\x00\x24\x08\x01\x12\x20"
NODE_ID_CACHE_ENTRIES = 8192
_PEER_ID_BYTES = len(_PEER_ID_PREFIX) + PUBLIC_KEY_BYTES
# base58 of 38 bytes is at most 52 characters; anything longer is rejected before decoding
# (base58 decoding is quadratic in the input length).
_MAX_NODE_ID_CHARS = 60

KEY_FILE_TYPE = "ed25519"
KEY_FILE_VERSION = 1
MAX_KEY_FILE_BYTES = 4096


class NodeKey:
    """An Ed25519 key pair. Signing uses the raw libsodium secret key (seed || pk)."""

    __slots__ = ("_node_id", "_public_key", "_secret_key", "_seed")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
            raise ValueError(f"an Ed25519 seed is {SEED_BYTES} bytes")
        public_key, secret_key = nacl.bindings.crypto_sign_seed_keypair(seed)
        self._seed = seed
        self._public_key: bytes = public_key
        self._secret_key: bytes = secret_key
        self._node_id: str | None = None

    @classmethod
    def generate(cls) -> NodeKey:
        return cls(secrets.token_bytes(SEED_BYTES))

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeKey:
        return cls(seed)

    @property
    def seed(self) -> bytes:
        return self._seed

    @property
    def public_key(self) -> bytes:
        return self._public_key

    @property
    def node_id(self) -> str:
        if self._node_id is None:
            self._node_id = node_id_from_public_key(self._public_key)
        return self._node_id

    def sign(self, message: bytes) -> bytes:
        """Return signature(64) || message (libsodium combined form)."""
        result: bytes = nacl.bindings.crypto_sign(message, self._secret_key)
        return result

    def sign_detached(self, message: bytes) -> bytes:
        """Return the 64-byte signature of `message`."""
        return self.sign(message)[:SIGNATURE_BYTES]

    def __repr__(self) -> str:
        # Never print the seed.
        return f"NodeKey(node_id={self.node_id!r})"


@functools.lru_cache(maxsize=NODE_ID_CACHE_ENTRIES)
def node_id_from_public_key(pk: bytes) -> str:
    """libp2p PeerID ("12D3KooW...") of an Ed25519 public key (cached: base58 of 38
    bytes costs tens of µs, and every envelope's sender is named this way)."""
    if len(pk) != PUBLIC_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes")
    result: str = base58.b58encode(_PEER_ID_PREFIX + pk).decode("ascii")
    return result


def public_key_from_node_id(node_id: str) -> bytes:
    """Inverse of `node_id_from_public_key`; `InvalidNodeIdError` on anything malformed."""
    if not isinstance(node_id, str) or not 0 < len(node_id) <= _MAX_NODE_ID_CHARS:
        raise InvalidNodeIdError(f"not a node id: {node_id!r:.80}")
    try:
        raw: bytes = base58.b58decode(node_id.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise InvalidNodeIdError(f"node id is not base58: {node_id!r}") from exc
    if len(raw) != _PEER_ID_BYTES or not raw.startswith(_PEER_ID_PREFIX):
        raise InvalidNodeIdError(f"node id is not an Ed25519 PeerID: {node_id!r}")
    pk = raw[len(_PEER_ID_PREFIX) :]
    # Exactly one spelling per key: no extra leading '1's or other aliases.
    if node_id_from_public_key(pk) != node_id:
        raise InvalidNodeIdError(f"node id is not canonical: {node_id!r}")
    return pk


def verify_detached(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True iff `signature` is a valid Ed25519 signature of `message` by `public_key`.

    Constant-time in libsodium; False on any bad input, never raises. No VerifyKey cache:
    PyNaCl's VerifyKey only holds the raw 32 bytes and calls the same `crypto_sign_open`
    (libsodium decompresses the point on each call), so caching objects would save nothing.
    """
    if (
        type(public_key) is not bytes
        or type(signature) is not bytes
        or len(public_key) != PUBLIC_KEY_BYTES
        or len(signature) != SIGNATURE_BYTES
    ):
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + bytes(message), public_key)
    except (nacl.exceptions.CryptoError, TypeError, ValueError):
        return False
    return True


# --- key files --------------------------------------------------------------------------


def _encode_key_file(key: NodeKey) -> bytes:
    document = {
        "type": KEY_FILE_TYPE,
        "version": KEY_FILE_VERSION,
        "seed": base64.b64encode(key.seed).decode("ascii"),
        "public_key": base64.b64encode(key.public_key).decode("ascii"),
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes, *, overwrite: bool) -> bool:
    """Write `data` to `path` via a 0600 temp file. Returns False if `overwrite` is off
    and the path already exists (another process won the race)."""
    # os.replace on a symlink would silently replace the link itself with a regular file,
    # leaving the link's target (what the operator meant) untouched: refuse instead.
    if path.is_symlink():
        raise KeyFileError(f"{path} is a symlink; refusing to replace it with a key file")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # Created 0600 from the start: the seed never exists in a wider-mode file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic create-if-absent
            except FileExistsError:
                return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            if tmp.exists():
                tmp.unlink()
    _fsync_dir(path.parent)
    return True


def save_key_file(path: Path, key: NodeKey) -> None:
    """Write the key atomically (temp file + rename), mode 0600."""
    _write_atomically(Path(path), _encode_key_file(key), overwrite=True)


def _read_key_file_bytes(path: Path) -> bytes:
    # Symlinks are followed on purpose: Kubernetes secrets and systemd credentials are
    # mounted through symlinks. The mode check is done on the file actually opened
    # (fstat on our fd), so a swapped link cannot slip a different file past it.
    fd = os.open(path, os.O_RDONLY)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CorruptKeyFileError(f"key file {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise KeyFilePermissionError(
                f"key file {path} has mode {mode:04o}: readable or writable by group/other; "
                f"run `chmod 600 {path}`"
            )
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise CorruptKeyFileError(f"key file {path} is larger than {MAX_KEY_FILE_BYTES} bytes")
    return data


def _b64_field(path: Path, document: dict[str, object], name: str) -> bytes:
    value = document.get(name)
    if not isinstance(value, str):
        raise CorruptKeyFileError(f"key file {path}: field {name!r} missing or not a string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CorruptKeyFileError(f"key file {path}: field {name!r} is not base64") from exc
    if len(raw) != SEED_BYTES:
        raise CorruptKeyFileError(
            f"key file {path}: field {name!r} is {len(raw)} bytes, expected {SEED_BYTES}"
        )
    return raw


def _parse_key_file(path: Path, data: bytes) -> NodeKey:
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptKeyFileError(f"key file {path} is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise CorruptKeyFileError(f"key file {path} is not a JSON object")
    if document.get("type") != KEY_FILE_TYPE:
        raise CorruptKeyFileError(
            f"key file {path}: type is {document.get('type')!r}, expected {KEY_FILE_TYPE!r}"
        )
    if document.get("version") != KEY_FILE_VERSION:
        raise CorruptKeyFileError(
            f"key file {path}: unsupported version {document.get('version')!r}"
        )
    seed = _b64_field(path, document, "seed")
    public_key = _b64_field(path, document, "public_key")
    key = NodeKey(seed)
    if key.public_key != public_key:
        raise CorruptKeyFileError(
            f"key file {path}: seed does not derive the stored public key (corrupted)"
        )
    return key


def load_key_file(path: Path) -> NodeKey:
    """Load a key file; `KeyFilePermissionError` or `CorruptKeyFileError` if unusable."""
    path = Path(path)
    return _parse_key_file(path, _read_key_file_bytes(path))


def load_or_create_key_file(path: Path) -> tuple[NodeKey, bool]:
    """Load the key at `path`, or create it. Returns (key, created)."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        return load_key_file(path), False
    key = NodeKey.generate()
    if _write_atomically(path, _encode_key_file(key), overwrite=False):
        return key, True
    # A concurrent start created it first: use theirs so both agree on one identity.
    return load_key_file(path), False
