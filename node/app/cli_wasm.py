"""`vsmcp wasm`: publish WASM modules to the mesh, retire them, list them.

    vsmcp wasm publish MODULE.wasm --manifest tool.toml [--authority-key KEY]
                       [--data-dir DIR | --url URL --token T]
    vsmcp wasm unpublish NAME [--authority-key KEY] [--data-dir DIR | --url URL --token T]
    vsmcp wasm list [--data-dir DIR | --url URL] [--json]

`publish` names the module by SHA-256 and size in a manifest signed here with
`--authority-key` (the key never leaves this machine), or, without it, by the node
itself (its certificate must have the `publisher` role; a `--dev` node's has every
role), and posts both to the node, which keeps the bytes and replicates the manifest.
A `.wat` module is assembled first. `unpublish` revokes the module's manifests: every
one (whoever signed it) with `--authority-key`, the node's own otherwise.

Posting a module and unpublishing without `--authority-key` need the node's say-so: with
`--data-dir` the command proves it is the node's own user with the secret in
`<data_dir>/stdio.token`; with `--url` it needs `--token` (or `VSMCP_TOKEN`), a bearer
token of `mcp.tokens` in `edge.publish_zone` or above.

Exit codes: 0 success; 1 the node is unreachable or refused; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from pathlib import Path
from typing import Any

from vsmcp.crdt.policies import DEFAULT_REVOCATION_TTL_MS, sign_grant, sign_revocation
from vsmcp.mesh.errors import MeshError
from vsmcp.mesh.identity import NodeKey, load_key_file
from vsmcp.node.app.cli_tools import (
    EXIT_OK,
    EXIT_USAGE,
    ToolsCliError,
    _guarded,
    _node_url,
    _with_node,
    bearer_token,
    request_json,
)
from vsmcp.node.wasmdist.model import (
    DEFAULT_PUBLISH_TTL_MS,
    MAX_MODULE_BYTES,
    WASM_MODULE_KIND,
    ModuleBody,
    body_of,
)
from vsmcp.node.wasmdist.store import sha256_hex

PUBLISH_TIMEOUT_S = 60.0
TOKEN_HELP = "a bearer token (with --url) in edge.publish_zone or above"


def _authority_key(path: str) -> NodeKey:
    try:
        return load_key_file(Path(path).expanduser())
    except MeshError as e:
        raise ToolsCliError(f"--authority-key {path}: {e}", EXIT_USAGE) from e


def _module(path: Path) -> bytes:
    from vsmcp.edge.cache import module_bytes
    from vsmcp.edge.errors import EdgeError

    if not path.is_file():
        raise ToolsCliError(f"{path}: no such file", EXIT_USAGE)
    try:
        data = module_bytes(path)
    except EdgeError as e:
        raise ToolsCliError(str(e), EXIT_USAGE) from e
    if len(data) > MAX_MODULE_BYTES:
        raise ToolsCliError(f"{path}: {len(data)} bytes, over {MAX_MODULE_BYTES}", EXIT_USAGE)
    return data


def _manifest_name(manifest_path: Path, module_path: Path) -> tuple[str, str]:
    from vsmcp.edge.errors import EdgeError
    from vsmcp.edge.manifest import published_manifest

    try:
        text = manifest_path.read_text(encoding="utf-8")
        return published_manifest(text, manifest_path, module_path).name, text
    except (OSError, UnicodeDecodeError) as e:
        raise ToolsCliError(f"--manifest {manifest_path}: {e}", EXIT_USAGE) from e
    except EdgeError as e:
        raise ToolsCliError(f"--manifest {manifest_path}: {e}", EXIT_USAGE) from e


def cmd_publish(args: argparse.Namespace) -> int:
    if args.ttl_days < 1:
        raise ToolsCliError("--ttl-days: at least 1", EXIT_USAGE)
    module_path = Path(args.module)
    module = _module(module_path)
    name, text = _manifest_name(Path(args.manifest), module_path)
    url = _node_url(args)
    request: dict[str, Any] = {"module": base64.b64encode(module).decode()}
    if args.authority_key:
        key = _authority_key(args.authority_key)
        holder = request_json(url + "/api/status").get("node_id", "")
        body = ModuleBody(
            name=name, sha256=sha256_hex(module), size=len(module), manifest=text, holder=holder
        )
        now_ms = int(time.time() * 1000)
        blob = sign_grant(
            key,
            name,
            WASM_MODULE_KIND,
            body_of(body),
            now_ms=now_ms,
            ttl_ms=args.ttl_days * 24 * 3600 * 1000,
        )
        request["record"] = base64.b64encode(blob).decode()
    else:
        request["manifest"] = text
    answer = request_json(
        url + "/api/wasm/modules",
        "POST",
        bearer_token(args),
        body=request,
        timeout_s=PUBLISH_TIMEOUT_S,
    )
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(f"{answer['name']}: published ({answer['sha256']}, {answer['size']} bytes)")
    return EXIT_OK


def cmd_unpublish(args: argparse.Namespace) -> int:
    url = _node_url(args)
    revoked = 0
    if args.authority_key:
        key = _authority_key(args.authority_key)
        now_ms = int(time.time() * 1000)
        # The authority may revoke any issuer's manifest of the module.
        for m in request_json(url + "/api/wasm/modules")["modules"]:
            if m["name"] != args.name:
                continue
            # The tombstone must outlive the grant, or the grant would come back.
            ttl_ms = max(DEFAULT_REVOCATION_TTL_MS, m["expires_at_ms"] - now_ms)
            issuer = bytes.fromhex(m["issuer"])
            blob = sign_revocation(
                key, issuer, args.name, m["version"], now_ms=now_ms, ttl_ms=ttl_ms
            )
            answer = request_json(
                url + "/api/policies/revocations",
                "POST",
                body={"record": base64.b64encode(blob).decode()},
            )
            revoked += bool(answer["accepted"])
    else:
        revoked = request_json(
            url + f"/api/wasm/modules/{args.name}", "DELETE", bearer_token(args)
        )["revoked"]
    if not revoked:
        raise ToolsCliError(f"no published module {args.name!r} of that issuer was revoked")
    print(f"{args.name}: unpublished")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    view = request_json(_node_url(args) + "/api/wasm/modules")
    if args.json:
        print(json.dumps(view, indent=2))
        return EXIT_OK
    print(f"{'NAME':32} {'SIZE':>10} {'HELD':5} {'LOADED':6} SHA256")
    for m in view["modules"]:
        held = "yes" if m["held"] else "no"
        loaded = "yes" if m["loaded"] else "no"
        print(f"{m['name']:32} {m['size']:>10} {held:5} {loaded:6} {m['sha256']}")
    return EXIT_OK


def add_wasm_commands(sub: Any) -> None:
    """Add `wasm publish|unpublish|list` to `vsmcp`'s subparsers."""
    w = sub.add_parser("wasm", help="publish WASM modules to the mesh")
    actions = w.add_subparsers(dest="wasm_command", required=True)
    p = actions.add_parser("publish", help="publish a module (signed) to the mesh")
    p.add_argument("module", help="the module (.wasm, or .wat text)")
    p.add_argument("--manifest", required=True, help="the tool's manifest (TOML)")
    p.add_argument("--authority-key", help="sign with this key file (else the node signs)")
    p.add_argument(
        "--ttl-days",
        type=int,
        default=DEFAULT_PUBLISH_TTL_MS // (24 * 3600 * 1000),
        help="how long the publication lasts unless unpublished",
    )
    _with_node(p)
    p.add_argument("--token", help=TOKEN_HELP)
    p.set_defaults(func=_guarded(cmd_publish))
    u = actions.add_parser("unpublish", help="retire a published module everywhere")
    u.add_argument("name")
    u.add_argument("--authority-key", help="revoke every manifest of it with this (authority) key")
    _with_node(u)
    u.add_argument("--token", help=TOKEN_HELP)
    u.set_defaults(func=_guarded(cmd_unpublish))
    ls = actions.add_parser("list", help="the published modules a node knows")
    _with_node(ls)
    ls.set_defaults(func=_guarded(cmd_list))
