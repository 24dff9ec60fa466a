"""Mounted external MCP servers: their tools become local tools, through the official client.

The unit's task holds one `mcp.client.client.Client` (stdio subprocess or Streamable
HTTP) for the provider's lifetime: the SDK's anyio scopes must be entered and left in
the same task. A health probe (`tools/list`, which also picks up tool changes) runs
every `health_interval_s`; a dead process or connection makes the provider end with
`UnitFault`, so the supervisor restarts it. A server that does not answer `initialize`
within `start_timeout_s` is a crash too. The `stop` event ends the provider at any
point, the start included; stdio servers run through `node.tools.stdio`, which caps
messages, logs stderr safely and kills the server's process group.

Answers are capped at `tools.max_result_bytes` (`ResultTooLarge` for that call only),
and a large text that `structuredContent` repeats is passed on once (`_drop_duplicate`):
the SDK's servers send a `str` result twice, which doubled every large answer.

An answer the SDK's validation refuses (a result that is not a `CallToolResult`, or
structured content its own output schema refuses) fails that call alone with a
`ProviderError` naming the problem, counted in `stats.malformed_answers`: one bad answer
is not a fault of the tool or of the mount (no restart, no quarantine; those are for a
process or connection that keeps dying).

Protocol revision (`mode = "auto"`): the SDK probes `server/discover` and speaks
2026-07-28 to a server that answers it. Some servers accept 2026-07-28 yet answer in the
2025-11-25 shape (the TypeScript reference server's `tools/call` results carry no
`resultType`). When a modern session's answer fails validation that way — at start, or
on a call (that answer is read as the 2025-11-25 result it is, still checked against
the tool's output schema) — the mount reconnects speaking 2025-11-25 and stays there
(`stats.fallbacks`); calls arriving meanwhile wait for the new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, cast

import anyio

from vsmcp.node.tools.client_channel import META_LOG_LEVEL, UPDATED_METHOD
from vsmcp.node.tools.config import DEFAULT_MAX_RESULT_BYTES, MountConfig
from vsmcp.node.tools.errors import (
    InvalidArguments,
    ProviderError,
    ResultTooLarge,
    UnitFault,
    UnknownTool,
)
from vsmcp.node.tools.model import (
    META_CAUSALITY,
    META_ORIGIN,
    META_TRACE_ID,
    CallContext,
    ToolResult,
    ToolSpec,
)
from vsmcp.node.tools.mount_client import MountClient
from vsmcp.node.tools.mounted_offers import list_offers, run_offer
from vsmcp.node.tools.offers import (
    SUBSCRIBE_METHOD,
    contents_chars,
    offer_request,
    offer_result,
    offers_spec,
    offers_tool_name,
)
from vsmcp.node.tools.stdio import RESULT_TOO_LARGE, StdioLaunch, StdioStats, stdio_transport

if TYPE_CHECKING:
    # The MCP client SDK (with pydantic and httpx2) is imported when a mount first
    # connects, not with the node: an idle node without mounts never loads it.
    from mcp.client.client import Client
    from mcp.shared.exceptions import MCPError
    from mcp_types import CallToolResult, RequestParamsMeta, Tool
    from pydantic import ValidationError

log = logging.getLogger(__name__)

MAX_LIST_PAGES = 50
RESULT_KEYS = ("content", "isError", "structuredContent")
# How httpx2 says an SSE event passed `max_sse_event_size` (the SDK passes it on).
SSE_TOO_LARGE_MARK = "byte limit"
# Room for the JSON-RPC envelope around a result at the cap (and for escaping).
ENVELOPE_SLACK_BYTES = 64 << 10
# A text block at least this long (characters) that `structuredContent` repeats is sent
# once (`_drop_duplicate`); shorter answers keep both, as clients may read either.
DUPLICATE_STRUCTURED_MIN_BYTES = 4096
_DEAD_CONNECTION = (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError, EOFError)
# The revision a mount falls back to when its 2026-07-28 answers do not hold.
LEGACY_MODE: Final = "legacy"
# How the SDK says a call's structured content broke the tool's own output schema
# (`ClientSession.validate_tool_result`, a RuntimeError).
_OUTPUT_SCHEMA_MARKS = ("Invalid structured content", "did not return structured content")
# How much of a validation error a caller is told (the first problems, not the input).
MAX_PROBLEMS_SHOWN = 3


class MountedServer:
    """Provider for one external MCP server (`MountConfig`)."""

    def __init__(self, cfg: MountConfig, max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> None:
        self._cfg = cfg
        self._max_result_bytes = max_result_bytes
        self.stats = StdioStats()
        self._client: Client | None = None
        self._specs: tuple[ToolSpec, ...] = ()
        self._spec_by_name: dict[str, ToolSpec] = {}
        self._remote: dict[str, str] = {}
        self._on_change: Callable[[], None] | None = None
        # Set once a mode = "auto" server's 2026-07-28 answers did not hold: every
        # later connection speaks 2025-11-25.
        self._legacy = False
        self._renegotiate = asyncio.Event()
        self._connected = asyncio.Event()
        self._reconnecting = False
        # The server's logs and requests to the calling client (sampling, elicitation, roots).
        self.client_side = MountClient(cfg.name, only_call_fallback=cfg.only_call_fallback)

    @property
    def name(self) -> str:
        return self._cfg.unit_name

    @property
    def offers_tool(self) -> str:
        """The name of its resources-and-prompts tool (`node.tools.offers`)."""
        return offers_tool_name(self._offers_unit)

    @property
    def _offers_unit(self) -> str:
        return f"mount.{self._cfg.name}"

    def set_on_change(self, callback: Callable[[], None]) -> None:
        self._on_change = callback

    def tools(self) -> Sequence[ToolSpec]:
        return self._specs

    def _local_name(self, remote: str) -> str:
        return self._cfg.tool_name(remote)

    def _spec(self, tool: Tool) -> ToolSpec:
        annotations = (
            tool.annotations.model_dump(by_alias=True, mode="json", exclude_none=True)
            if tool.annotations is not None
            else None
        )
        return ToolSpec(
            name=self._local_name(tool.name),
            description=tool.description or "",
            input_schema=dict(tool.input_schema),
            zone=self._cfg.tool_zones.get(tool.name, self._cfg.zone),
            provider="mounted",
            annotations=annotations or None,
            output_schema=dict(tool.output_schema) if tool.output_schema else None,
            title=tool.title,
            execution=(
                tool.execution.model_dump(by_alias=True, mode="json", exclude_none=True) or None
                if tool.execution is not None
                else None
            ),
        )

    async def _refresh(self, client: Client) -> None:
        tools: list[Tool] = []
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            page = await client.list_tools(cursor=cursor, cache_mode="bypass")
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        specs = tuple(self._spec(t) for t in tools)
        offers = await list_offers(client, self._cfg.name)
        if offers:
            specs += (offers_spec(self._offers_unit, offers, self._cfg.zone, "mounted"),)
        changed = specs != self._specs
        self._specs = specs
        self._spec_by_name = {spec.name: spec for spec in specs}
        self._remote = {self._local_name(t.name): t.name for t in tools}
        if changed and self._client is not None and self._on_change is not None:
            self._on_change()

    async def _open(self, stack: contextlib.AsyncExitStack) -> Client:
        from mcp.client.client import Client
        from mcp.client.streamable_http import streamable_http_client

        from vsmcp.node.tools.http_cap import capped_http_client

        cfg = self._cfg
        target: Any
        if cfg.command is not None:
            launch = StdioLaunch(
                mount=cfg.name,
                command=cfg.command,
                args=tuple(cfg.args),
                env=cfg.env,
                cwd=cfg.cwd,
                # The cap is on the answer; the JSON-RPC envelope around it is small.
                max_message_bytes=self._max_result_bytes + ENVELOPE_SLACK_BYTES,
                stop_grace_s=cfg.stop_grace_s,
            )
            target = stdio_transport(launch, self.stats)
        else:
            assert cfg.url is not None
            cap = self._max_result_bytes + ENVELOPE_SLACK_BYTES
            http = await stack.enter_async_context(capped_http_client(cfg.headers, cap))
            target = streamable_http_client(cfg.url, http_client=http, max_sse_event_size=cap)
        mode = LEGACY_MODE if self._legacy else cfg.mode
        return await stack.enter_async_context(
            Client(target, mode=mode, cache=None, **self.client_side.client_kwargs())
        )

    def _describe(self) -> str:
        cfg = self._cfg
        if cfg.command is not None:
            return f"command {' '.join([cfg.command, *cfg.args])!r}"
        return f"url {cfg.url!r}"

    async def _start(self, stack: contextlib.AsyncExitStack, stop: asyncio.Event) -> Client | None:
        """Start and initialize the server within `start_timeout_s`; None if `stop` came first."""
        cfg = self._cfg
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(cfg.start_timeout_s) as scope:
                # Stop ends the start at once: a server that never answers `initialize`
                # must not hold the node's shutdown for the whole start timeout.
                entered = True

                def stopped(watch: asyncio.Task[Any]) -> None:
                    if entered and not watch.cancelled() and not scope.expired():
                        scope.reschedule(loop.time())

                watch = loop.create_task(stop.wait(), name=f"mount:{cfg.name}:stop-watch")
                watch.add_done_callback(stopped)
                try:
                    client = await self._open(stack)
                    await self._refresh(client)
                finally:
                    entered = False
                    watch.cancel()
        except TimeoutError:
            if stop.is_set():
                return None
            raise UnitFault(
                f"mount {cfg.name!r} did not initialize within {cfg.start_timeout_s:g} s "
                f"({self._describe()})"
            ) from None
        return client

    async def run(self, ready: Callable[[], None], stop: asyncio.Event) -> None:
        from pydantic import ValidationError

        announced = False
        while True:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    client = await self._start(stack, stop)
                except ValidationError as exc:
                    # Discovery or the listing did not validate: the server is not what
                    # 2026-07-28 says. Leaving the block closes this connection.
                    problems = validation_problems(exc)
                    if not self._fall_back(f"its answers at start: {problems}"):
                        raise UnitFault(
                            f"mount {self._cfg.name!r}: malformed answer at start: {problems}"
                        ) from exc
                    continue
                if client is None:
                    return
                self._renegotiate.clear()  # this is the renegotiated connection
                self._client = client
                self._reconnecting = False
                self._connected.set()
                if not announced:
                    ready()
                    announced = True
                try:
                    if await self._serve(client, stop):
                        return
                finally:
                    self._client = None
                    self._connected.clear()

    async def _serve(self, client: Client, stop: asyncio.Event) -> bool:
        """Probe the server's health until `stop` (True) or a fallback asks for a new
        connection (False)."""
        from mcp.shared.exceptions import MCPError
        from pydantic import ValidationError

        cfg = self._cfg
        while True:
            if self._renegotiate.is_set():
                self._renegotiate.clear()
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(cfg.health_interval_s):
                    await _first_of(stop, self._renegotiate)
            if stop.is_set():
                return True
            if self._renegotiate.is_set():
                continue
            try:
                async with asyncio.timeout(cfg.health_timeout_s):
                    await self._refresh(client)
            except ValidationError as exc:
                if not self._fall_back(f"its tool list: {validation_problems(exc)}"):
                    raise UnitFault(
                        f"mount {cfg.name!r} health check failed: malformed tool list: "
                        f"{validation_problems(exc)}"
                    ) from exc
            except (MCPError, TimeoutError, *_DEAD_CONNECTION) as exc:
                raise UnitFault(f"mount {cfg.name!r} health check failed: {exc!r}") from exc

    def _fall_back(self, what: str) -> bool:
        """Reconnect in 2025-11-25 if this mount may (mode = "auto", still modern);
        False if it may not (the answer is broken in any revision)."""
        if self._cfg.mode != "auto" or self._legacy:
            return False
        self._legacy = True
        self._reconnecting = True
        self._connected.clear()  # calls from now on wait for the new connection
        self.stats.fallbacks += 1
        self._renegotiate.set()
        log.warning(
            "mount %s: %s did not validate as 2026-07-28; reconnecting in 2025-11-25",
            self._cfg.name,
            what,
        )
        return True

    async def _connection(self) -> Client:
        """The live client; during a fallback's reconnection, the next one."""
        client = self._client
        if client is not None and not self._renegotiate.is_set():
            return client
        if self._reconnecting:
            # Bounded by the call's own deadline (the supervisor's timeout).
            await self._connected.wait()
            if self._client is not None:
                return self._client
        raise UnitFault(f"mount {self._cfg.name!r} is not connected")

    async def call(self, tool: str, arguments: Mapping[str, Any], ctx: CallContext) -> ToolResult:
        # Loaded by `_open` before any call can reach here: a lookup in sys.modules.
        from mcp.shared.exceptions import MCPError
        from mcp_types import CONNECTION_CLOSED
        from pydantic import ValidationError

        if tool == self.offers_tool and tool in self._spec_by_name:
            return await self._offer(tool, arguments, ctx)
        remote = self._remote.get(tool)
        if remote is None:
            raise UnknownTool(tool)
        client = await self._connection()

        async def forward(progress: float, total: float | None, message: str | None) -> None:
            await ctx.report_progress(progress, total, message)

        try:
            with self.client_side.calling(ctx):
                result = await client.call_tool(
                    remote,
                    dict(arguments),
                    progress_callback=forward if ctx.progress is not None else None,
                    meta=_trace_meta(ctx),
                )
        except MCPError as exc:
            self._raise_too_large(tool, exc)
            if exc.code == CONNECTION_CLOSED:
                raise UnitFault(f"mount {self._cfg.name!r}: connection closed") from exc
            raise ProviderError(tool, exc.error.message, exc.code) from exc
        except _DEAD_CONNECTION as exc:
            raise UnitFault(f"mount {self._cfg.name!r}: {exc!r}") from exc
        except ValidationError as exc:
            result = await self._older_shape(tool, remote, client, exc)
        except RuntimeError as exc:
            malformed = self._malformed(tool, exc)
            if malformed is None:
                raise  # not about the answer: a bug, counted against the tool
            raise malformed from exc
        dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        out = {key: dumped[key] for key in RESULT_KEYS if key in dumped}
        # An HTTP answer is read whole by the SDK; at least it does not go further.
        size = _content_chars(out.get("content"))
        if size > self._max_result_bytes:
            raise ResultTooLarge(tool, size, self._max_result_bytes)
        spec = self._spec_by_name.get(tool)
        _drop_duplicate(out, spec is not None and spec.output_schema is not None)
        return out

    async def _offer(self, tool: str, arguments: Mapping[str, Any], ctx: CallContext) -> ToolResult:
        """A resources/read, prompts/get or completion/complete forwarded to the server."""
        from mcp.shared.exceptions import MCPError
        from mcp_types import CONNECTION_CLOSED
        from pydantic import ValidationError

        method, params = offer_request(arguments)
        client = await self._connection()
        if method == SUBSCRIBE_METHOD:
            return await self._subscribed(tool, params, ctx, client)
        try:
            with self.client_side.calling(ctx):  # its sampling, logs... reach the caller
                result = await run_offer(client, method, params)
        except MCPError as exc:
            self._raise_too_large(tool, exc)
            if exc.code == CONNECTION_CLOSED:
                raise UnitFault(f"mount {self._cfg.name!r}: connection closed") from exc
            raise ProviderError(tool, f"{method}: {exc.error.message}", exc.code) from exc
        except _DEAD_CONNECTION as exc:
            raise UnitFault(f"mount {self._cfg.name!r}: {exc!r}") from exc
        except ValidationError as exc:
            raise self._malformed(tool, exc) or exc from exc
        size = contents_chars(result)
        if size > self._max_result_bytes:
            raise ResultTooLarge(tool, size, self._max_result_bytes)
        return offer_result(result)

    async def _subscribed(
        self, tool: str, params: Mapping[str, Any], ctx: CallContext, client: Client
    ) -> ToolResult:
        """Keep the server subscribed to a URI until the call's deadline (less a margin,
        so that the call still answers in time), passing each update to the caller; the
        last subscribing call to end unsubscribes."""
        from mcp.shared.exceptions import MCPError

        uri = params.get("uri")
        if not isinstance(uri, str) or not uri:
            raise InvalidArguments(tool, "'uri' must be a non-empty string", "params")
        channel = ctx.client
        if channel is None:
            raise ProviderError(tool, f"{SUBSCRIBE_METHOD}: the caller cannot be reached")

        async def unsubscribe(uri: str) -> None:
            with contextlib.suppress(MCPError, *_DEAD_CONNECTION):
                await client.unsubscribe_resource(uri)

        try:
            async with self.client_side.watching(
                uri, client.subscribe_resource, unsubscribe
            ) as updates:
                remaining = ctx.remaining_s()  # after the subscribe (and its lock's wait)
                until = None if remaining is None else remaining - max(1.0, 0.1 * remaining)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(until):
                        while True:
                            updated = await updates.get()
                            await channel.notify(UPDATED_METHOD, {"uri": updated})
                            self.client_side.counts["updates"] += 1
        except MCPError as exc:
            raise ProviderError(tool, f"{SUBSCRIBE_METHOD}: {exc.error.message}") from exc
        except _DEAD_CONNECTION as exc:
            raise UnitFault(f"mount {self._cfg.name!r}: {exc!r}") from exc
        return offer_result({})

    async def _older_shape(
        self, tool: str, remote: str, client: Client, exc: ValidationError
    ) -> CallToolResult:
        """A modern session's answer lacking only `resultType` is a 2025-11-25 result:
        read as such (still checked against the tool's output schema), and the mount
        falls back to 2025-11-25 for the calls after this one. Anything else that did
        not validate is malformed."""
        from mcp_types import CallToolResult
        from pydantic import ValidationError

        raw = _without_result_type(exc)
        if raw is None or client.protocol_version == _LEGACY_VERSION:
            raise self._malformed(tool, exc) or exc from exc
        try:
            result = CallToolResult.model_validate({**raw, "resultType": "complete"})
            if not result.is_error:
                await client.session.validate_tool_result(remote, result)
        except (ValidationError, RuntimeError) as again:
            raise self._malformed(tool, again) or again from exc
        self._fall_back(f"a {tool!r} answer (no resultType)")
        return result

    def _malformed(self, tool: str, exc: Exception) -> ProviderError | None:
        """The error for one answer the SDK refused: that call fails, counted, no fault.
        None for a RuntimeError that is not about the answer (a bug)."""
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            problems = validation_problems(exc)
        elif any(mark in str(exc) for mark in _OUTPUT_SCHEMA_MARKS):
            problems = str(exc).splitlines()[0]
        else:
            return None
        self.stats.malformed_answers += 1
        detail = f"malformed answer from mount {self._cfg.name!r}: {problems}"
        log.warning("tool %s: %s", tool, detail)
        return ProviderError(tool, detail)

    def _raise_too_large(self, tool: str, exc: MCPError) -> None:
        """`ResultTooLarge` if `exc` is how a transport cut a too-large answer."""
        from mcp_types import CONNECTION_CLOSED, PARSE_ERROR

        from vsmcp.node.tools.http_cap import ANSWER_TOO_LARGE_MARK

        error = exc.error
        if exc.code == RESULT_TOO_LARGE and isinstance(error.data, dict):
            size = error.data.get("size_bytes")
            if isinstance(size, int):
                raise ResultTooLarge(tool, size, self._max_result_bytes) from exc
        http_cut = exc.code == PARSE_ERROR and ANSWER_TOO_LARGE_MARK in error.message
        sse_cut = exc.code == CONNECTION_CLOSED and SSE_TOO_LARGE_MARK in error.message
        if http_cut or sse_cut:
            self.stats.oversized_messages += 1
            raise ResultTooLarge(tool, None, self._max_result_bytes) from exc


_LEGACY_VERSION: Final = "2025-11-25"


async def _first_of(*events: asyncio.Event) -> None:
    """Return once any of `events` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def validation_problems(exc: ValidationError) -> str:
    """The first few problems of a validation error, by field (not the input)."""
    errors = exc.errors(include_input=False, include_url=False)
    # A tools/call answer is tried as each shape it may have: say what was wrong with it
    # as a CallToolResult, not that it is no InputRequiredResult either.
    as_result = [e for e in errors if e["loc"][:1] == ("CallToolResult",)]
    if as_result:
        errors = [{**e, "loc": e["loc"][1:]} for e in as_result]
    shown = [
        f"{'.'.join(str(p) for p in error['loc']) or 'result'}: {error['msg']}"
        for error in errors[:MAX_PROBLEMS_SHOWN]
    ]
    more = len(errors) - len(shown)
    return "; ".join(shown) + (f" (+{more} more)" if more > 0 else "")


def _without_result_type(exc: ValidationError) -> dict[str, Any] | None:
    """The answer, if what the validation missed in it includes `resultType`."""
    for error in exc.errors(include_url=False):
        answer = error.get("input")
        if error["type"] == "missing" and error["loc"][-1:] == ("resultType",):
            return answer if isinstance(answer, dict) else None
    return None


def _content_chars(content: Any) -> int:
    """The size of a result's text and binary payloads (what makes an answer large)."""
    if not isinstance(content, list):
        return 0
    total = 0
    for block in content:
        if isinstance(block, dict):
            for key in ("text", "data", "blob"):
                value = block.get(key)
                if isinstance(value, str):
                    total += len(value)
    return total


def _drop_duplicate(result: dict[str, Any], has_output_schema: bool) -> None:
    """Send a large text only once when `structuredContent` repeats it (the SDK's servers
    wrap a `str` result as `{"result": text}`; others send `json.dumps(structured)`).

    A tool with an output schema must return `structuredContent` (clients check), so its
    text block is replaced by a short pointer; any other tool keeps the text alone.
    """
    structured = result.get("structuredContent")
    content = result.get("content")
    if not isinstance(structured, dict) or not isinstance(content, list):
        return
    for i, block in enumerate(content):
        text = block.get("text") if isinstance(block, dict) else None
        if not isinstance(text, str) or len(text) < DUPLICATE_STRUCTURED_MIN_BYTES:
            continue
        if structured == {"result": text} or _parses_to(text, structured):
            if has_output_schema:
                note = f"[{len(text)} characters, the same as structuredContent]"
                content[i] = {"type": "text", "text": note}
            else:
                del result["structuredContent"]
            return


def _parses_to(text: str, value: dict[str, Any]) -> bool:
    if not text.lstrip().startswith("{"):
        return False
    try:
        return bool(json.loads(text) == value)
    except ValueError:
        return False


def _trace_meta(ctx: CallContext) -> RequestParamsMeta:
    """The call's context for the mounted server, in the request's `_meta`: its own logs
    can then be joined with our audit log by trace id."""
    meta = {
        META_TRACE_ID: ctx.trace_id,
        META_CAUSALITY: list(ctx.causality),
        META_ORIGIN: ctx.origin,
    }
    # At 2026-07-28 the server logs at the level this call's client wants (none: none).
    level = ctx.client.log_level if ctx.client is not None else None
    if level is not None:
        meta[META_LOG_LEVEL] = level
    return cast("RequestParamsMeta", meta)  # an open map: extra keys are allowed
