"""A WASM tool's manifest (TOML): what the tool is called, who may call it, its limits
and its grants. The module is `module` (relative to the manifest), else the file beside
the manifest with the same stem and `.wasm` (or `.wat`, text format) suffix.

    name = "echo"
    description = "Returns its arguments"
    zone = "public"
    module = "echo.wasm"
    input_schema = { type = "object" }
    [limits]
    timeout_ms = 1000
    memory_mb = 32
    output_bytes = 1048576
    [grants]
    dirs = [{ host = "data", guest = "/data" }]
    env = ["LANG"]
    clock = true
    [probe]                      # System 3*'s probe of the tool (unset: unaudited)
    arguments = { text = "probe" }
    expect = { required = ["text"] }   # a JSON schema the result must match
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final

import msgspec

from vsmcp.edge.errors import ManifestError
from vsmcp.edge.grants import EdgePermissions, Grants, check_grants

MAX_MANIFEST_BYTES: Final = 256 << 10
MAX_TIMEOUT_MS: Final = 600_000
MAX_MEMORY_MB: Final = 4096
MAX_OUTPUT_BYTES: Final = 64 << 20
MODULE_SUFFIXES: Final = (".wasm", ".wat")


class Limits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=MAX_TIMEOUT_MS)] = 1000
    memory_mb: Annotated[int, msgspec.Meta(ge=1, le=MAX_MEMORY_MB)] = 64
    output_bytes: Annotated[int, msgspec.Meta(ge=1, le=MAX_OUTPUT_BYTES)] = 1 << 20


class Probe(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A call System 3* makes of the tool (`arguments`) and the JSON schema its result
    must match (`expect`; the node checks that it is one)."""

    arguments: dict[str, Any] = msgspec.field(default_factory=dict)
    expect: dict[str, Any] = msgspec.field(default_factory=dict)


class _ManifestFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.\-]{1,128}$")]
    description: str = ""
    zone: str = "public"
    module: str | None = None
    input_schema: dict[str, Any] = msgspec.field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    limits: Limits = msgspec.field(default_factory=Limits)
    grants: Grants = msgspec.field(default_factory=Grants)
    probe: Probe | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """A manifest read and checked: `module` is an existing file."""

    path: Path
    module: Path
    name: str
    description: str
    zone: str
    input_schema: dict[str, Any]
    limits: Limits
    grants: Grants
    probe: Probe | None = None


def _module_path(path: Path, declared: str | None) -> Path:
    if declared is not None:
        module = path.parent / declared
        if not module.is_file():
            raise ManifestError(f"module: {str(module)!r} is not a file")
        return module
    for suffix in MODULE_SUFFIXES:
        module = path.with_suffix(suffix)
        if module.is_file():
            return module
    raise ManifestError(
        f"module: unset, and neither {path.with_suffix('.wasm').name!r} nor "
        f"{path.with_suffix('.wat').name!r} is beside the manifest"
    )


def _parse(raw: bytes, where: str) -> _ManifestFile:
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{where} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        parsed = msgspec.toml.decode(raw, type=_ManifestFile)
    except msgspec.ValidationError as exc:  # names the field: "... - at `$.limits`"
        raise ManifestError(f"{where}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ManifestError(f"{where} is not valid TOML: {exc}") from exc
    if parsed.input_schema.get("type", "object") != "object":
        raise ManifestError("input_schema: must describe an object (type = 'object')")
    return parsed


def _manifest(
    parsed: _ManifestFile, path: Path, module: Path, allowed: EdgePermissions | None
) -> Manifest:
    if allowed is not None:
        check_grants(parsed.grants, allowed, path.parent)
    return Manifest(
        path=path,
        module=module,
        name=parsed.name,
        description=parsed.description,
        zone=parsed.zone,
        input_schema=parsed.input_schema,
        limits=parsed.limits,
        grants=parsed.grants,
        probe=parsed.probe,
    )


def load_manifest(path: Path, allowed: EdgePermissions | None = None) -> Manifest:
    """Read `path`; with `allowed`, also check its grants against the config."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ManifestError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from exc
    parsed = _parse(raw, repr(str(path)))
    return _manifest(parsed, path, _module_path(path, parsed.module), allowed)


def published_manifest(
    text: str, path: Path, module: Path, allowed: EdgePermissions | None = None
) -> Manifest:
    """A manifest that came with a published module (TOML `text`): its module is
    `module` whatever `module` the text names; grants are relative to `path`'s folder."""
    return _manifest(_parse(text.encode(), "the published manifest"), path, module, allowed)
