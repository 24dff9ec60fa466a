"""What a chat types and what it reads back: command parsing (`/call TOOL key=value ...`)
and the rendering of tools, results and errors as chat text. No I/O here."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from vsmcp.node.tools.errors import ToolError
from vsmcp.node.tools.model import ToolResult, ToolSpec

COMMANDS: Final = {
    "/help": "this list",
    "/tools": "the tools this chat may call",
    "/call": "TOOL key=value ... — call a tool (values are JSON when they parse, else text)",
    "/status": "this node's status",
    "/peers": "the peers this node knows",
    "/history": "what this chat asked and what was done (kept across restarts)",
}
# Tools listed by /tools before the list says how many more there are.
MAX_LISTED_TOOLS: Final = 60
MAX_DESCRIPTION_CHARS: Final = 100
# Telegram's limit on one message's text, in characters.
MAX_MESSAGE_CHARS: Final = 4096
# A reply longer than this many messages is cut (and says so): one question must not
# flood a chat, nor hold the bridge for minutes of rate limits.
MAX_REPLY_MESSAGES: Final = 5
_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_.\-]*)=")
_decoder = json.JSONDecoder()


class CommandError(ValueError):
    """A command the chat typed wrong; the message says how to type it."""


@dataclass(frozen=True, slots=True)
class Command:
    name: str  # "/call", or "" for free text
    rest: str


def parse_command(text: str) -> Command:
    """`/name@bot rest` -> Command("/name", "rest"); free text -> Command("", text)."""
    stripped = text.strip()
    if not stripped.startswith("/"):
        return Command("", stripped)
    head, _, rest = stripped.partition(" ")
    name = head.split("@", 1)[0].lower()
    return Command(name, rest.strip())


def parse_call(rest: str) -> tuple[str, dict[str, Any]]:
    """`TOOL key=value ...` -> (tool, arguments). A value is JSON when it parses as JSON
    (`n=3`, `flag=true`, `tags=["a","b"]`, `text="two words"`), else the text up to the
    next blank (`city=Tokyo`)."""
    tool, _, args = rest.strip().partition(" ")
    if not tool:
        raise CommandError("usage: /call TOOL key=value ... (see /tools for the names)")
    arguments: dict[str, Any] = {}
    pos = 0
    while True:
        while pos < len(args) and args[pos].isspace():
            pos += 1
        if pos >= len(args):
            return tool, arguments
        match = _KEY.match(args, pos)
        if match is None:
            near = args[pos : pos + 20]
            raise CommandError(f"expected key=value near {near!r} (usage: /call TOOL key=value)")
        key = match.group(1)
        if key in arguments:
            raise CommandError(f"argument {key!r} is given twice")
        arguments[key], pos = _value(args, match.end())


def _value(args: str, pos: int) -> tuple[Any, int]:
    if pos < len(args) and args[pos] in '"{[':
        try:
            value, end = _decoder.raw_decode(args, pos)
        except json.JSONDecodeError as e:
            raise CommandError(f"the value at {args[pos : pos + 20]!r} is not JSON: {e.msg}") from e
        return value, end
    end = pos
    while end < len(args) and not args[end].isspace():
        end += 1
    word = args[pos:end]
    try:
        return json.loads(word), end
    except json.JSONDecodeError:
        return word, end


def help_text(zone: str, planner: bool) -> str:
    lines = [f"This chat calls tools in zone {zone!r}. Commands:"]
    lines += [f"{name} — {what}" for name, what in COMMANDS.items()]
    if planner:
        lines.append("Or just write what you want done.")
    return "\n".join(lines)


def no_planner_text(zone: str) -> str:
    return "I understand only commands here (no planner runs on this node).\n" + help_text(
        zone, planner=False
    )


def tools_text(specs: Sequence[ToolSpec], zone: str) -> str:
    if not specs:
        return f"No tool is open to zone {zone!r}."
    lines = [f"{len(specs)} tools open to zone {zone!r}:"]
    for spec in specs[:MAX_LISTED_TOOLS]:
        description = (spec.description or "").split("\n", 1)[0][:MAX_DESCRIPTION_CHARS]
        lines.append(f"• {spec.name}" + (f" — {description}" if description else ""))
    if len(specs) > MAX_LISTED_TOOLS:
        lines.append(f"… and {len(specs) - MAX_LISTED_TOOLS} more")
    return "\n".join(lines)


def result_text(tool: str, result: ToolResult) -> str:
    """A tool's answer as chat text; an error result says that it is one."""
    pieces = []
    for item in result.get("content") or []:
        if isinstance(item, Mapping) and item.get("type") == "text":
            pieces.append(str(item.get("text", "")))
        elif isinstance(item, Mapping):
            pieces.append(f"[{item.get('type', 'content')}]")
    if not pieces and isinstance(result.get("structuredContent"), Mapping):
        pieces.append(json.dumps(result["structuredContent"], indent=1, default=str))
    body = "\n".join(pieces) or "(no content)"
    if result.get("isError"):
        return f"⚠ {tool} reported an error:\n{body}"
    return body


def error_text(tool: str, error: ToolError) -> str:
    """A refusal or failure, explained: what happened and, when it helps, what to do."""
    hint = {
        "unknown_tool": " (see /tools for the names this chat may call)",
        "invalid_arguments": " (see /tools; values are JSON when they parse, else text)",
        "rate_limited": " (try again later)",
    }.get(getattr(error, "reason", ""), "")
    return f"✗ {tool}: {error.message}{hint}"


def view_text(title: str, data: Any) -> str:
    """A view (`vsm.status`, `vsm.peers`) as indented JSON under a title."""
    return f"{title}\n{json.dumps(data, indent=1, sort_keys=True, default=str)}"


def status_text(title: str, data: Mapping[str, Any]) -> str:
    """`vsm.status` for a chat: the few lines an operator reads on a phone (the whole
    document is `GET /api/vsm` and the status page)."""
    viability = data.get("viability") or {}
    units = (data.get("s1") or {}).get("units") or []
    unit_states: dict[str, int] = {}
    for unit in units:
        state = str(unit.get("state", "?"))
        unit_states[state] = unit_states.get(state, 0) + 1
    bridges = data.get("bridges") or {}
    lines = [
        title,
        f"node {data.get('node_id', '?')} (zone {data.get('zone', '?')}, "
        f"version {data.get('version', '?')}), up {float(data.get('uptime_s', 0)):.0f} s",
        f"viability: node {viability.get('node', '?')}, mesh {viability.get('mesh', '?')}",
        "peers: " + _counts(data.get("peers") or {}),
        f"units: {len(units)} (" + _counts(unit_states) + ")",
        f"shedding: {(data.get('s5') or {}).get('shedding') or 'none'}",
    ]
    if bridges:
        lines.append(
            "bridges: " + ", ".join(f"{n} {b.get('state', '?')}" for n, b in bridges.items())
        )
    if data.get("children"):
        lines.append("children: " + _counts(data["children"]))
    return "\n".join(lines)


def _counts(counts: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def history_text(turns: Sequence[Mapping[str, Any]]) -> str:
    if not turns:
        return "Nothing asked in this chat yet (or it has expired)."
    lines = [f"The last {len(turns)} turns of this chat:"]
    for turn in turns:
        lines.append(f"» {turn.get('asked', '')}\n  → {turn.get('done', '')}")
    return "\n".join(lines)


def split_message(text: str) -> list[str]:
    """`text` in pieces of at most `MAX_MESSAGE_CHARS`, cut at a line break when there is
    one in the second half of a piece; at most `MAX_REPLY_MESSAGES` pieces, the last
    saying that the rest was cut."""
    text = text or "(empty)"
    parts: list[str] = []
    rest = text
    while rest:
        if len(parts) == MAX_REPLY_MESSAGES - 1 and len(rest) > MAX_MESSAGE_CHARS:
            note = "\n… (the rest is cut: the reply is too long for a chat)"
            parts.append(rest[: MAX_MESSAGE_CHARS - len(note)] + note)
            break
        if len(rest) <= MAX_MESSAGE_CHARS:
            parts.append(rest)
            break
        cut = rest.rfind("\n", MAX_MESSAGE_CHARS // 2, MAX_MESSAGE_CHARS)
        cut = cut + 1 if cut > 0 else MAX_MESSAGE_CHARS
        parts.append(rest[:cut])
        rest = rest[cut:]
    return parts
