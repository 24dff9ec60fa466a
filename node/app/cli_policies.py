"""`vsmcp policies`: the replicated policies a running node holds, and revoking one.

    vsmcp policies [--data-dir DIR | --url URL] [--json]
    vsmcp policies revoke POLICY_ID --issuer NODE_ID [--key KEY_FILE] [--data-dir DIR | --url URL]

`revoke` signs the revocation here, with `--key` (the mesh authority's key file; the
default, `<data dir>/node.key`, is the authority of a `--dev` node), and posts the signed
record to the node (`POST /api/policies/revocations`), which replicates it: the key
never leaves this machine, and whoever posts the record adds nothing to it.

Exit codes: 0 success; 1 the node is unreachable or refused the record; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from pathlib import Path
from typing import Any

from vsmcp.crdt.policies import DEFAULT_REVOCATION_TTL_MS, sign_revocation
from vsmcp.mesh.errors import MeshError
from vsmcp.mesh.identity import load_key_file, public_key_from_node_id
from vsmcp.node.app.cli_tools import (
    EXIT_OK,
    EXIT_USAGE,
    ToolsCliError,
    _guarded,
    _node_url,
    _with_node,
    request_json,
)
from vsmcp.node.app.config import default_data_dir
from vsmcp.node.app.trust import KEY_FILE_NAME


def cmd_policies(args: argparse.Namespace) -> int:
    view = request_json(_node_url(args) + "/api/policies")
    if args.json:
        print(json.dumps(view, indent=2))
        return EXIT_OK
    print(f"{'ID':40} {'KIND':12} {'EXPIRES':21} {'ISSUER':54} NOTE")
    for p in view["policies"]:
        note = p.get("note") or {}
        text = note.get("action") or note.get("reason") or ""
        if note.get("source"):
            text = f"{text} ({note['source']})"
        print(f"{p['id']:40} {p['kind']:12} {p['expires']:21} {p['issuer']:54} {text}")
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace) -> int:
    try:
        issuer = public_key_from_node_id(args.issuer)
    except MeshError as e:
        raise ToolsCliError(f"--issuer: {e}", EXIT_USAGE) from e
    url = _node_url(args)
    held = [
        p
        for p in request_json(url + "/api/policies")["policies"]
        if p["id"] == args.policy_id and p["issuer"] == args.issuer
    ]
    if not held:
        raise ToolsCliError(f"the node holds no live policy {args.policy_id!r} of {args.issuer}")
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    key_path = Path(args.key) if args.key else data_dir / KEY_FILE_NAME
    try:
        key = load_key_file(key_path)
    except MeshError as e:
        raise ToolsCliError(f"--key {key_path}: {e}", EXIT_USAGE) from e
    now_ms = int(time.time() * 1000)
    # The revocation must outlive the grant, or the grant would come back from a peer.
    ttl_ms = max(DEFAULT_REVOCATION_TTL_MS, held[0]["expires_at_ms"] - now_ms)
    blob = sign_revocation(
        key, issuer, args.policy_id, held[0]["version"], now_ms=now_ms, ttl_ms=ttl_ms
    )
    answer = request_json(
        url + "/api/policies/revocations",
        "POST",
        body={"record": base64.b64encode(blob).decode()},
    )
    if not answer["accepted"]:
        raise ToolsCliError("the node did not take the revocation: it holds a newer version")
    print(f"policy {args.policy_id} of {args.issuer}: revoked")
    return EXIT_OK


def add_policy_commands(sub: Any) -> None:
    """Add `policies` (and `policies revoke`) to `vsmcp`'s subparsers."""
    p = sub.add_parser("policies", help="the replicated policies a running node holds")
    _with_node(p)
    p.set_defaults(func=_guarded(cmd_policies))
    actions = p.add_subparsers(dest="policies_command")
    r = actions.add_parser("revoke", help="revoke a policy with the authority's key")
    r.add_argument("policy_id")
    r.add_argument("--issuer", required=True, help="node id of the policy's issuer")
    r.add_argument("--key", help="the authority key file (default: the node's, for --dev)")
    _with_node(r)
    r.set_defaults(func=_guarded(cmd_revoke))
