"""`vsmcp`: operate a node and the mesh authority from the shell.

    vsmcp keys init-authority --out authority.key
    vsmcp keys node [--data-dir DIR]
    vsmcp keys issue --authority-key authority.key --node NODE_ID --zone ops [--out FILE]
    vsmcp audit verify [--data-dir DIR]
    vsmcp audit verify --postgres DSN --node NODE_ID [--public-key KEY]
    vsmcp status [--data-dir DIR | --url URL]
    vsmcp peers [--data-dir DIR | --url URL]
    vsmcp mcp-stdio [--data-dir DIR | --url URL]
    vsmcp tools [--data-dir DIR | --url URL] [--offers] [--json]
    vsmcp call TOOL --arg key=value ... [--data-dir DIR | --url URL]
    vsmcp patterns test FILE_OR_DIR --events RECORDED.jsonl [--json]
    vsmcp policies [--data-dir DIR | --url URL] [--json]
    vsmcp policies revoke POLICY_ID --issuer NODE_ID [--key AUTHORITY_KEY] [--data-dir DIR]

Exit codes: 0 success; 1 the check or request failed; 2 bad arguments, key or config.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from vsmcp.mesh.certs import (
    DEFAULT_ZONES,
    ZoneOrder,
    certificate_to_pem,
    issue_certificate,
)
from vsmcp.mesh.errors import MeshError
from vsmcp.mesh.identity import NodeKey, load_key_file, save_key_file
from vsmcp.node import __version__
from vsmcp.node.app.cli_ask import add_ask_command
from vsmcp.node.app.cli_children import add_children_commands
from vsmcp.node.app.cli_patterns import add_pattern_commands
from vsmcp.node.app.cli_policies import add_policy_commands
from vsmcp.node.app.cli_tools import add_tool_commands
from vsmcp.node.app.cli_wasm import add_wasm_commands
from vsmcp.node.app.config import default_data_dir
from vsmcp.node.app.node import RUNTIME_FILE_NAME
from vsmcp.node.app.trust import KEY_FILE_NAME, load_node_key, parse_public_key
from vsmcp.node.errors import EXIT_BAD_CONFIG, NodeError
from vsmcp.node.mcp.stdio_auth import read_stdio_token
from vsmcp.node.store.audit import AuditVerifyResult, verify_audit_log
from vsmcp.node.store.audit_head import head_file_for
from vsmcp.node.store.database import db_path_for

EXIT_OK = 0
EXIT_FAILED = 1
SECONDS_PER_DAY = 86_400
HTTP_TIMEOUT_S = 5.0


class CliError(NodeError):
    """Bad arguments or unusable files: exit code 2."""


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()


def cmd_keys_init_authority(args: argparse.Namespace) -> int:
    path = Path(args.out)
    if path.exists() and not args.force:
        raise CliError(f"{path} exists; pass --force to replace it (every certificate dies)")
    key = NodeKey.generate()
    save_key_file(path, key)
    print(f"authority key written to {path} (mode 0600; keep it offline)")
    print(f"authority public key: {key.public_key.hex()}")
    print("put this in every node's config:")
    print(f'  [trust]\n  authority_public_key = "{key.public_key.hex()}"')
    return EXIT_OK


def cmd_keys_node(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = load_node_key(data_dir)
    if args.json:
        print(json.dumps({"node_id": key.node_id, "public_key": key.public_key.hex()}))
    else:
        print(f"node id:    {key.node_id}")
        print(f"public key: {key.public_key.hex()}")
        print(f"key file:   {data_dir / KEY_FILE_NAME}")
    return EXIT_OK


def cmd_keys_issue(args: argparse.Namespace) -> int:
    authority = load_key_file(Path(args.authority_key))
    try:
        node_public_key = parse_public_key(args.node)
    except ValueError as e:
        raise CliError(f"--node: {e}") from e
    zones = ZoneOrder(args.zones.split(",") if args.zones else DEFAULT_ZONES)
    zones.rank(args.zone)  # unknown zone: CertificateError names it
    if args.days <= 0:
        raise CliError("--days must be positive")
    roles = [r for r in (args.roles or "").split(",") if r]
    signed = issue_certificate(
        authority, node_public_key, args.zone, roles, args.days * SECONDS_PER_DAY, zones=zones
    )
    pem = certificate_to_pem(signed)
    if args.out:
        Path(args.out).write_text(pem, encoding="utf-8")
        print(f"certificate for zone {args.zone!r}, valid {args.days} days, written to {args.out}")
    else:
        sys.stdout.write(pem)
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    if args.postgres is not None:
        return cmd_audit_verify_postgres(args)
    if args.node is not None or args.public_key is not None:
        raise CliError("--node and --public-key go with --postgres")
    data_dir = _data_dir(args)
    db = db_path_for(data_dir)
    if not db.exists():
        raise CliError(f"no audit log at {db}")
    key = load_key_file(data_dir / KEY_FILE_NAME)
    result = verify_audit_log(db, key.public_key, head_file=head_file_for(data_dir))
    return _report_audit(result, "audit log")


def _report_audit(result: AuditVerifyResult, what: str) -> int:
    if result.ok:
        print(f"{what} intact: {result.entries} entries, chain and signatures verified")
        return EXIT_OK
    if result.first_bad_seq is None:
        print(f"{what} BROKEN: {result.reason}")
    else:
        print(f"{what} BROKEN at entry {result.first_bad_seq}: {result.reason}")
    return EXIT_FAILED


def cmd_audit_verify_postgres(args: argparse.Namespace) -> int:
    """Verify a node's audit mirror in PostgreSQL (`[bridges.postgres]`) on its own."""
    from vsmcp.node.bridges.postgres_verify import run_verify

    if args.node is None:
        raise CliError("--postgres needs --node NODE_ID (whose mirrored log to verify)")
    try:
        key_text = args.public_key if args.public_key is not None else args.node
        public_key = parse_public_key(key_text)
    except ValueError as e:
        raise CliError(f"--{'public-key' if args.public_key else 'node'}: {e}") from e
    result = asyncio.run(run_verify(args.postgres, args.node, public_key))
    return _report_audit(result, f"audit mirror of {args.node}")


def _status_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    runtime = _data_dir(args) / RUNTIME_FILE_NAME
    try:
        info = json.loads(runtime.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CliError(f"no running node found ({runtime} is absent); pass --url") from None
    except (OSError, ValueError) as e:
        raise CliError(f"cannot read {runtime}: {e}") from e
    return str(info["http_url"])


def _get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise RequestFailed(f"GET {url}: {e}") from e


class RequestFailed(NodeError):
    """The node did not answer: exit code 1."""


def cmd_status(args: argparse.Namespace) -> int:
    status = _get_json(_status_url(args) + "/api/status")
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        for key, value in status.items():
            print(f"{key:26} {value}")
    return EXIT_OK


def cmd_peers(args: argparse.Namespace) -> int:
    peers = _get_json(_status_url(args) + "/api/peers")["peers"]
    if args.json:
        print(json.dumps(peers, indent=2))
        return EXIT_OK
    print(f"{'NODE ID':54} {'NAME':16} {'STATE':8} {'ZONE':10} ENDPOINT")
    for p in peers:
        print(
            f"{p['id']:54} {p.get('name') or '-':16} {p['state']:8} {p.get('zone') or '-':10} "
            f"{p.get('endpoint') or '-'}"
        )
    return EXIT_OK


def cmd_mcp_stdio(args: argparse.Namespace) -> int:
    """Serve MCP on stdin/stdout, forwarding to the running node's /mcp."""
    url = _status_url(args) + "/mcp"
    asyncio.run(_serve_stdio_bridge(url, _stdio_token(args)))
    return EXIT_OK


def _stdio_token(args: argparse.Namespace) -> str | None:
    """The node's stdio secret, when the node was found through a data dir we can read
    (a bare --url may name another node: its data dir is unknown)."""
    token = None if args.url and not args.data_dir else read_stdio_token(_data_dir(args))
    if token is None:
        # On stderr (stdout is the MCP stream): why calls get the loopback zone.
        print(
            "vsmcp mcp-stdio: no stdio secret readable (pass --data-dir of a node run by "
            "this user); the node treats this bridge as a loopback client, not mcp.stdio_zone",
            file=sys.stderr,
        )
    return token


async def _serve_stdio_bridge(url: str, token: str | None) -> None:
    """Run the bridge in a task of its own: the SDK client cancels the task that entered
    it when its connection to the node fails (an anyio cancel scope), and that is told
    apart here from this command being cancelled: one line, not a traceback."""
    loop = asyncio.get_running_loop()
    lost = False

    def quiet_once_lost(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # Once the node is gone the SDK's generators fail again as they are closed.
        if not lost:
            loop.default_exception_handler(context)

    loop.set_exception_handler(quiet_once_lost)
    bridge = asyncio.create_task(_run_stdio_bridge(url, token), name="mcp-stdio-bridge")
    try:
        await asyncio.wait([bridge])
    finally:
        if not bridge.done():  # this command was cancelled (Ctrl-C): so is the bridge
            bridge.cancel()
            await asyncio.wait([bridge])
    if bridge.cancelled():
        lost = True
        raise RequestFailed(f"mcp-stdio: lost the connection to the node at {url}")
    bridge.result()


async def _run_stdio_bridge(url: str, token: str | None) -> None:
    # Imported here: the MCP SDK is heavy, and only this command needs it.
    from vsmcp.node.mcp.bridge import NodeClientCatalog
    from vsmcp.node.mcp.stdio import serve_stdio, stdio_streams

    try:
        async with NodeClientCatalog(url, token=token) as catalog:
            reader, writer = await stdio_streams()
            # No zone check happens here: the bridge's catalog forwards every call, and
            # the node applies mcp.stdio_zone (or the loopback zone) to it.
            await serve_stdio(
                catalog, reader, writer, caller_id="stdio", confirm_subscriptions=True
            )
    except OSError as e:
        raise RequestFailed(f"cannot reach the node at {url}: {e}") from e


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vsmcp", description="Operate vsmcp nodes and the mesh.")
    p.add_argument("--version", action="version", version=f"vsmcp {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    keys = sub.add_parser("keys", help="keys and certificates").add_subparsers(
        dest="keys_command", required=True
    )
    k = keys.add_parser("init-authority", help="create the mesh authority key")
    k.add_argument("--out", required=True, help="where to write the authority key (0600)")
    k.add_argument("--force", action="store_true", help="replace an existing key")
    k.set_defaults(func=cmd_keys_init_authority)

    k = keys.add_parser("node", help="show (creating if absent) this node's key")
    k.add_argument("--data-dir")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_keys_node)

    k = keys.add_parser("issue", help="sign a node certificate with the authority key")
    k.add_argument("--authority-key", required=True)
    k.add_argument("--node", required=True, help="node id (12D3KooW…) or public key (hex)")
    k.add_argument("--zone", required=True)
    k.add_argument("--roles", help="comma-separated roles")
    k.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    k.add_argument("--zones", help="ordered zones, lowest first (public,ops,restricted)")
    k.add_argument("--out", help="certificate file (default: stdout)")
    k.set_defaults(func=cmd_keys_issue)

    audit = sub.add_parser("audit", help="the audit log").add_subparsers(
        dest="audit_command", required=True
    )
    a = audit.add_parser("verify", help="check the hash chain and signatures")
    a.add_argument("--data-dir")
    a.add_argument("--postgres", metavar="DSN", help="verify the mirror in this database instead")
    a.add_argument("--node", help="with --postgres: the node id whose mirror to verify")
    a.add_argument(
        "--public-key", help="with --postgres: the node's key (default: from its node id)"
    )
    a.set_defaults(func=cmd_audit_verify)

    s = sub.add_parser("status", help="a running node's status")
    s.add_argument("--data-dir")
    s.add_argument("--url", help="the node's HTTP URL (default: from the data dir)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("peers", help="the mesh members a running node sees, with their states")
    s.add_argument("--data-dir")
    s.add_argument("--url", help="the node's HTTP URL (default: from the data dir)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_peers)

    s = sub.add_parser(
        "mcp-stdio", help="serve the mesh's tools over MCP on stdin/stdout (via a running node)"
    )
    s.add_argument("--data-dir")
    s.add_argument("--url", help="the node's HTTP URL (default: from the data dir)")
    s.set_defaults(func=cmd_mcp_stdio)

    add_tool_commands(sub)
    add_pattern_commands(sub)
    add_policy_commands(sub)
    add_wasm_commands(sub)
    add_children_commands(sub)
    add_ask_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except RequestFailed as e:
        print(f"vsmcp: {e}", file=sys.stderr)
        return EXIT_FAILED
    except (NodeError, MeshError) as e:
        print(f"vsmcp: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    return code


if __name__ == "__main__":
    sys.exit(main())
