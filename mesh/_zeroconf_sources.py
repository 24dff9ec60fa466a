"""python-zeroconf from its Python sources instead of its compiled extensions.

Why: zeroconf's wheels compile 18 of its own modules with Cython and ship each module's
`.py` source beside the `.so` (the same code; without a compiler zeroconf runs the
sources, and its own test suite runs both ways). Loading the extensions maps ≈2.8 MiB of
their pages into an idle node, ≈5 % of its resident memory (docs/benchmarks.md, "Idle
node"); the sources cost no more than their objects. What the extensions buy is speed
per mDNS packet (1.4 against 7.6 µs to parse a typical answer here), which matters on a
segment with heavy mDNS traffic, not for finding a mesh's peers. So by default the node
runs the sources (`mesh.mdns_compiled = false`), and an operator on a busy LAN can choose
the extensions.

The import system prefers an extension module over a source file in the same directory;
`prefer_sources()` puts a finder in front that, for `zeroconf` and its submodules only,
hands out the source beside an extension. It must decide before zeroconf is first
imported: the compiled modules check each other's C types, so the two kinds must never
mix within one process. If zeroconf is already imported (by a plugin, say), nothing
changes.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGE = "zeroconf"


def _ours(fullname: str) -> bool:
    return fullname == PACKAGE or fullname.startswith(PACKAGE + ".")


def _source_beside(extension: str) -> str | None:
    """`…/_dns.cpython-311-x86_64-linux-gnu.so` -> `…/_dns.py`, if that file exists."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if extension.endswith(suffix):
            source = Path(extension[: -len(suffix)] + ".py")
            return str(source) if source.is_file() else None
    return None


class _SourcesFirst(importlib.abc.MetaPathFinder):
    """Finds zeroconf's modules as the path finder does, then swaps an extension module
    for the source file beside it; every other name is left to the other finders."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if not _ours(fullname):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            return None
        source = _source_beside(spec.origin or "")
        if source is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, source, submodule_search_locations=spec.submodule_search_locations
        )


def installed_extensions() -> list[Path]:
    """zeroconf's compiled extension modules as installed, found without importing it."""
    spec = importlib.machinery.PathFinder.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return []
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return sorted(
        path
        for location in spec.submodule_search_locations
        for path in Path(location).rglob("*")
        if path.name.endswith(suffixes)
    )


def prefer_sources() -> bool:
    """Import zeroconf from its sources from now on in this process (idempotent).

    False, and nothing changes, when zeroconf is already imported (its modules stay as
    they are) or when some extension module has no source beside it (all or nothing:
    one compiled module among sources fails at import). Decided once per process: a
    later caller asking for the extensions gets what the first one chose.
    """
    if any(isinstance(finder, _SourcesFirst) for finder in sys.meta_path):
        return True
    if any(_ours(name) for name in list(sys.modules)):  # a copy: other threads import
        return False
    if any(_source_beside(str(path)) is None for path in installed_extensions()):
        return False
    sys.meta_path.insert(0, _SourcesFirst())
    return True


def compiled() -> bool | None:
    """Whether the imported zeroconf runs its compiled extensions (None: not imported)."""
    module = sys.modules.get(PACKAGE + "._dns")
    if module is None:
        return None
    return not (module.__file__ or "").endswith(".py")
