"""`vsmcp spawn`, `vsmcp children`, `vsmcp stop-child`: the child VSMs of a running node.

    vsmcp spawn --data-dir PARENT_DIR [--name NAME] [--config CHILD.toml] [--zone Z] [--no-wait]
    vsmcp children [--data-dir DIR | --url URL] [--json]
    vsmcp stop-child NAME [--data-dir DIR | --url URL]

Spawning and stopping go through the node (`POST /api/children`, `DELETE
/api/children/NAME`). With `--data-dir` the command proves it is the node's own user
with the secret in `<data_dir>/stdio.token`; with `--url` it needs `--token` (or
`VSMCP_TOKEN`), a bearer token of `mcp.tokens` in `recursion.spawn_zone` or above.

Exit codes: 0 success; 1 the node is unreachable or refused; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import secrets
import time
from pathlib import Path
from typing import Any

from vsmcp.node.app.cli_tools import (
    EXIT_OK,
    ToolsCliError,
    _guarded,
    _node_url,
    _with_node,
    bearer_token,
    request_json,
)

SPAWN_WAIT_S = 30.0


def cmd_spawn(args: argparse.Namespace) -> int:
    base = _node_url(args)
    name = args.name or f"child-{secrets.token_hex(3)}"
    body: dict[str, Any] = {"name": name, "zone": args.zone or ""}
    if args.config:
        body["config"] = str(Path(args.config).expanduser().resolve())
    view = request_json(base + "/api/children", "POST", bearer_token(args), body)
    if not args.no_wait:
        view = _wait_running(base, name)
    print(json.dumps(view, indent=2))
    return EXIT_OK


def _wait_running(base: str, name: str) -> dict[str, Any]:
    deadline = time.monotonic() + SPAWN_WAIT_S
    while True:
        children = request_json(base + "/api/children", "GET", None)["children"]
        view: dict[str, Any] = next((c for c in children if c["name"] == name), {})
        if view.get("state") == "running":
            return view
        if view.get("state") == "quarantined" or time.monotonic() > deadline:
            raise ToolsCliError(f"child {name} is not running: {json.dumps(view)}")
        time.sleep(0.1)


def cmd_children(args: argparse.Namespace) -> int:
    view = request_json(_node_url(args) + "/api/children", "GET", None)
    if args.json:
        print(json.dumps(view, indent=2))
        return EXIT_OK
    print(f"{'NAME':20} {'STATE':12} {'PID':>7} {'DEPTH':>5} {'RESTARTS':>8} NODE")
    for c in view["children"]:
        print(
            f"{c['name']:20} {c['state']:12} {c['pid'] or '-':>7} {c['depth']:>5} "
            f"{c['restarts']:>8} {c['node_id'] or '-'}"
        )
    return EXIT_OK


def cmd_stop_child(args: argparse.Namespace) -> int:
    answer = request_json(
        f"{_node_url(args)}/api/children/{args.name}", "DELETE", bearer_token(args)
    )
    print(json.dumps(answer))
    return EXIT_OK


def add_children_commands(sub: Any) -> None:
    """Add `spawn`, `children` and `stop-child` to `vsmcp`'s subparsers."""
    s = sub.add_parser("spawn", help="spawn a child VSM of a running node")
    _with_node(s)
    s.add_argument("--name", help="the child's name (default: child-XXXXXX)")
    s.add_argument("--config", help="the child's own TOML config")
    s.add_argument("--zone", help="its certificate's zone (default: the parent's)")
    s.add_argument("--token", help="a bearer token (with --url)")
    s.add_argument("--no-wait", action="store_true", help="do not wait until it runs")
    s.set_defaults(func=_guarded(cmd_spawn))

    c = sub.add_parser("children", help="the child VSMs of a running node")
    _with_node(c)
    c.set_defaults(func=_guarded(cmd_children))

    t = sub.add_parser("stop-child", help="stop one child VSM of a running node")
    t.add_argument("name")
    _with_node(t)
    t.add_argument("--token", help="a bearer token (with --url)")
    t.set_defaults(func=_guarded(cmd_stop_child))
