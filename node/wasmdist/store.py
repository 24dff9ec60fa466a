"""The module bytes a node holds: `<data_dir>/wasm/<sha256>.wasm`, written whole (a
temporary file renamed into place) and only after their hash was checked, so a file
there is the module its name says (the directory is the node's own)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from vsmcp.node.wasmdist.model import SHA256_RE


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ModuleStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, sha256: str) -> Path:
        if not SHA256_RE.match(sha256):
            raise ValueError(f"not a SHA-256 in hex: {sha256[:80]!r}")
        return self.directory / f"{sha256}.wasm"

    def size(self, sha256: str) -> int | None:
        """The size of the held module, or None when it is not held."""
        try:
            return self.path(sha256).stat().st_size
        except (OSError, ValueError):
            return None

    def read(self, sha256: str) -> bytes | None:
        """The held module if its bytes still hash to its name (else None)."""
        try:
            data = self.path(sha256).read_bytes()
        except (OSError, ValueError):
            return None
        return data if sha256_hex(data) == sha256 else None

    def chunk(self, sha256: str, offset: int, length: int) -> bytes | None:
        try:
            with self.path(sha256).open("rb") as f:
                f.seek(offset)
                return f.read(length)
        except (OSError, ValueError):
            return None

    def write(self, sha256: str, data: bytes) -> Path:
        """Keep `data` as module `sha256`; ValueError when it does not hash to it."""
        if sha256_hex(data) != sha256:
            raise ValueError("the bytes do not match their SHA-256")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(sha256)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path
