"""Config sections of the tool layer and the MCP gateway (msgspec Structs, TOML-shaped).

Placed in the node Config as `tools: ToolsConfig`, `limits: RateLimitsConfig`,
`mcp: McpConfig`, i.e. TOML tables `[tools]`, `[limits]`, `[mcp]`.

Every field carries its description (`Annotated[T, doc("...")]`): README.md's config
reference is generated from these structs and node/app/config.py's
(`python -m vsmcp.node.app.config_reference --write README.md`), and a test fails when a field
has no description or the README is out of date.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec

from vsmcp.node.vsm.priority import DEFAULT_PRIORITY, Priority

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
# Defaults of the keys below that code outside the config also falls back on: one
# definition each (`node/mcp/http.py`, `node/tools/mounted.py` import them).
DEFAULT_MAX_RESULT_BYTES: Final = 4 << 20
DEFAULT_MAX_BODY_BYTES: Final = 1 << 20
DEFAULT_MAX_SESSIONS: Final = 256
DEFAULT_MAX_SESSIONS_PER_CALLER: Final = 64
DEFAULT_SESSION_IDLE_S: Final = 600.0
DEFAULT_MAX_LISTENERS: Final = 64
DEFAULT_MAX_LISTENERS_PER_CALLER: Final = 16
ToolName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.\-]{1,128}$")]
# The grant `vsmcp mcp-stdio` clients get (zone `mcp.stdio_zone`, origin `http:stdio`);
# no `mcp.tokens` entry may take this name.
STDIO_GRANT_NAME: Final = "stdio"


def doc(description: str) -> msgspec.Meta:
    """A config field's description, for `Annotated[T, doc("...")]`: what the key does,
    in its unit. It is what README.md's generated config reference says about the key."""
    return msgspec.Meta(description=description)


class SupervisionConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Restart, crash-loop and quarantine settings shared by every unit (see supervisor.py)."""

    backoff_initial_s: Annotated[
        PositiveFloat, doc("first restart delay of a crashed unit; doubles per crash")
    ] = 0.2
    backoff_max_s: Annotated[PositiveFloat, doc("longest restart delay")] = 30.0
    backoff_reset_s: Annotated[
        PositiveFloat, doc("a unit up this long has its crash count (and delay) reset")
    ] = 30.0
    crash_loop_failures: Annotated[
        PositiveInt, doc("this many failures within crash_loop_window_s quarantine a unit")
    ] = 5
    crash_loop_window_s: Annotated[PositiveFloat, doc("the crash-loop window")] = 60.0
    quarantine_s: Annotated[
        PositiveFloat, doc("how long a quarantined unit stays stopped (its tools unlisted)")
    ] = 60.0
    stop_timeout_s: Annotated[
        PositiveFloat, doc("how long a unit may take to stop before it is cancelled")
    ] = 10.0


class UnitLimitsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Per-unit overrides; `None` takes the `[tools]` default."""

    max_concurrency: Annotated[
        PositiveInt | None, doc("calls running at once in this unit; unset: tools.max_concurrency")
    ] = None
    max_queue: Annotated[
        NonNegInt | None, doc("calls waiting for a slot; unset: tools.max_queue")
    ] = None
    timeout_s: Annotated[
        PositiveFloat | None, doc("per-call time limit; unset: tools.timeout_s")
    ] = None


class ProbeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A System 3* probe of a tool (docs/regulation.md, "S3* audits"): a call with fixed
    arguments whose result must have the expected shape."""

    tool: Annotated[
        str, doc('the tool to call (mounts: one of its tools; "": mounts only list tools)')
    ] = ""
    arguments: Annotated[dict[str, Any], doc("the probe call's arguments")] = msgspec.field(
        default_factory=dict
    )
    expect: Annotated[
        dict[str, Any],
        doc(
            "JSON schema the result must match (its structuredContent, else its text parsed "
            "as JSON, else the text); {}: any result that is not an error"
        ),
    ] = msgspec.field(default_factory=dict)


class ScaleConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Variety-driven spawning of a plugin tool (docs/children.md, "Scaling a tool"):
    `scale = { children = "auto", max = N }`. While System 3 measures the tool's unit
    saturated (its calls queue or fill every slot, and the process's CPU is high), the
    node spawns child VSMs serving the same tool; idle ones are retired."""

    children: Annotated[
        Literal["auto"], doc('"auto": System 3 spawns and retires children serving this tool')
    ]
    max: Annotated[PositiveInt, doc("most children serving this tool at once")]
    quiet_s: Annotated[
        PositiveFloat, doc("a child that served no call of the tool this long is retired")
    ] = 60.0
    cpu: Annotated[
        PositiveFloat,
        doc(
            "the node's CPU use (in cores: 0.5 is half of one) at or above which a full unit "
            "counts as saturated"
        ),
    ] = 0.5
    samples: Annotated[
        PositiveInt,
        doc("consecutive saturated samples (one per second) before a child is spawned"),
    ] = 3
    settle_s: Annotated[
        PositiveFloat,
        doc("after a spawn, how long System 3 waits before it may spawn again for this tool"),
    ] = 10.0


class PluginToolConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A Python tool: `target = "package.module:function"`.

    The target is either a `node.tools.functions.PluginTool` (which carries its own
    name, schema and zone; fields set here override them) or a callable, sync or async:
    `fn(arguments, ctx)` (the arguments dict), or a function written as the MCP SDK's
    `@mcp.tool()` takes it, `def add(a: int, b: int) -> int` (schemas derived).
    """

    name: Annotated[ToolName, doc("the tool's name")]
    target: Annotated[
        str,
        doc(
            '"package.module:function": a PluginTool, a callable fn(arguments, ctx), or a '
            "type-hinted keyword function as the MCP SDK takes it (docs/plugins.md)"
        ),
    ]
    description: Annotated[str, doc("shown to clients; empty: the function's docstring")] = ""
    input_schema: Annotated[
        dict[str, Any] | None,
        doc(
            "JSON Schema of the arguments; unset: the target's, derived from a keyword "
            "function's signature, or any object; a keyword function must match it"
        ),
    ] = None
    zone: Annotated[
        str | None, doc("lowest caller zone allowed to call it; unset: the target's, or public")
    ] = None
    limits: Annotated[UnitLimitsConfig, doc("this tool's unit limits")] = msgspec.field(
        default_factory=UnitLimitsConfig
    )
    probe: Annotated[
        ProbeConfig | None, doc("System 3*'s probe of this tool; unset: the tool is unaudited")
    ] = None
    scale: Annotated[
        ScaleConfig | None,
        doc(
            'children serving this tool when its unit is saturated: { children = "auto", '
            "max = N } (docs/children.md); unset: this node only"
        ),
    ] = None


class MountConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """An external MCP server whose tools become local tools.

    Exactly one of `command` (stdio: `command` + `args`, `env`, `cwd`) or `url`
    (Streamable HTTP, optional extra `headers`). Tools are named `<namespace>.<tool>`;
    `namespace` defaults to `name`, and `""` keeps the server's names unchanged.
    """

    name: Annotated[ToolName, doc("the mount's name (and default namespace)")]
    command: Annotated[str | None, doc("stdio server: the program to run (or set url)")] = None
    args: Annotated[list[str], doc("its arguments")] = msgspec.field(default_factory=list)
    env: Annotated[dict[str, str], doc("extra environment variables")] = msgspec.field(
        default_factory=dict
    )
    cwd: Annotated[str | None, doc("its working directory; unset: the node's")] = None
    url: Annotated[str | None, doc("Streamable HTTP server: its URL (or set command)")] = None
    headers: Annotated[dict[str, str], doc("extra HTTP headers (url only)")] = msgspec.field(
        default_factory=dict
    )
    mode: Annotated[
        Literal["auto", "legacy"],
        doc(
            "protocol: auto (2026-07-28 if the server answers it, else 2025-11-25; a server "
            "answering 2026-07-28 in the 2025-11-25 shape is reconnected in 2025-11-25) | "
            "legacy (2025-11-25 only)"
        ),
    ] = "auto"
    namespace: Annotated[
        str | None, doc('tools are named <namespace>.<tool>; unset: name; "": unprefixed')
    ] = None
    zone: Annotated[str, doc("lowest caller zone allowed to call its tools")] = "public"
    tool_zones: Annotated[dict[str, str], doc("zone per tool (server's name), overriding zone")] = (
        msgspec.field(default_factory=dict)
    )
    health_interval_s: Annotated[PositiveFloat, doc("seconds between health pings")] = 5.0
    health_timeout_s: Annotated[
        PositiveFloat, doc("a ping unanswered this long restarts the mount")
    ] = 5.0
    start_timeout_s: Annotated[
        PositiveFloat,
        doc(
            "seconds the server has to start and answer initialize (and its first tools/list); "
            "past it the start counts as a crash, logged with the mount's name and command"
        ),
    ] = 30.0
    stop_grace_s: Annotated[
        PositiveFloat,
        doc(
            "seconds a stdio server has to exit after its stdin closes before its process "
            "group is killed; at most 2 (the node stops within 5 s)"
        ),
    ] = 1.0
    only_call_fallback: Annotated[
        bool,
        doc(
            "a log line or sampling/elicitation/roots request that names no call (a "
            "2025-11-25 server over stdio) goes to the mount's only call in flight; off: "
            "dropped/refused (a server that logs or asks in the background would reach "
            "another client's call)"
        ),
    ] = False
    limits: Annotated[UnitLimitsConfig, doc("this mount's unit limits")] = msgspec.field(
        default_factory=UnitLimitsConfig
    )
    probe: Annotated[
        ProbeConfig | None,
        doc(
            "System 3*'s probe: its tools/list must list a tool, and probe.tool (the "
            "server's name), when set, is called; unset: the mount is unaudited"
        ),
    ] = None

    @property
    def unit_name(self) -> str:
        """The supervisor unit serving this mount (`MountedServer.name`)."""
        return f"mount:{self.name}"

    def tool_name(self, remote: str) -> str:
        """The local name of the server's tool `remote` (namespace, else the mount's name)."""
        prefix = self.name if self.namespace is None else self.namespace
        return f"{prefix}.{remote}" if prefix else remote

    def __post_init__(self) -> None:
        if (self.command is None) == (self.url is None):
            raise ValueError(f"mount {self.name!r}: set exactly one of 'command' or 'url'")


class WasmToolConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A WASM tool: its TOML manifest names the tool, its zone, limits and grants, and its
    module (`module`, or the `.wasm`/`.wat` file beside it). See docs/wasm.md."""

    manifest: Annotated[
        str, doc("path of the tool's TOML manifest (relative: to the node's working directory)")
    ]
    limits: Annotated[UnitLimitsConfig, doc("this tool's unit limits")] = msgspec.field(
        default_factory=UnitLimitsConfig
    )


class EdgeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The WASM runtime: what manifests may be granted, and how calls run (docs/wasm.md)."""

    allow_dirs: Annotated[
        list[str], doc("directories (and below) a manifest may grant a module; none: no files")
    ] = msgspec.field(default_factory=list)
    allow_env: Annotated[
        list[str], doc("environment variables a manifest may pass to a module; none: empty")
    ] = msgspec.field(default_factory=list)
    allow_clock: Annotated[
        bool, doc("a manifest may grant the clock (clock_time_get); otherwise it is refused")
    ] = False
    threads: Annotated[
        PositiveInt,
        doc(
            "worker threads running WASM calls, shared by configured and published tools: at "
            "most this many run at once, besides short calls on the event loop"
        ),
    ] = 2
    cache_compiled: Annotated[
        bool, doc("keep compiled modules in <data_dir>/wasm-cache (no compile on restart)")
    ] = True
    run: Annotated[
        list[str] | str,
        doc(
            "published modules (vsmcp wasm publish) this node fetches, loads and announces, "
            'by tool name; "*": every one; none: it only holds what it publishes'
        ),
    ] = msgspec.field(default_factory=list)
    max_module_bytes: Annotated[
        PositiveInt, doc("largest published module this node fetches or takes (bytes)")
    ] = 8 << 20
    publish_zone: Annotated[
        str,
        doc(
            "least zone of a bearer token that may publish or unpublish modules over HTTP "
            "(POST/DELETE /api/wasm/modules; the data dir's owner always may)"
        ),
    ] = "restricted"


class ToolsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    introspection_zone: Annotated[
        str, doc("zone of the built-in vsm.status / vsm.peers / vsm.tools")
    ] = "public"
    entry_points: Annotated[
        bool, doc("load the tools of installed packages (entry point group vsmcp.tools)")
    ] = True
    max_concurrency: Annotated[PositiveInt, doc("calls running at once per unit")] = 16
    max_queue: Annotated[
        NonNegInt, doc("calls waiting for a slot per unit; beyond: refused, retry-after")
    ] = 64
    timeout_s: Annotated[PositiveFloat, doc("per-call time limit")] = 30.0
    max_result_bytes: Annotated[
        PositiveInt,
        doc(
            "largest answer (bytes) a mounted server may give one call; a larger one fails "
            "that call (result_too_large, naming both sizes) and is never held whole"
        ),
    ] = DEFAULT_MAX_RESULT_BYTES
    supervision: Annotated[SupervisionConfig, doc("restarts and quarantine")] = msgspec.field(
        default_factory=SupervisionConfig
    )
    plugins: Annotated[list[PluginToolConfig], doc("Python tools")] = msgspec.field(
        default_factory=list
    )
    mounts: Annotated[list[MountConfig], doc("external MCP servers")] = msgspec.field(
        default_factory=list
    )
    wasm: Annotated[list[WasmToolConfig], doc("WebAssembly tools (needs vsmcp[wasm])")] = (
        msgspec.field(default_factory=list)
    )


class RateLimitConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    rate_per_s: Annotated[PositiveFloat, doc("calls per second, sustained")]
    burst: Annotated[float, msgspec.Meta(ge=1), doc("calls allowed at once (bucket size)")]


class RateLimitsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Token buckets. `per_origin`/`per_tool` are the defaults (`None` = unlimited);
    `origins`/`tools` override them for named origins (`http:ci`) and tools (`echo`)."""

    per_origin: Annotated[
        RateLimitConfig | None,
        doc(
            "bucket of each origin (http:<name>; mesh:<entry>/<origin> for mesh callers); "
            "unset: unlimited"
        ),
    ] = None
    per_tool: Annotated[RateLimitConfig | None, doc("bucket of each tool; unset: unlimited")] = None
    per_peer: Annotated[
        RateLimitConfig | None,
        doc(
            "bucket of one entry node of the mesh, all its callers together (each caller "
            "behind it also has its per_origin bucket); unset: 8 x per_origin"
        ),
    ] = None
    origins: Annotated[
        dict[str, RateLimitConfig],
        doc(
            "bucket of a named origin (or mesh:<node id> for a whole entry node), "
            "overriding the default"
        ),
    ] = msgspec.field(default_factory=dict)
    tools: Annotated[
        dict[str, RateLimitConfig], doc("bucket of a named tool, overriding per_tool")
    ] = msgspec.field(default_factory=dict)
    max_buckets: Annotated[
        PositiveInt, doc("buckets kept per kind (least recently used dropped, counted)")
    ] = 10_000


class McpTokenConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A bearer token for `/mcp`; `name` appears in the origin (`http:<name>`) and the audit."""

    name: Annotated[
        str,
        msgspec.Meta(pattern=r"^[A-Za-z0-9_.\-]{1,64}$"),
        doc("unique; the caller's origin is http:<name> (audit, rate limits)"),
    ]
    token: Annotated[
        str, msgspec.Meta(min_length=16), doc("the secret, at least 16 characters; unique")
    ]
    zone: Annotated[str, doc("the zone its bearer gets")]
    max_priority: Annotated[
        Priority,
        doc("the highest priority class (_meta vsmcp/priority) its calls may have; above: capped"),
    ] = DEFAULT_PRIORITY


class McpConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    tokens: Annotated[list[McpTokenConfig], doc("bearer tokens for /mcp, each granting a zone")] = (
        msgspec.field(default_factory=list)
    )
    loopback_zone: Annotated[str | None, doc("zone of a loopback /mcp client without a token")] = (
        "public"
    )
    loopback_max_priority: Annotated[
        Priority,
        doc("the highest priority class a loopback /mcp client without a token may ask for"),
    ] = DEFAULT_PRIORITY
    allowed_origins: Annotated[
        list[str],
        doc(
            "browser Origins HTTP answers (every route) besides loopback origins "
            "(localhost, 127.0.0.1, [::1], any port) on loopback connections; "
            "another Origin gets 403"
        ),
    ] = msgspec.field(default_factory=list)
    allowed_hosts: Annotated[
        list[str],
        doc(
            "Host names HTTP answers (every route) besides localhost, 127.0.0.1, ::1, "
            "http.host and the address a client connected to; any other Host gets 421 "
            "(DNS rebinding), wherever the node listens: list the names it is reached by"
        ),
    ] = msgspec.field(default_factory=list)
    max_body_bytes: Annotated[PositiveInt, doc("largest /mcp request body")] = (
        DEFAULT_MAX_BODY_BYTES
    )
    max_sessions: Annotated[PositiveInt, doc("2025-11-25 sessions open at once, in all")] = (
        DEFAULT_MAX_SESSIONS
    )
    max_sessions_per_caller: Annotated[
        PositiveInt,
        doc(
            "sessions of one caller (a token's name, or an anonymous client's address); "
            "a caller at its quota gives up its own oldest idle session"
        ),
    ] = DEFAULT_MAX_SESSIONS_PER_CALLER
    session_idle_s: Annotated[PositiveFloat, doc("a session idle this long ends")] = (
        DEFAULT_SESSION_IDLE_S
    )
    max_listeners: Annotated[
        PositiveInt, doc("open notification streams (subscriptions/listen, GET) at once")
    ] = DEFAULT_MAX_LISTENERS
    max_listeners_per_caller: Annotated[
        PositiveInt,
        doc("open notification streams (subscriptions/listen, GET) of one caller"),
    ] = DEFAULT_MAX_LISTENERS_PER_CALLER
    max_listed_tools: Annotated[
        int,
        doc(
            "0: tools/list lists every tool a caller may use; N: when there are more than N, "
            "it lists vsm.find_tools (search by words) and the first N-1 by name; every tool "
            "is still called by its name"
        ),
    ] = 0
    stdio_zone: Annotated[
        str,
        doc(
            "zone of `vsmcp mcp-stdio` clients, proven by the secret in <data_dir>/stdio.token; "
            "a bridge that cannot read it is a plain loopback client"
        ),
    ] = "public"
