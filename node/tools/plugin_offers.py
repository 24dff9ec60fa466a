"""Resources and prompts of Python code (`node.tools.offers`): `offers_tool` builds the
offers tool of a unit from plain functions, for a `vsmcp.tools` entry point (which may
return it beside its tools) and for the built-in unit's `vsmcp://node/status`.

A resource function takes no argument and returns text (`str`) or JSON-able data (sent
as JSON text); a prompt function takes the prompt's arguments as keyword strings and
returns the text of one user message. Both may be coroutines.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vsmcp.node.tools.errors import InvalidArguments
from vsmcp.node.tools.functions import PluginTool
from vsmcp.node.tools.model import CallContext, ProviderKind, ToolResult
from vsmcp.node.tools.offers import Offers, offer_request, offer_result, offers_spec


@dataclass(frozen=True, slots=True)
class PluginResource:
    uri: str
    fn: Callable[[], Any]
    name: str
    description: str = ""
    mime_type: str = "text/plain"

    def listed(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "name": self.name,
            "description": self.description,
            "mimeType": self.mime_type,
        }


@dataclass(frozen=True, slots=True)
class PluginPrompt:
    name: str
    fn: Callable[..., Any]
    description: str = ""
    # Argument names; those without a default in `fn` are required.
    arguments: tuple[str, ...] = ()

    def listed(self) -> dict[str, Any]:
        params = inspect.signature(self.fn).parameters
        args = [
            {"name": a, "required": a in params and params[a].default is inspect.Parameter.empty}
            for a in self.arguments
        ]
        return {"name": self.name, "description": self.description, "arguments": args}


async def _value(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


def offers_tool(
    unit: str,
    *,
    resources: Sequence[PluginResource] = (),
    prompts: Sequence[PluginPrompt] = (),
    zone: str = "public",
    provider: ProviderKind = "plugin",
) -> PluginTool:
    """The offers tool `vsm.mcp.<unit>` serving `resources` and `prompts`."""
    by_uri = {r.uri: r for r in resources}
    by_name = {p.name: p for p in prompts}
    offers = Offers(
        resources=tuple(r.listed() for r in resources),
        prompts=tuple(p.listed() for p in prompts),
    )
    spec = offers_spec(unit, offers, zone, provider)

    async def run(arguments: Mapping[str, Any], ctx: CallContext) -> ToolResult:
        method, params = offer_request(arguments)
        if method == "resources/read" and params.get("uri") in by_uri:
            resource = by_uri[params["uri"]]
            value = await _value(resource.fn())
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            contents = [{"uri": resource.uri, "mimeType": resource.mime_type, "text": text}]
            return offer_result({"contents": contents})
        if method == "prompts/get" and params.get("name") in by_name:
            prompt = by_name[params["name"]]
            given = params.get("arguments")
            kwargs = {k: str(v) for k, v in (given or {}).items() if k in prompt.arguments}
            try:
                text = str(await _value(prompt.fn(**kwargs)))
            except TypeError as e:  # a required argument missing
                raise InvalidArguments(spec.name, str(e), "params.arguments") from None
            message = {"role": "user", "content": {"type": "text", "text": text}}
            return offer_result({"description": prompt.description, "messages": [message]})
        raise InvalidArguments(spec.name, f"{unit} offers no {method} of that", "params")

    return PluginTool(
        name=spec.name,
        fn=run,
        description=spec.description,
        input_schema=spec.input_schema,
        zone=zone,
    )
