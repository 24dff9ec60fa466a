"""Plugin tools loaded by the `vsmcpd` processes of the integration tests
(`target = "tests.integration.plugin_tools:add"`; the nodes run with cwd = repo root)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from vsmcp.node.tools.functions import tool
from vsmcp.node.tools.model import CallContext


@tool(
    name="add",
    description="Add two integers.",
    input_schema={
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
)
def add(arguments: Mapping[str, Any]) -> dict[str, int]:
    return {"sum": arguments["a"] + arguments["b"]}


@tool(
    name="hold",
    description="Leave a marker named after this process, report progress, then hold.",
    input_schema={
        "type": "object",
        "properties": {"marker_dir": {"type": "string"}, "hold_s": {"type": "number"}},
        "required": ["marker_dir"],
        "additionalProperties": False,
    },
)
async def hold(arguments: Mapping[str, Any], ctx: CallContext) -> str:
    # The marker tells the test which node's process started the tool.
    (Path(arguments["marker_dir"]) / str(os.getpid())).write_text(ctx.trace_id)
    await ctx.report_progress(1, 2, "started")
    await asyncio.sleep(float(arguments.get("hold_s", 600)))
    return "held"


@tool(
    name="block",
    description="Write `marker`, then block this call's thread for ever.",
    input_schema={
        "type": "object",
        "properties": {"marker": {"type": "string"}},
        "required": ["marker"],
    },
)
def block(arguments: Mapping[str, Any]) -> str:
    Path(arguments["marker"]).write_text("blocked")
    threading.Event().wait()
    return "unreachable"


# The MCP SDK's form (what `@mcp.tool()` takes): keyword arguments, schemas derived.


def add_numbers(a: int, b: int) -> int:
    """Add two integers.

    Written as every FastMCP user writes a first tool."""
    return a + b


async def greet(name: str, ctx: CallContext, punctuation: str = "!") -> dict[str, str]:
    """Greet `name`, reporting progress on the way."""
    await ctx.report_progress(1, 1, "greeting")
    return {"greeting": f"Hello, {name}{punctuation}", "trace": ctx.trace_id}


def mismatched(a: int, c: int) -> int:
    """Declared in config with a schema naming `a` and `b`: refused at load."""
    return a + c


# A service of fixed capacity: at most `capacity` calls are served at once (the rest wait
# inside the tool, as behind a saturated backend), each for `service_ms`.
_WORKERS: dict[int, asyncio.Semaphore] = {}


@tool(
    name="work",
    description="Serve one call in `service_ms`, at most `capacity` at once in this process.",
    input_schema={
        "type": "object",
        "properties": {
            "service_ms": {"type": "number", "minimum": 0, "maximum": 10000},
            "capacity": {"type": "integer", "minimum": 1, "maximum": 1000},
        },
        "additionalProperties": False,
    },
)
async def work(arguments: Mapping[str, Any]) -> dict[str, bool]:
    capacity = int(arguments.get("capacity", 4))
    workers = _WORKERS.setdefault(capacity, asyncio.Semaphore(capacity))
    async with workers:
        await asyncio.sleep(float(arguments.get("service_ms", 20)) / 1000)
    return {"served": True}


# Gray failures (tests/integration/test_gray.py): the node's environment names a flag
# file; "hang" holds every call while it says so, "slow:<s>" delays each call by <s>.
GRAY_FLAG_ENV = "VSMCP_TEST_GRAY_FLAG"


def _gray_flag() -> str:
    path = os.environ.get(GRAY_FLAG_ENV)
    if not path:
        return ""
    try:
        return Path(path).read_text().strip()
    except FileNotFoundError:
        return ""


@tool(
    name="gray_echo",
    description="Echo `text`; hangs or is slow as the node's gray flag file says.",
    input_schema={
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
        "additionalProperties": False,
    },
)
async def gray_echo(arguments: Mapping[str, Any]) -> dict[str, Any]:
    flag = _gray_flag()
    while flag == "hang":  # the process and its heartbeats stay alive; this tool does not
        await asyncio.sleep(0.05)
        flag = _gray_flag()
    if flag.startswith("slow:"):
        await asyncio.sleep(float(flag.removeprefix("slow:")))
    return {"echo": arguments["text"], "pid": os.getpid()}


@tool(
    name="burn",
    description="CPU-bound work (a loop of `rounds` rounds); says which process ran it.",
    input_schema={
        "type": "object",
        "properties": {"rounds": {"type": "integer", "minimum": 1, "maximum": 100000000}},
        "required": ["rounds"],
        "additionalProperties": False,
    },
)
def burn(arguments: Mapping[str, Any]) -> dict[str, int]:
    x = 0
    for i in range(arguments["rounds"]):
        x = (x + i * i) % 1000003
    return {"pid": os.getpid(), "x": x}


async def fetch_https(url: str) -> dict[str, Any]:
    """GET `url` with aiohttp's default HTTPS client (its default verifying context):
    the answer's status, or why the server's certificate was refused."""
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return {"status": response.status}
    except aiohttp.ClientConnectorCertificateError as e:
        return {"refused": str(e.certificate_error)}


@tool(
    name="count_then_wait",
    description="Append a line to `runs`, then wait (at most a minute) until `go` exists.",
    input_schema={
        "type": "object",
        "properties": {"runs": {"type": "string"}, "go": {"type": "string"}},
        "required": ["runs", "go"],
    },
)
def count_then_wait(arguments: Mapping[str, Any]) -> str:
    # A thread of its own (a sync tool): the test holds the call until it is ready.
    with open(arguments["runs"], "a") as runs:
        runs.write("run\n")
    go = Path(arguments["go"])
    deadline = time.monotonic() + 60
    while not go.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{go} not created within 60 s")
        time.sleep(0.02)
    return "counted"
