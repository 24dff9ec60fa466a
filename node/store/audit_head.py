"""The audit log's signed head, kept outside the database: `<data_dir>/audit.head`.

The `audit_head` row inside `vsmcp.db` catches entries deleted from the tail, but not a
database that was truncated to nothing, deleted, or replaced by an older copy: each of
those is a consistent log, just a shorter one. This file is the anchor that says how far
the log had got. After every committed batch the writer replaces it (write, fsync,
rename) with the batch's head: `{"version": 1, "seq": N, "hash": hex, "sig": hex}`, where
`sig` is the same head signature the database stores (over `HEAD_SIG_DOMAIN || seq u64 ||
hash`, by the node's key), so the file cannot be forged without the key.

The file is written after the database commit (which is on disk when it returns), so it
is never ahead of the log: at start, a file whose entry the log does not reach, or whose
hash differs from the log's entry at that seq, means the log went backwards or was
replaced. The node then refuses to start until an operator accepts it
(`vsmcpd --accept-audit-rollback`). A missing file is only warned about (data dirs made
before it existed have none): an attacker who can delete it and replace the database is
caught only by an anchor on another host.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

HEAD_FILE_NAME: Final = "audit.head"
HEAD_FILE_VERSION: Final = 1
HEAD_SIG_DOMAIN: Final = b"vsmcp audit head v1\x00"
MAX_HEAD_FILE_BYTES: Final = 4096
HASH_BYTES: Final = 32
SIG_BYTES: Final = 64
_HEAD_SEQ = struct.Struct(">Q")


class HeadFileError(ValueError):
    """`audit.head` exists but cannot be read, parsed or verified; the message says why."""


def head_message(seq: int, hash_: bytes) -> bytes:
    """What a head signature signs."""
    return HEAD_SIG_DOMAIN + _HEAD_SEQ.pack(seq) + hash_


def head_file_for(data_dir: Path) -> Path:
    return Path(data_dir) / HEAD_FILE_NAME


@dataclass(frozen=True, slots=True)
class SignedHead:
    """(seq, hash) of a log's last entry, signed by the log's key; seq 0 is an empty log."""

    seq: int
    hash: bytes
    sig: bytes

    def describe(self) -> str:
        return f"entry {self.seq} (hash {self.hash.hex()[:16]}…)"


def write_head_file(path: Path, head: SignedHead) -> None:
    """Replace `path` atomically with `head`. Blocking (fsync): run it in a worker thread.

    The data is fsynced before the rename, so the file is either the old head or the new
    one after a crash, never torn; a lost rename leaves an older head, which is harmless.
    """
    text = json.dumps(
        {
            "version": HEAD_FILE_VERSION,
            "seq": head.seq,
            "hash": head.hash.hex(),
            "sig": head.sig.hex(),
        },
        separators=(",", ":"),
    )
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_head_file(path: Path, verify_key: VerifyKey) -> SignedHead | None:
    """The head recorded in `path`, or None if there is no such file.

    Raises `HeadFileError` when the file is unreadable, malformed or not signed by
    `verify_key` (another node's file, or an edited one).
    """
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_HEAD_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HeadFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_HEAD_FILE_BYTES:
        raise HeadFileError(f"{path} is larger than {MAX_HEAD_FILE_BYTES} bytes")
    head = _parse(path, raw)
    try:
        verify_key.verify(head_message(head.seq, head.hash), head.sig)
    except BadSignatureError as exc:
        raise HeadFileError(
            f"{path}: signature does not verify with this node's key (edited, or another "
            f"node's file)"
        ) from exc
    return head


def _parse(path: Path, raw: bytes) -> SignedHead:
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("version") != HEAD_FILE_VERSION:
            raise ValueError(f"not a version {HEAD_FILE_VERSION} head record")
        seq, hash_hex, sig_hex = doc["seq"], doc["hash"], doc["sig"]
        if not isinstance(seq, int) or not 0 <= seq < 2**64:
            raise ValueError("seq is not an entry number")
        if not isinstance(hash_hex, str) or not isinstance(sig_hex, str):
            raise ValueError("hash and sig must be hex strings")
        hash_, sig = bytes.fromhex(hash_hex), bytes.fromhex(sig_hex)
    except (ValueError, KeyError) as exc:
        raise HeadFileError(f"{path} is not a readable audit head: {exc}") from exc
    if len(hash_) != HASH_BYTES or len(sig) != SIG_BYTES:
        raise HeadFileError(f"{path} is not a readable audit head: wrong hash or sig length")
    return SignedHead(seq=seq, hash=hash_, sig=sig)


def rollback_problem(
    recorded: SignedHead, log_seq: int, log_hash_at_recorded: bytes | None
) -> str | None:
    """Why a log ending at `log_seq` is not a continuation of `recorded`, or None if it is.

    `log_hash_at_recorded` is the log's hash of entry `recorded.seq` (None if absent).
    """
    if recorded.seq > log_seq:
        return (
            f"it records {recorded.describe()} but the log ends at entry {log_seq}: "
            f"the database was truncated, emptied or restored from an older copy"
        )
    if recorded.seq > 0 and log_hash_at_recorded != recorded.hash:
        return (
            f"it records {recorded.describe()} but the log's entry {recorded.seq} differs: "
            f"the database was replaced"
        )
    return None
