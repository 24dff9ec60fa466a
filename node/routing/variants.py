"""Same name, different schemas: tools that are distinct, with names that stay put.

Providers of one tool name with the same input schema are replicas of one tool (routed
among, failed over). Providers whose input schemas differ offer distinct tools: each
schema is a *variant*, marked by the first 8 hex digits of the SHA-256 of its canonical
JSON (`schema_digest`). While a name has two or more variants in the mesh (this node's
own and the usable providers'), `tools/list` lists each as `<name>.<digest>`; with one,
as `<name>`. The digest depends on the schema alone, so once a name is ambiguous a
variant's listed name does not change when a third provider appears, whatever its
schema: the same as one listed, it is one more replica; a new one, one more name.

The plain name is not stable, though: a tool listed as `calc` is listed as
`calc.<digest>` from the moment a second schema for `calc` appears, and plain `calc`
then keeps working only at a node that has its own variant of it; elsewhere it is
refused as ambiguous, and the client must list tools again (`tools/list_changed`).

Calls. `<name>.<digest>` runs only on providers of that variant (this node first when
its own matches), whether or not the name is ambiguous now: a digest name a client saw
keeps working while its schema is offered. Plain `<name>` runs on this node's own
variant when it has one (as before variants existed; it fails over only to replicas of
the same schema), else on the one remote variant the caller may use; with several, it
is refused naming them (`AmbiguousTool`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Mapping
from typing import Any, Final

from vsmcp.node.errors import clip
from vsmcp.node.tools.errors import ToolError, UnknownTool

DIGEST_CHARS: Final = 8
_SUFFIX: Final = re.compile(rf"\.([0-9a-f]{{{DIGEST_CHARS}}})\Z")


def schema_key(schema: Mapping[str, Any]) -> str:
    """A schema's canonical JSON (keys sorted): equal schemas, equal keys."""
    return json.dumps(schema, sort_keys=True, default=str)


def schema_digest(schema: Mapping[str, Any]) -> str:
    """The mark of a variant: the first `DIGEST_CHARS` hex digits of its schema's SHA-256."""
    return hashlib.sha256(schema_key(schema).encode()).hexdigest()[:DIGEST_CHARS]


def variant_name(name: str, digest: str) -> str:
    return f"{name}.{digest}"


def split_variant(name: str) -> tuple[str, str] | None:
    """(`name`, digest) of a variant's listed name; None when it is not shaped as one."""
    match = _SUFFIX.search(name)
    if match is None or match.start() == 0:
        return None
    return name[: match.start()], match.group(1)


class AmbiguousTool(UnknownTool):
    """A plain name offered with several schemas the caller may use: which one is unclear."""

    reason = "ambiguous_tool"

    def __init__(self, name: str, variants: Collection[str]) -> None:
        name = clip(name)
        names = sorted(variants)
        ToolError.__init__(
            self,
            f"Tool {name!r} is offered with {len(names)} different input schemas; "
            f"call one of {', '.join(names)}",
            {"tool": name, "variants": names},
        )
