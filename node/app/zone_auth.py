"""Who may use a node's privileged HTTP routes (`POST /api/children`, `POST` and
`DELETE /api/wasm/modules`): the data dir's owner, or a bearer token whose zone is at
least the route's configured one."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any, Final

from vsmcp.mesh.certs import ZoneOrder
from vsmcp.node.app.vsm_systems import VsmSystems
from vsmcp.node.mcp.stdio_auth import ensure_stdio_token

# Whoever can read <data_dir>/stdio.token is the node's own user (node/mcp/stdio_auth.py):
# the operator, who may use these routes whatever zone they are configured for.
OWNER: Final = "data-dir-owner"

Refusal = tuple[int, dict[str, Any]]


def authorize(
    data_dir: Path,
    vsm: VsmSystems,
    zones: ZoneOrder,
    authorization: str | None,
    remote: str | None,
    *,
    zone: str,
    key: str,
    action: str,
) -> tuple[str | None, Refusal | None]:
    """(caller name, None) when allowed; else (None, (HTTP status, JSON body)). `key`
    names the config key holding `zone`, `action` what is refused (both for the error)."""
    scheme, _, token = (authorization or "").partition(" ")
    secret = ensure_stdio_token(data_dir)
    if scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), secret):
        return OWNER, None
    grant = vsm.caller_grant(authorization, remote)
    if grant is None:
        return None, (401, {"error": "a bearer token (mcp.tokens) is required"})
    if not zones.allows(grant.zone, zone):
        return None, (403, {"error": f"zone {grant.zone!r} may not {action} ({key} = {zone!r})"})
    return f"http:{grant.name}", None
