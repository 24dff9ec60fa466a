"""What a published module is in the policies CRDT: a grant of kind `wasm_module`, id the
tool's name, whose body names the module by SHA-256 and size and carries the manifest's
TOML text. Issued by an authority key or by a node whose certificate has the `publisher`
role; unpublishing is the grant's revocation (a signed tombstone that replicates).

A body that does not decode is ignored and counted by the reader: it is data from
another node, never trusted to be well-formed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Final

import msgspec

from vsmcp.crdt.policies import Policy
from vsmcp.node.vsm.immune.model import RolesOf

WASM_MODULE_KIND: Final = "wasm_module"
PUBLISHER_ROLE: Final = "publisher"
MAX_MANIFEST_TEXT_CHARS: Final = 64 << 10
# The largest module any node takes (the bound on `edge.max_module_bytes`).
MAX_MODULE_BYTES: Final = 64 << 20
# Room in a publish request beside the module's base64: its manifest or signed record.
PUBLISH_REQUEST_SLACK_BYTES: Final = 1 << 20
# A published module lives this long unless revoked (a year: publishing is deliberate).
DEFAULT_PUBLISH_TTL_MS: Final = 365 * 24 * 3600 * 1000
SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")

_Sha = Annotated[str, msgspec.Meta(pattern=SHA256_RE.pattern)]
_Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.\-]{1,128}$")]


class ModuleBody(msgspec.Struct, frozen=True, kw_only=True):
    """The grant's body: the module by hash and size, the manifest, where the bytes are."""

    name: _Name
    sha256: _Sha
    size: Annotated[int, msgspec.Meta(ge=1, le=1 << 32)]
    manifest: Annotated[str, msgspec.Meta(max_length=MAX_MANIFEST_TEXT_CHARS)]
    holder: Annotated[str, msgspec.Meta(max_length=256)] = ""  # node id holding the bytes


def module_of(policy: Policy) -> ModuleBody | None:
    """The module a policy publishes, or None when it is not one (or malformed, or its
    id is not the module's name)."""
    if policy.kind != WASM_MODULE_KIND:
        return None
    try:
        body = msgspec.convert(policy.body, ModuleBody)
    except msgspec.ValidationError:
        return None
    return body if body.name == policy.id else None


def body_of(body: ModuleBody) -> dict[str, object]:
    data: dict[str, object] = msgspec.to_builtins(body)
    return data


def publisher_issuers(roles_of: RolesOf) -> Callable[[bytes, str], bool]:
    """The policies CRDT's `allowed_issuers` for `wasm_module`: a node whose certificate
    carries the `publisher` role (the authority may issue anything anyway)."""

    def allowed(issuer: bytes, kind: str) -> bool:
        if kind != WASM_MODULE_KIND:
            return False
        roles = roles_of(issuer)
        return roles is not None and PUBLISHER_ROLE in roles

    return allowed


def any_of(*checks: Callable[[bytes, str], bool]) -> Callable[[bytes, str], bool]:
    """Allowed when one of `checks` allows (each knows its own kinds)."""

    def allowed(issuer: bytes, kind: str) -> bool:
        return any(check(issuer, kind) for check in checks)

    return allowed
