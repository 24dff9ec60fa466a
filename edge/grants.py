"""What a WASM tool may touch outside its sandbox: granted by its manifest, allowed by the
node's config (`[edge]`). Without both, a module has no filesystem, no environment and
no clock; WASI preview 1 gives it no network at all on this host (no socket is ever
pre-opened), so a manifest asking for the network is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec

from vsmcp.edge.errors import ManifestError

EnvName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]


class DirGrant(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A host directory the module sees at `guest` (read-only unless `writable`)."""

    host: str
    guest: Annotated[str, msgspec.Meta(pattern=r"^/[^\x00]{0,255}$")]
    writable: bool = False


class Grants(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    dirs: list[DirGrant] = msgspec.field(default_factory=list)
    env: list[EnvName] = msgspec.field(default_factory=list)
    clock: bool = False
    network: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgePermissions:
    """What the node's config allows manifests to be granted."""

    dirs: tuple[Path, ...] = ()
    env: frozenset[str] = frozenset()
    clock: bool = False


def _under(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def check_grants(grants: Grants, allowed: EdgePermissions, base: Path) -> None:
    """Raise `ManifestError` naming the first grant the config does not allow."""
    if grants.network:
        raise ManifestError(
            "grants.network: WASI preview 1 modules get no network on this host (no sockets)"
        )
    if grants.clock and not allowed.clock:
        raise ManifestError("grants.clock: not allowed by the config (edge.allow_clock)")
    for name in grants.env:
        if name not in allowed.env:
            raise ManifestError(f"grants.env: {name!r} is not in the config's edge.allow_env")
    roots = tuple(Path(os.path.realpath(d)) for d in allowed.dirs)
    for i, grant in enumerate(grants.dirs):
        host = Path(os.path.realpath(base / grant.host))
        if not _under(host, roots):
            raise ManifestError(
                f"grants.dirs[{i}].host: {str(host)!r} is not under a directory of the "
                "config's edge.allow_dirs"
            )
        if not host.is_dir():
            raise ManifestError(f"grants.dirs[{i}].host: {str(host)!r} is not a directory")
