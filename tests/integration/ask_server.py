"""A small MCP server (official SDK, stdio) whose tools log and ask their client: the
provider of tests/integration/test_client_requests.py, mounted on node A.

- `chatty`: logs at debug, info and warning, lists the client's roots (a round trip
  through the caller, so its log lines, sent first, reach the client before the result:
  the SDK hands each notification to a task of its own), then answers "chatted".
- `ask_llm(question)`: logs, asks the client for sampling, answers what the model said.
- `ask_name`: asks the client (elicitation) for a name.
- `roots`: lists the client's roots.

A request the client refuses or cannot take fails the tool; the SDK answers the call
with `isError` and the error's message, which is what the test reads at the client.
"""

from __future__ import annotations

import warnings

from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_types import SamplingMessage, TextContent
from pydantic import BaseModel

# Logging, sampling and roots are deprecated at 2026-07-28; this server speaks 2025-11-25.
warnings.simplefilter("ignore", MCPDeprecationWarning)
app = MCPServer("ask-server")


@app.tool()
async def chatty(ctx: Context) -> str:
    """Log one message at each of debug, info and warning."""
    await ctx.log("debug", "chatty: debug line")
    await ctx.log("info", "chatty: info line")
    await ctx.log("warning", "chatty: warning line")
    await ctx.session.list_roots()
    return "chatted"


@app.tool()
async def ask_llm(question: str, ctx: Context) -> str:
    """Ask the client's model `question` (sampling)."""
    await ctx.log("info", f"asking the client's model: {question}")
    result = await ctx.session.create_message(
        messages=[SamplingMessage(role="user", content=TextContent(type="text", text=question))],
        max_tokens=64,
        related_request_id=ctx.request_id,
    )
    content = result.content
    text = content.text if isinstance(content, TextContent) else repr(content)
    return f"model {result.model} said: {text}"


class Name(BaseModel):
    name: str


@app.tool()
async def ask_name(ctx: Context) -> str:
    """Ask the user for a name (elicitation)."""
    answer = await ctx.elicit("What is your name?", Name)
    if answer.action == "accept":
        return f"accepted: {answer.data.name}"
    return answer.action


@app.tool()
async def roots(ctx: Context) -> str:
    """The client's roots, comma-separated."""
    listed = await ctx.session.list_roots()
    return ",".join(str(root.uri) for root in listed.roots)


if __name__ == "__main__":
    app.run()
