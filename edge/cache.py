"""Compiled modules, cached by the SHA-256 of their bytes: in memory for the process,
and (when given a directory, the node's `<data_dir>/wasm-cache`) on disk as wasmtime's
serialized form, so a restart does not compile again. The directory is the node's own:
serialized code is trusted, so nothing else may write there. A stale or foreign file
(another wasmtime version or engine setting) fails to load and is compiled over.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from vsmcp.edge.errors import WasmLoadError

if TYPE_CHECKING:
    import wasmtime

log = logging.getLogger(__name__)


def module_bytes(path: Path) -> bytes:
    """The binary module at `path` (`.wat` text is assembled first)."""
    import wasmtime

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WasmLoadError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from exc
    if path.suffix == ".wat":
        try:
            return bytes(wasmtime.wat2wasm(data.decode()))
        except (wasmtime.WasmtimeError, UnicodeDecodeError) as exc:
            raise WasmLoadError(f"{str(path)!r} is not valid WAT: {exc}") from exc
    return data


class ModuleCache:
    def __init__(self, engine: wasmtime.Engine, directory: Path | None = None) -> None:
        self._engine = engine
        self._directory = directory
        self._modules: dict[str, wasmtime.Module] = {}
        self._lock = threading.Lock()
        self._version = importlib.metadata.version("wasmtime")
        self.compiled = 0
        self.loaded_from_disk = 0

    def module(self, data: bytes) -> tuple[str, wasmtime.Module]:
        """`(sha256 hex, compiled module)` for the module `data`."""
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            module = self._modules.get(digest)
            if module is None:
                module = self._from_disk(digest) or self._compile(digest, data)
                self._modules[digest] = module
        return digest, module

    def _file(self, digest: str) -> Path | None:
        if self._directory is None:
            return None
        return self._directory / f"{digest}-wasmtime{self._version}.cwasm"

    def _from_disk(self, digest: str) -> wasmtime.Module | None:
        import wasmtime

        path = self._file(digest)
        if path is None or not path.is_file():
            return None
        try:
            module = wasmtime.Module.deserialize_file(self._engine, str(path))
        except wasmtime.WasmtimeError as exc:
            log.warning("compiled module %s unusable, compiling again: %s", path, exc)
            return None
        self.loaded_from_disk += 1
        return module

    def _compile(self, digest: str, data: bytes) -> wasmtime.Module:
        import wasmtime

        try:
            module = wasmtime.Module(self._engine, data)
        except wasmtime.WasmtimeError as exc:
            raise WasmLoadError(f"module {digest[:12]} does not compile: {exc}") from exc
        self.compiled += 1
        path = self._file(digest)
        if path is not None:
            self._store(path, module)
        return module

    def _store(self, path: Path, module: wasmtime.Module) -> None:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp.write_bytes(module.serialize())
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot cache compiled module at %s: %s", path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
