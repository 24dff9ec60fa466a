"""`vsmcp ask "…"`: a request in words, planned and run by a running node (System 4's
planner, `POST /api/ask`); `--dry-run` shows the plan only (`POST /api/plan`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from vsmcp.node.app.cli_tools import (
    CALL_TIMEOUT_S,
    EXIT_FAILED,
    EXIT_OK,
    _guarded,
    _node_url,
    _with_node,
    request_json,
)


def cmd_ask(args: argparse.Namespace) -> int:
    path = "/api/plan" if args.dry_run else "/api/ask"
    answer = request_json(
        _node_url(args) + path,
        "POST",
        token=args.token,
        body={"text": args.text},
        timeout_s=CALL_TIMEOUT_S,
    )
    if args.json:
        print(json.dumps(answer, indent=2))
    elif args.dry_run:
        print(_plan_text(answer))
    else:
        print(answer["text"])
    steps = answer.get("steps", [])
    failed = any(s.get("outcome", "ok") != "ok" for s in steps)
    return EXIT_FAILED if failed or not steps else EXIT_OK


def _plan_text(plan: dict[str, Any]) -> str:
    lines = [f"planner: {plan['planner']}, confidence {plan['confidence']}"]
    lines += [f"  {s['tool']} {json.dumps(s['arguments'])}" for s in plan["steps"]]
    for key in ("refusal", "note"):
        if plan.get(key):
            lines.append(f"{key}: {plan[key]}")
    return "\n".join(lines)


def add_ask_command(sub: Any) -> None:
    a = sub.add_parser("ask", help="ask a running node in words: it plans tool calls and runs them")
    a.add_argument("text", help='the request, e.g. "what time is it in Tokyo?"')
    a.add_argument("--dry-run", action="store_true", help="show the plan, run nothing")
    a.add_argument("--token", help="bearer token (default: loopback, no token)")
    _with_node(a)
    a.set_defaults(func=_guarded(cmd_ask))
