"""Resources, resource templates and prompts as mesh capabilities ("offers").

A unit that offers resources or prompts (a mounted server that has them, the built-in
unit's `vsmcp://node/status`) declares one more tool, `vsm.mcp.<unit>`: its input
schema carries the unit's lists under `x-vsmcp-offers`, and calling it runs one MCP
request on the unit (`{"method": "resources/read" | "prompts/get" |
"completion/complete", "params": {...}}`), answering the MCP result as the call's
`structuredContent`. So the lists are announced, signed and replicated with the tool
registry, and a read or a prompt goes through the tool path: zones, rate limits,
routing and failover, pinning (`_meta` `vsmcp/node`), audit. The gateway
(`node.mcp.offers`) merges the lists and never shows these tools in `tools/list`.

Everything read from an announcement is checked and capped here (`offers_of`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from vsmcp.node.errors import clip
from vsmcp.node.tools.errors import ProviderError, ToolError, UnknownTool
from vsmcp.node.tools.model import ToolResult, ToolSpec

OFFERS_TOOL_PREFIX: Final = "vsm.mcp."
OFFERS_KEY: Final = "x-vsmcp-offers"
# The requests an offers tool runs (the lists are announced, not called).
# `resources/subscribe` runs until the call's deadline (less a margin), passing each
# `notifications/resources/updated` of the URI to the caller (`ClientChannel.notify`);
# the entry node calls it again while its client stays subscribed.
SUBSCRIBE_METHOD: Final = "resources/subscribe"
OFFER_METHODS: Final = ("resources/read", "prompts/get", "completion/complete", SUBSCRIBE_METHOD)
# Per unit and kind: more are cut (a server with thousands should use templates).
MAX_OFFERS_PER_KIND: Final = 256
MAX_URI_CHARS: Final = 2048


class UnknownOffer(UnknownTool):
    """No provider on the mesh offers that resource, template or prompt (-32602)."""

    reason = "unknown_offer"

    def __init__(self, what: str, key: str) -> None:
        ToolError.__init__(self, f"Unknown {what}: {clip(key)!r}", {what: clip(key)})


def offers_tool_name(unit: str) -> str:
    return OFFERS_TOOL_PREFIX + unit


def is_offers_tool(name: str) -> bool:
    return name.startswith(OFFERS_TOOL_PREFIX)


def client_tool_name(name: str) -> str:
    """`name`, if a client may call it as a tool: an offers tool is no tool to clients
    (UnknownTool, as for a name nothing offers); its requests have their own methods.
    The catalogs' `call_tool` (what every client-facing entry calls: MCP, its MQTT and
    AMQP carriers, Telegram, System 4) checks it; `call_offers_tool` is the way in for
    resources, prompts and completion."""
    if is_offers_tool(name):
        raise UnknownTool(name)
    return name


@dataclass(frozen=True, slots=True)
class Offers:
    """What one unit offers: MCP `Resource`, `ResourceTemplate` and `Prompt` objects."""

    resources: tuple[dict[str, Any], ...] = ()
    templates: tuple[dict[str, Any], ...] = ()
    prompts: tuple[dict[str, Any], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.resources or self.templates or self.prompts)

    def has_resource(self, uri: str) -> bool:
        return any(r.get("uri") == uri for r in self.resources)

    def has_template(self, template: str) -> bool:
        return any(t.get("uriTemplate") == template for t in self.templates)

    def matches_template(self, uri: str) -> bool:
        return any(template_matches(t["uriTemplate"], uri) for t in self.templates)

    def has_prompt(self, name: str) -> bool:
        return any(p.get("name") == name for p in self.prompts)


def offers_spec(unit: str, offers: Offers, zone: str, provider: Any) -> ToolSpec:
    """The offers tool of `unit` (`provider`: its `ProviderKind`)."""
    schema = {
        "type": "object",
        "properties": {
            "method": {"type": "string", "enum": list(OFFER_METHODS)},
            "params": {"type": "object"},
        },
        "required": ["method", "params"],
        OFFERS_KEY: {
            "resources": list(offers.resources),
            "resourceTemplates": list(offers.templates),
            "prompts": list(offers.prompts),
        },
    }
    return ToolSpec(
        name=offers_tool_name(unit),
        description=f"Resources and prompts of {unit} (MCP requests; not listed as a tool).",
        input_schema=schema,
        zone=zone,
        provider=provider,
    )


def _objects(value: Any, key: str) -> tuple[dict[str, Any], ...]:
    """The dicts of `value` that have a string `key` (capped), others dropped."""
    if not isinstance(value, list):
        return ()
    out = [
        dict(item)
        for item in value[:MAX_OFFERS_PER_KIND]
        if isinstance(item, Mapping)
        and isinstance(item.get(key), str)
        and 0 < len(item[key]) <= MAX_URI_CHARS
    ]
    return tuple(out)


def offers_of(spec: ToolSpec) -> Offers | None:
    """The offers an offers tool announces; None for any other tool."""
    if not is_offers_tool(spec.name):
        return None
    declared = spec.input_schema.get(OFFERS_KEY)
    if not isinstance(declared, Mapping):
        return None
    return Offers(
        resources=_objects(declared.get("resources"), "uri"),
        templates=_objects(declared.get("resourceTemplates"), "uriTemplate"),
        prompts=_objects(declared.get("prompts"), "name"),
    )


def offer_result(result: Mapping[str, Any]) -> ToolResult:
    """An MCP result as the answer of an offers tool call."""
    return {"content": [], "isError": False, "structuredContent": dict(result)}


def result_of(tool: str, answer: ToolResult) -> dict[str, Any]:
    """The MCP result inside an offers tool's answer."""
    result = answer.get("structuredContent")
    if answer.get("isError") or not isinstance(result, dict):
        raise ProviderError(tool, f"{tool} answered without a result")
    return result


def offer_request(arguments: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """`(method, params)` of an offers tool call (its schema was checked on admission)."""
    method = arguments.get("method")
    params = arguments.get("params")
    if method not in OFFER_METHODS or not isinstance(params, dict):
        raise ProviderError("vsm.mcp", f"not an offer request: {str(method)[:64]!r}")
    return str(method), params


def contents_chars(result: Mapping[str, Any]) -> int:
    """The size of a `ReadResourceResult`'s texts and blobs (what makes it large)."""
    total = 0
    contents = result.get("contents")
    for item in contents if isinstance(contents, list) else ():
        if isinstance(item, Mapping):
            for key in ("text", "blob"):
                value = item.get(key)
                if isinstance(value, str):
                    total += len(value)
    return total


_EXPRESSION = re.compile(r"\{([+#./;?&]?)([^}]*)\}")


def template_matches(template: str, uri: str) -> bool:
    """Whether `uri` is an expansion of the RFC 6570 `template` (simple and reserved
    expansions; `{?q}`-style query parts match any query)."""
    pattern = []
    last = 0
    for m in _EXPRESSION.finditer(template):
        pattern.append(re.escape(template[last : m.start()]))
        operator = m.group(1)
        if operator in ("+", "#"):
            pattern.append(".+")
        elif operator in ("?", "&"):
            pattern.append(r"(?:[?&].*)?")
        else:
            pattern.append("[^/?#]+")
        last = m.end()
    pattern.append(re.escape(template[last:]))
    return re.fullmatch("".join(pattern), uri) is not None


def merged(kind: str, key: str, providers: Sequence[Offers]) -> list[dict[str, Any]]:
    """One list of `kind` across providers, the first provider of each `key` kept."""
    seen: set[str] = set()
    out = []
    for offers in providers:
        for item in getattr(offers, kind):
            if item[key] not in seen:
                seen.add(item[key])
                out.append(item)
    return out
