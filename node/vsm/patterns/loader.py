"""Patterns from a directory of TOML/JSON files, reloaded on demand.

`PatternDirectory.reload()` reads every pattern file, and when anything changed, swaps
the whole set into the engine, all or nothing: a file that does not parse or a pattern
that is refused raises `PatternError` (naming the file, the pattern and the reason) and
the engine keeps the set it had. A watcher (inotify or polling) only needs to call
`reload()`; it comes with the node wiring.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from vsmcp.node.vsm.errors import PatternError
from vsmcp.node.vsm.patterns.compile import PatternEngine, SwapReport
from vsmcp.node.vsm.patterns.model import MAX_PATTERN_FILE_BYTES, load_pattern_dir, pattern_files


class PatternDirectory:
    """A directory of pattern files feeding one engine."""

    def __init__(self, directory: Path, engine: PatternEngine) -> None:
        self.directory = directory
        self._engine = engine
        self._fingerprint: bytes | None = None
        self.reloads = 0  # sets swapped in
        self.refused = 0  # reloads refused (the previous set kept running)
        self.last_error: PatternError | None = None

    def fingerprint(self) -> bytes:
        """A digest of the directory's pattern files (names and contents)."""
        digest = hashlib.blake2b(digest_size=16)
        for path in pattern_files(self.directory):
            try:
                with path.open("rb") as f:
                    content = f.read(MAX_PATTERN_FILE_BYTES + 1)
            except OSError as e:
                raise PatternError(str(path), "", f"cannot read: {e.strerror or e}") from e
            digest.update(path.name.encode() + b"\0" + len(content).to_bytes(8, "big"))
            digest.update(content)
        return digest.digest()

    def reload(self, *, force: bool = False) -> SwapReport | None:
        """Swap in the directory's patterns if they changed (or `force`); None when
        nothing changed. Raises `PatternError`, leaving the engine as it was."""
        try:
            fingerprint = self.fingerprint()
            if not force and fingerprint == self._fingerprint:
                return None
            patterns = load_pattern_dir(self.directory, self._engine.catalog)
            report = self._engine.replace(patterns, source=str(self.directory))
        except PatternError as e:
            self.refused += 1
            self.last_error = e
            raise
        self._fingerprint = fingerprint
        self.last_error = None
        self.reloads += 1
        return report
