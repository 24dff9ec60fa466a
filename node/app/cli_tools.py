"""`vsmcp tools` and `vsmcp call`: the mesh's tools as a running node sees them, and one
call through that node's /mcp with the official MCP SDK client.

    vsmcp tools [--offers] [--data-dir DIR | --url URL] [--json]
    vsmcp call TOOL [--arg key=value ...] [--json-args '{...}'] [--token T] [--legacy]
               [--data-dir DIR | --url URL] [--json]

`vsmcp tools` prints the tools, then (under OFFERS) the offers tools `vsm.mcp.<unit>`
that carry units' resources and prompts (docs/mcp-resources.md); `--offers` prints only
those. `--json` prints one list: the tools (as before offers were shown), or the offers.

`--arg` values are read as JSON when they parse (`--arg n=3` is the number 3,
`--arg s='"3"'` the string), else taken as text. Exit codes: 0 success; 1 the node
answered with an error (the JSON-RPC message is printed) or the tool's result is an
error, or the node is unreachable; 2 bad arguments.

Hook into `node.cli.build_parser` with `add_tool_commands(sub)`; runnable on its own
as `python -m vsmcp.node.app.cli_tools`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from vsmcp.node.app.config import default_data_dir
from vsmcp.node.app.node import RUNTIME_FILE_NAME
from vsmcp.node.mcp.stdio_auth import stdio_token_path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
HTTP_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = 60.0


class ToolsCliError(Exception):
    """A problem the command reports and exits on; `code` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _node_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    runtime = data_dir / RUNTIME_FILE_NAME
    try:
        info = json.loads(runtime.read_text(encoding="utf-8"))
        return str(info["http_url"]).rstrip("/")
    except FileNotFoundError:
        raise ToolsCliError(f"no running node found ({runtime} is absent); pass --url") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ToolsCliError(f"cannot read {runtime}: {e}") from e


def bearer_token(args: argparse.Namespace) -> str | None:
    """The token for a node's privileged routes: `--token`, else `VSMCP_TOKEN`, else (no
    `--url`) the data dir's stdio secret, which proves the caller is the node's user."""
    if getattr(args, "token", None):
        return str(args.token)
    if os.environ.get("VSMCP_TOKEN"):
        return os.environ["VSMCP_TOKEN"]
    if args.url:
        return None
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    try:
        return stdio_token_path(data_dir).read_text(encoding="utf-8").strip()
    except OSError:
        return None


def parse_arguments(pairs: list[str], json_args: str | None) -> dict[str, Any]:
    """Tool arguments from `--json-args` then `--arg key=value` pairs (which win)."""
    arguments: dict[str, Any] = {}
    if json_args:
        try:
            value = json.loads(json_args)
        except ValueError as e:
            raise ToolsCliError(f"--json-args is not JSON: {e}", EXIT_USAGE) from None
        if not isinstance(value, dict):
            raise ToolsCliError("--json-args must be a JSON object", EXIT_USAGE)
        arguments.update(value)
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ToolsCliError(f"--arg {pair!r}: expected key=value", EXIT_USAGE)
        try:
            arguments[key] = json.loads(text)
        except ValueError:
            arguments[key] = text
    return arguments


def request_json(
    url: str,
    method: str = "GET",
    token: str | None = None,
    body: Any = None,
    timeout_s: float = HTTP_TIMEOUT_S,
) -> Any:
    """One JSON request to a node's HTTP API: the decoded answer, or `ToolsCliError`
    naming the URL and the node's status and message."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise ToolsCliError(f"{url}: {e.code} {e.read().decode(errors='replace')}") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ToolsCliError(f"{url}: {e}") from e


def cmd_tools(args: argparse.Namespace) -> int:
    url = _node_url(args) + "/api/tools"
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            listed = json.loads(response.read())
        tools, offers = listed["tools"], listed.get("offers", [])
    except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
        raise ToolsCliError(f"GET {url}: {e}") from e
    # `--json` stays the list it always was (scripts read it): the tools, or with
    # `--offers` the offers tools alone.
    if args.json:
        print(json.dumps(offers if args.offers else tools, indent=2))
        return EXIT_OK
    if args.offers:
        _print_table("OFFERS", offers)
        return EXIT_OK
    _print_table("TOOL", tools)
    if offers:
        # The units offering resources and prompts through the mesh (never called as tools).
        print()
        _print_table("OFFERS", offers)
    return EXIT_OK


def _print_table(heading: str, rows: list[dict[str, Any]]) -> None:
    print(f"{heading:32} {'ZONE':10} {'STATE':8} PROVIDER")
    for t in sorted(rows, key=lambda t: (t["name"], t["provider"])):
        state = t.get("provider_state") or "-"
        print(f"{t['name']:32} {t['zone']:10} {state:8} {t['provider']}")


def cmd_call(args: argparse.Namespace) -> int:
    arguments = parse_arguments(args.arg or [], args.json_args)
    url = _node_url(args) + "/mcp"
    mode = "legacy" if args.legacy else "auto"
    return asyncio.run(_call(url, args.tool, arguments, mode, args.token, args.json))


async def _call(
    url: str, tool: str, arguments: dict[str, Any], mode: str, token: str | None, as_json: bool
) -> int:
    # Imported here: the SDK is heavy and only this command needs it.
    import httpx2
    from mcp.client.client import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.exceptions import MCPError

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    error: MCPError | None = None
    try:
        async with httpx2.AsyncClient(headers=headers, timeout=CALL_TIMEOUT_S) as http:
            transport = streamable_http_client(url, http_client=http)
            async with Client(transport, mode=mode, cache=None) as client:
                try:
                    result = await client.call_tool(tool, arguments)
                except MCPError as e:  # inside: the client's task group would wrap it
                    error = e
    except (OSError, httpx2.HTTPError) as e:
        print(f"vsmcp: cannot reach the node at {url}: {e}", file=sys.stderr)
        return EXIT_FAILED
    if error is not None:
        detail = f" {json.dumps(error.data)}" if error.data is not None else ""
        print(f"vsmcp: error {error.code}: {error.message}{detail}", file=sys.stderr)
        return EXIT_FAILED
    dumped = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    if as_json:
        print(json.dumps(dumped, indent=2))
    else:
        for item in dumped.get("content", []):
            print(item.get("text") if item.get("type") == "text" else json.dumps(item))
    return EXIT_FAILED if result.is_error else EXIT_OK


def _with_node(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir")
    p.add_argument("--url", help="the node's HTTP URL (default: from the data dir)")
    p.add_argument("--json", action="store_true")


def add_tool_commands(sub: Any) -> None:
    """Add `tools` and `call` to `vsmcp`'s subparsers."""
    t = sub.add_parser("tools", help="the mesh's tools (the registry a running node sees)")
    t.add_argument(
        "--offers",
        action="store_true",
        help="only the offers tools (vsm.mcp.*: units offering resources and prompts)",
    )
    _with_node(t)
    t.set_defaults(func=_guarded(cmd_tools))

    c = sub.add_parser("call", help="call a tool through a running node's /mcp")
    c.add_argument("tool")
    c.add_argument("--arg", action="append", metavar="KEY=VALUE", help="repeatable")
    c.add_argument("--json-args", metavar="JSON", help="arguments as one JSON object")
    c.add_argument("--token", help="bearer token for /mcp (default: loopback, no token)")
    c.add_argument("--legacy", action="store_true", help="speak 2025-11-25 (sessions)")
    _with_node(c)
    c.set_defaults(func=_guarded(cmd_call))


def _guarded(command: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            code: int = command(args)
        except ToolsCliError as e:
            print(f"vsmcp: {e}", file=sys.stderr)
            return e.code
        return code

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vsmcp", description="The mesh's tools.")
    add_tool_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
