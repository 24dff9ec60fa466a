"""The gateway's resources, prompts and completion over the mesh's offers tools
(`node.tools.offers`).

Lists merge what the caller's zone may see across every provider (the first provider
of a URI or prompt name, in tool-name order, is the one listed). `resources/read`,
`prompts/get` and `completion/complete` go to the provider that offers the resource
(exactly, else by a matching template), the prompt, or the template, as a call of its
offers tool: zones, limits, routing, pinning and audit are the tool path's. A resource
that only a zone the caller lacks offers is refused as that call would be (-32010).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol, runtime_checkable

from vsmcp.node.routing.pinning import NotOnNode
from vsmcp.node.tools.errors import InvalidArguments
from vsmcp.node.tools.model import CallContext, ToolCatalog, ToolResult, ToolSpec
from vsmcp.node.tools.offers import (
    MAX_URI_CHARS,
    OFFER_METHODS,
    SUBSCRIBE_METHOD,
    Offers,
    UnknownOffer,
    merged,
    offers_of,
    result_of,
)

LIST_METHODS: Final[Mapping[str, tuple[str, str, str]]] = {
    # method: (Offers field, result key, identity key)
    "resources/list": ("resources", "resources", "uri"),
    "resources/templates/list": ("templates", "resourceTemplates", "uriTemplate"),
    "prompts/list": ("prompts", "prompts", "name"),
}
# Answered by `OffersGateway.handle`; `resources/subscribe` is kept by a session
# (`node.mcp.subscriptions`, over HTTP and stdio).
OFFERS_METHODS: Final = frozenset((*LIST_METHODS, *OFFER_METHODS)) - {SUBSCRIBE_METHOD}
LIST_CHANGED: Final = (
    "notifications/tools/list_changed",
    "notifications/resources/list_changed",
    "notifications/prompts/list_changed",
)
# `subscriptions/listen` flags honoured, and the notification each one asks for.
LISTEN_FLAGS: Final[Mapping[str, str]] = {
    "toolsListChanged": LIST_CHANGED[0],
    "resourcesListChanged": LIST_CHANGED[1],
    "promptsListChanged": LIST_CHANGED[2],
}
OFFERS_CAPABILITIES: Final[Mapping[str, Any]] = {
    "resources": {"listChanged": True},
    "prompts": {"listChanged": True},
    "completions": {},
}


@runtime_checkable
class OffersCatalog(Protocol):
    """A catalog with offers tools (`LocalCatalog`, `MeshCatalog`); any other offers none."""

    def list_offer_tools(self, ctx: CallContext) -> list[ToolSpec]:
        """The offers tools `ctx` may use."""
        ...

    def all_offer_tools(self) -> list[ToolSpec]:
        """Every usable offers tool, whoever asks (to refuse one by zone)."""
        ...

    async def call_offers_tool(
        self, name: str, arguments: Mapping[str, Any], ctx: CallContext
    ) -> ToolResult:
        """Call the offers tool `name` (`call_tool` refuses offers tools)."""
        ...


Pick = Callable[[Offers], bool]


def _string(params: Mapping[str, Any], key: str, method: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value or len(value) > MAX_URI_CHARS:
        raise InvalidArguments(
            method, f"{key!r} must be a non-empty string of at most {MAX_URI_CHARS}", key
        )
    return value


class OffersGateway:
    """resources/*, prompts/* and completion/complete over a `ToolCatalog`."""

    def __init__(self, catalog: ToolCatalog) -> None:
        self.catalog = catalog

    def _offers(self, specs: list[ToolSpec]) -> list[tuple[str, Offers]]:
        out = []
        for spec in specs:
            offers = offers_of(spec)
            if offers:
                out.append((spec.name, offers))
        return out

    def _providers(self, ctx: CallContext, picks: tuple[Pick, ...]) -> list[str]:
        """The offers tools to ask, best first: visible matches of the first pick, of the
        next...; then those the caller may not see (a call is refused by zone, as a tool's)."""
        if not isinstance(self.catalog, OffersCatalog):
            return []
        visible = self._offers(self.catalog.list_offer_tools(ctx))
        everything = self._offers(self.catalog.all_offer_tools())
        out: list[str] = []
        for candidates in (visible, everything):
            for pick in picks:
                out.extend(n for n, offers in candidates if pick(offers) and n not in out)
        return out

    async def handle(
        self, method: str, params: Mapping[str, Any], ctx: CallContext
    ) -> dict[str, Any]:
        listed = LIST_METHODS.get(method)
        if listed is not None:
            kind, key, identity = listed
            specs = (
                self.catalog.list_offer_tools(ctx)
                if isinstance(self.catalog, OffersCatalog)
                else []
            )
            providers = [o for _, o in self._offers(specs)]
            return {key: merged(kind, identity, providers)}
        tools, forwarded = self._route(method, params, ctx)
        # `_route` found providers: only an offers catalog has any.
        assert isinstance(self.catalog, OffersCatalog)
        call = self.catalog.call_offers_tool
        arguments = {"method": method, "params": forwarded}
        for tool in tools[:-1] if ctx.pinned_node is not None else ():
            # Pinned: the first provider that has a variant on that node (another node's
            # variant of the same unit may list the same URI first).
            with contextlib.suppress(NotOnNode):
                return result_of(tool, await call(tool, arguments, ctx))
        tool = tools[-1] if ctx.pinned_node is not None else tools[0]
        return result_of(tool, await call(tool, arguments, ctx))

    def check_subscribable(self, params: Mapping[str, Any], ctx: CallContext) -> str:
        """The URI a `resources/subscribe` names, if some provider the caller may use
        offers it (else `UnknownOffer`, or `InvalidArguments` without a URI)."""
        self._route(SUBSCRIBE_METHOD, params, ctx)
        return str(params["uri"])

    def _route(
        self, method: str, params: Mapping[str, Any], ctx: CallContext
    ) -> tuple[list[str], dict[str, Any]]:
        forwarded = {k: v for k, v in params.items() if k != "_meta"}
        if method in ("resources/read", SUBSCRIBE_METHOD):
            uri = _string(params, "uri", method)
            picks: tuple[Pick, ...] = (
                lambda o: o.has_resource(uri),
                lambda o: o.matches_template(uri),
            )
            what, key = "resource", uri
        elif method == "prompts/get":
            key = _string(params, "name", method)
            picks, what = (lambda o: o.has_prompt(key),), "prompt"
        else:
            ref = params.get("ref")
            if not isinstance(ref, Mapping) or ref.get("type") not in (
                "ref/prompt",
                "ref/resource",
            ):
                raise InvalidArguments(method, "'ref' must be a ref/prompt or ref/resource", "ref")
            if not isinstance(params.get("argument"), Mapping):
                raise InvalidArguments(method, "'argument' must be an object", "argument")
            if ref["type"] == "ref/prompt":
                key = _string(ref, "name", method)
                picks, what = (lambda o: o.has_prompt(key),), "prompt"
            else:
                key = _string(ref, "uri", method)
                picks = (lambda o: o.has_template(key), lambda o: o.has_resource(key))
                what = "resource template"
        tools = self._providers(ctx, picks)
        if not tools:
            raise UnknownOffer(what, key)
        return tools, forwarded
