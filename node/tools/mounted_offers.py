"""A mounted server's resources, templates and prompts (`node.tools.offers`), through the
official client: listed with its tools, and the requests of its offers tool forwarded.

The SDK is imported lazily, like in `node.tools.mounted`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from vsmcp.node.tools.offers import Offers

if TYPE_CHECKING:
    from mcp.client.client import Client
    from pydantic import BaseModel

log = logging.getLogger(__name__)

MAX_LIST_PAGES: Final = 50
# What a result says about its own revision and server; the gateway sets its own.
REVISION_KEYS: Final = ("resultType", "ttlMs", "cacheScope", "_meta")


def dumped(model: BaseModel) -> dict[str, Any]:
    """A result model as its JSON object, without its revision's envelope keys."""
    out: dict[str, Any] = model.model_dump(by_alias=True, mode="json", exclude_none=True)
    for key in REVISION_KEYS:
        out.pop(key, None)
    return out


async def _all_pages(
    fetch: Callable[[str | None], Awaitable[Any]], field: str
) -> tuple[dict[str, Any], ...]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(MAX_LIST_PAGES):
        page = await fetch(cursor)
        items.extend(
            item.model_dump(by_alias=True, mode="json", exclude_none=True)
            for item in getattr(page, field)
        )
        cursor = page.next_cursor
        if not cursor:
            break
    return tuple(items)


async def list_offers(client: Client, mount: str) -> Offers:
    """What the server offers, by the capabilities it declared (none: no requests).

    A list the server refuses or answers malformed is taken as empty (logged): its
    tools and other lists still serve; a dead connection raises as for its tools."""
    caps = client.server_capabilities
    resources: tuple[dict[str, Any], ...] = ()
    templates: tuple[dict[str, Any], ...] = ()
    prompts: tuple[dict[str, Any], ...] = ()
    if caps.resources is not None:
        resources = await _listed(
            mount, lambda c: client.list_resources(cursor=c, cache_mode="bypass"), "resources"
        )
        templates = await _listed(
            mount,
            lambda c: client.list_resource_templates(cursor=c, cache_mode="bypass"),
            "resource_templates",
        )
    if caps.prompts is not None:
        prompts = await _listed(
            mount, lambda c: client.list_prompts(cursor=c, cache_mode="bypass"), "prompts"
        )
    return Offers(resources, templates, prompts)


async def _listed(
    mount: str, fetch: Callable[[str | None], Awaitable[Any]], field: str
) -> tuple[dict[str, Any], ...]:
    from mcp.shared.exceptions import MCPError
    from mcp_types import CONNECTION_CLOSED
    from pydantic import ValidationError

    try:
        return await _all_pages(fetch, field)
    except MCPError as exc:
        if exc.code == CONNECTION_CLOSED:
            raise
        log.warning("mount %s: its %s list was refused (%s): none offered", mount, field, exc)
    except ValidationError as exc:
        log.warning("mount %s: its %s list is malformed: none offered (%s)", mount, field, exc)
    return ()


def _strings(value: Any) -> dict[str, str] | None:
    if not isinstance(value, Mapping):
        return None
    return {str(k): str(v) for k, v in value.items()}


async def run_offer(client: Client, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Run one offer request on the server; its result as a JSON object.

    Raises the SDK's `MCPError` (the server's error) or pydantic's `ValidationError`
    (bad params, or an answer that is not the result it should be)."""
    from mcp_types import PromptReference, ResourceTemplateReference

    if method == "resources/read":
        return dumped(await client.read_resource(str(params.get("uri")), cache_mode="bypass"))
    if method == "prompts/get":
        name = str(params.get("name"))
        return dumped(await client.get_prompt(name, _strings(params.get("arguments"))))
    ref = params.get("ref")
    reference: PromptReference | ResourceTemplateReference
    if isinstance(ref, Mapping) and ref.get("type") == "ref/prompt":
        reference = PromptReference.model_validate(ref)
    else:
        reference = ResourceTemplateReference.model_validate(ref)
    context = params.get("context")
    result = await client.complete(
        reference,
        _strings(params.get("argument")) or {},
        _strings(context.get("arguments")) if isinstance(context, Mapping) else None,
    )
    return dumped(result)
