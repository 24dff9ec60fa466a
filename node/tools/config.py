"""Config sections of the tool layer and the MCP gateway (msgspec Structs, TOML-shaped).

Suggested placement in the node Config: `tools: ToolsConfig`, `limits: RateLimitsConfig`,
`mcp: McpConfig`, i.e. TOML tables `[tools]`, `[limits]`, `[mcp]`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
ToolName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.\-]{1,128}$")]


class SupervisionConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Restart, crash-loop and quarantine settings shared by every unit (see supervisor.py)."""

    backoff_initial_s: PositiveFloat = 0.2
    backoff_max_s: PositiveFloat = 30.0
    backoff_reset_s: PositiveFloat = 30.0
    crash_loop_failures: PositiveInt = 5
    crash_loop_window_s: PositiveFloat = 60.0
    quarantine_s: PositiveFloat = 60.0
    stop_timeout_s: PositiveFloat = 10.0


class UnitLimitsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Per-unit overrides; `None` takes the `[tools]` default."""

    max_concurrency: PositiveInt | None = None
    max_queue: NonNegInt | None = None
    timeout_s: PositiveFloat | None = None


class PluginToolConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A Python tool: `target = "package.module:function"`.

    The target is either a `node.tools.functions.PluginTool` (which carries its own
    name, schema and zone; fields set here override them) or a callable
    `fn(arguments, ctx)`, sync or async.
    """

    name: ToolName
    target: str
    description: str = ""
    input_schema: dict[str, Any] | None = None
    zone: str | None = None
    limits: UnitLimitsConfig = msgspec.field(default_factory=UnitLimitsConfig)


class MountConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """An external MCP server whose tools become local tools.

    Exactly one of `command` (stdio: `command` + `args`, `env`, `cwd`) or `url`
    (Streamable HTTP, optional extra `headers`). Tools are named `<namespace>.<tool>`;
    `namespace` defaults to `name`, and `""` keeps the server's names unchanged.
    """

    name: ToolName
    command: str | None = None
    args: list[str] = msgspec.field(default_factory=list)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    mode: Literal["auto", "legacy"] = "auto"
    namespace: str | None = None
    zone: str = "public"
    tool_zones: dict[str, str] = msgspec.field(default_factory=dict)
    health_interval_s: PositiveFloat = 5.0
    health_timeout_s: PositiveFloat = 5.0
    # Seconds the server has to start and answer `initialize` (and the first tools/list);
    # past it the start counts as a crash, logged with the mount's name and command.
    start_timeout_s: PositiveFloat = 30.0
    # Seconds a stdio server has to exit after its stdin closes before its whole process
    # group is killed (SIGKILL). At most 2 s: the node stops within 5 s whatever mounts do.
    stop_grace_s: PositiveFloat = 1.0
    limits: UnitLimitsConfig = msgspec.field(default_factory=UnitLimitsConfig)

    def __post_init__(self) -> None:
        if (self.command is None) == (self.url is None):
            raise ValueError(f"mount {self.name!r}: set exactly one of 'command' or 'url'")


class ToolsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    introspection_zone: str = "public"
    entry_points: bool = True
    max_concurrency: PositiveInt = 16
    max_queue: NonNegInt = 64
    timeout_s: PositiveFloat = 30.0
    # Largest answer (bytes) a mounted server may give to one call: a larger one fails
    # that call with a `result_too_large` error naming both sizes, and is never held whole.
    max_result_bytes: PositiveInt = 4 << 20
    supervision: SupervisionConfig = msgspec.field(default_factory=SupervisionConfig)
    plugins: list[PluginToolConfig] = msgspec.field(default_factory=list)
    mounts: list[MountConfig] = msgspec.field(default_factory=list)


class RateLimitConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    rate_per_s: PositiveFloat
    burst: Annotated[float, msgspec.Meta(ge=1)]


class RateLimitsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Token buckets. `per_origin`/`per_tool` are the defaults (`None` = unlimited);
    `origins`/`tools` override them for named origins (`http:ci`) and tools (`echo`)."""

    per_origin: RateLimitConfig | None = None
    per_tool: RateLimitConfig | None = None
    origins: dict[str, RateLimitConfig] = msgspec.field(default_factory=dict)
    tools: dict[str, RateLimitConfig] = msgspec.field(default_factory=dict)
    max_buckets: PositiveInt = 10_000


class McpTokenConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A bearer token for `/mcp`; `name` appears in the origin (`http:<name>`) and the audit."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
    token: Annotated[str, msgspec.Meta(min_length=16)]
    zone: str


class McpConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    tokens: list[McpTokenConfig] = msgspec.field(default_factory=list)
    loopback_zone: str | None = "public"
    allowed_origins: list[str] = msgspec.field(default_factory=list)
    # Host names /mcp answers besides loopback ones (when the node listens on loopback);
    # on another address, Host is checked only if this is set.
    allowed_hosts: list[str] = msgspec.field(default_factory=list)
    max_body_bytes: PositiveInt = 1 << 20
    max_sessions: PositiveInt = 256
    session_idle_s: PositiveFloat = 600.0
    max_listeners: PositiveInt = 64
    stdio_zone: str = "public"
