"""A small official-SDK MCP server with resources, a resource template, prompts and
completion, for the tests of resources and prompts across the mesh (stdio).

`--big N`: its `data://big` resource is N bytes of text (the benchmark's 1 MB);
`--secret`: it also offers `secret://plans` (mounted in a restricted zone by the test);
`--extra`: it also offers `extra://more`; `--refuse-templates`: its
`resources/templates/list` answers an error; `--updates`: it takes 2025-11-25
`resources/subscribe` and its tool `touch(uri)` sends `notifications/resources/updated`
of that URI to every session subscribed to it."""

from __future__ import annotations

import argparse
from typing import Any

import mcp_types as types
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import Completion, PromptReference, ResourceTemplateReference

app = MCPServer("offers")
COLOURS = ("red", "green", "blue", "grey")
BIG_BYTES = [1024]


@app.resource("data://greeting", description="A greeting.", mime_type="text/plain")
def greeting() -> str:
    return "hello from the offers server"


@app.resource("data://big", description="A large text.", mime_type="text/plain")
def big() -> str:
    return "x" * BIG_BYTES[0]


@app.resource("colour://{name}", description="One colour, by name.", mime_type="application/json")
def colour(name: str) -> str:
    return f'{{"colour": "{name}", "known": {str(name in COLOURS).lower()}}}'


@app.prompt(description="Ask for a review of some code.")
def review(code: str, style: str = "terse") -> str:
    return f"Review this code ({style}):\n{code}"


@app.prompt(description="Say hello.")
def hello() -> str:
    return "Hello!"


@app.completion()
async def complete(
    ref: PromptReference | ResourceTemplateReference, argument: object, context: object
) -> Completion | None:
    value = getattr(argument, "value", "")
    if isinstance(ref, ResourceTemplateReference) and ref.uri == "colour://{name}":
        return Completion(values=[c for c in COLOURS if c.startswith(value)])
    if isinstance(ref, PromptReference) and ref.name == "review":
        return Completion(values=[s for s in ("terse", "thorough") if s.startswith(value)])
    return None


@app.tool()
def add_note(name: str, text: str) -> str:
    """Offer one more resource, `note://<name>` (its list changes)."""
    app.resource(f"note://{name}", name=f"note-{name}", description="A note added at run time.")(
        lambda: text
    )
    return f"note://{name}"


# URI -> the connections subscribed to it (`--updates`).
SUBSCRIBED: dict[str, list[Any]] = {}


def _connection(ctx: Any) -> Any:
    # A lowlevel handler's `session` is a per-request proxy; its connection is the session.
    return ctx.session._connection


async def subscribe(ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
    connections = SUBSCRIBED.setdefault(str(params.uri), [])
    if _connection(ctx) not in connections:
        connections.append(_connection(ctx))
    return types.EmptyResult()


async def unsubscribe(ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    connections = SUBSCRIBED.get(str(params.uri), [])
    if _connection(ctx) in connections:
        connections.remove(_connection(ctx))
    return types.EmptyResult()


async def touch(uri: str, ctx: Context) -> int:
    """Tell every connection subscribed to `uri` that it changed; how many were told."""
    connections = list(SUBSCRIBED.get(uri, []))
    for connection in connections:
        await connection.send_resource_updated(uri)
    return len(connections)


def extra_more() -> str:
    return "more"


def secret_plans() -> str:
    return "the secret plans"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--big", type=int, default=1024)
    parser.add_argument("--secret", action="store_true", help="also offer secret://plans")
    parser.add_argument("--extra", action="store_true", help="also offer extra://more")
    parser.add_argument("--updates", action="store_true", help="take subscriptions, add touch")
    parser.add_argument(
        "--refuse-templates", action="store_true", help="answer resources/templates/list an error"
    )
    args = parser.parse_args()
    if args.refuse_templates:

        async def refuse() -> list[object]:
            raise ValueError("templates are broken here")

        app.list_resource_templates = refuse  # type: ignore[method-assign]
    BIG_BYTES[0] = args.big
    if args.extra:
        app.resource("extra://more", description="Only where --extra is given.")(extra_more)
    if args.updates:
        low = app._lowlevel_server
        low.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
        low.add_request_handler(
            "resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe
        )
        app.tool()(touch)
    if args.secret:
        app.resource("secret://plans", description="Restricted.")(secret_plans)
    app.run()
