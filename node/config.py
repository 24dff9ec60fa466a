"""Node configuration: embedded defaults < TOML file < `VSMCP_*` environment < CLI flags.

Every value is validated once, at start; the first problem becomes a `ConfigError`
naming the dotted key (`http.port`) and what is wrong, and the CLI exits with code 2.

Environment overrides are `VSMCP_<SECTION>_<KEY>`, e.g. `VSMCP_HTTP_PORT=8080` or
`VSMCP_MESH_SEEDS='["10.0.0.2:7701"]'`. A value is read as a TOML value when it parses
as one (numbers, booleans, arrays, quoted strings) and as a bare string otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from mesh.discovery import parse_seed
from mesh.errors import MeshError
from node.errors import ConfigError
from node.tools.config import McpConfig, RateLimitsConfig, ToolsConfig

DEFAULT_HTTP_PORT = 7700
DEFAULT_MESH_PORT = 7701
DEFAULT_ZONES = ("public", "ops", "restricted")
ENV_PREFIX = "VSMCP_"
MAX_CONFIG_FILE_BYTES = 1 << 20


def default_data_dir() -> Path:
    """Where a node keeps its key, certificate and database unless told otherwise."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "vsmcp"


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class NodeSection(_Section):
    data_dir: str = ""
    dev: bool = False
    log_format: str = "text"
    log_level: str = "info"
    name: str = ""
    debug_api: bool = False  # /api/debug/*: cut links, add tools (tests); never in production
    event_loop: str = "auto"  # auto (uvloop when installed) | uvloop | asyncio


class HttpSection(_Section):
    host: str = "127.0.0.1"
    port: int = DEFAULT_HTTP_PORT


class MeshSection(_Section):
    host: str = "127.0.0.1"
    port: int = DEFAULT_MESH_PORT
    seeds: list[str] = msgspec.field(default_factory=list)
    mdns: bool = True
    preset: str = "lan"  # membership timing: local | lan | wan
    name: str = "default"  # nodes admit only peers of the same mesh name
    # How long dead / left members stay in the member table; 0: the preset's
    # (24 h / 1 h; local: 10 min / 60 s).
    dead_reap_after_s: int = 0
    left_reap_after_s: int = 0


class TrustSection(_Section):
    authority_public_key: str = ""
    certificate_file: str = ""
    zones: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_ZONES))
    dev_zone: str = "restricted"


class EnvelopeSection(_Section):
    max_bytes: int = 1 << 20
    max_skew_s: int = 30  # how old an envelope may be
    # How far ahead of our clock an envelope may be stamped. Kept short: after a crash
    # the node refuses everything stamped before restart + this (it may have accepted
    # it already), so it is also how long a crashed node takes to rejoin.
    max_future_skew_s: int = 5
    replay_window: int = 1024
    replay_max_senders: int = 16384


class AuditSection(_Section):
    batch_size: int = 2048
    queue_size: int = 65536
    # How long a batch waits for more entries before it is committed, in ms (group
    # commit): with commit_before_answer off, how long an answered call's entry may
    # stay uncommitted (plus one commit, and any backlog up to queue_size).
    linger_ms: int = 5
    # Answer a tool call only once its audit entry is committed (an answered call is
    # never missing from the log after a crash), at the cost of one commit per answer.
    commit_before_answer: bool = False


class Config(_Section):
    node: NodeSection = msgspec.field(default_factory=NodeSection)
    http: HttpSection = msgspec.field(default_factory=HttpSection)
    mesh: MeshSection = msgspec.field(default_factory=MeshSection)
    trust: TrustSection = msgspec.field(default_factory=TrustSection)
    envelope: EnvelopeSection = msgspec.field(default_factory=EnvelopeSection)
    audit: AuditSection = msgspec.field(default_factory=AuditSection)
    tools: ToolsConfig = msgspec.field(default_factory=ToolsConfig)
    limits: RateLimitsConfig = msgspec.field(default_factory=RateLimitsConfig)
    mcp: McpConfig = msgspec.field(default_factory=McpConfig)

    @property
    def data_dir(self) -> Path:
        return Path(self.node.data_dir).expanduser() if self.node.data_dir else default_data_dir()


_LOG_FORMATS = ("text", "json")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_MESH_PRESETS = ("local", "lan", "wan")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
MAX_REAP_AFTER_S = 30 * 86_400
MAX_AUDIT_LINGER_MS = 60_000
_MESH_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SECTIONS = tuple(Config.__struct_fields__)
_MSGSPEC_PATH = re.compile(r"\s*-\s*at `\$(?P<path>[^`]*)`$")


def load_config(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build and validate the config. `overrides` holds CLI flags as dotted keys."""
    raw: dict[str, Any] = _read_toml(path) if path is not None else {}
    _merge_dotted(raw, _env_overrides(os.environ if environ is None else environ))
    _merge_dotted(raw, dict(overrides or {}))
    config = _convert(raw)
    _validate(config)
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError("--config", f"cannot read {path}: {e.strerror or e}") from e
    if len(data) > MAX_CONFIG_FILE_BYTES:
        raise ConfigError("--config", f"{path} is larger than {MAX_CONFIG_FILE_BYTES} bytes")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError("--config", f"{path} is not UTF-8 text") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("--config", f"{path} is not valid TOML: {e}") from e


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section = next((s for s in _SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            continue  # VSMCP_REQUIRE_SERVICES and friends are not config keys
        found[f"{section}.{rest[len(section) + 1 :]}"] = _parse_env_value(value)
    return found


def _parse_env_value(value: str) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def _merge_dotted(raw: dict[str, Any], dotted: Mapping[str, Any]) -> None:
    for key, value in dotted.items():
        section, _, field = key.partition(".")
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(section, f"expected a table, got {type(target).__name__}")
        target[field] = value


def _convert(raw: dict[str, Any]) -> Config:
    try:
        return msgspec.convert(raw, Config)
    except msgspec.ValidationError as e:
        message = str(e)
        match = _MSGSPEC_PATH.search(message)
        key = match.group("path").lstrip(".") if match else ""
        reason = message[: match.start()] if match else message
        unknown = re.match(r"Object contains unknown field `(?P<f>[^`]+)`", reason)
        if unknown:
            key = f"{key}.{unknown.group('f')}" if key else unknown.group("f")
            reason = "unknown key"
        # msgspec speaks JSON ("object"); config authors write TOML ("table").
        reason = reason.replace("`object`", "a table").replace("`", "")
        raise ConfigError(key or "(top level)", reason[:1].lower() + reason[1:]) from e


def _validate(config: Config) -> None:
    _check_port("http.port", config.http.port)
    _check_port("mesh.port", config.mesh.port)
    if config.node.log_format not in _LOG_FORMATS:
        raise ConfigError("node.log_format", f"must be one of {', '.join(_LOG_FORMATS)}")
    if config.node.log_level not in _LOG_LEVELS:
        raise ConfigError("node.log_level", f"must be one of {', '.join(_LOG_LEVELS)}")
    if config.node.event_loop not in EVENT_LOOPS:
        raise ConfigError("node.event_loop", f"must be one of {', '.join(EVENT_LOOPS)}")
    if config.node.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ConfigError("node.event_loop", "uvloop is not installed (pip install uvloop)")
    if not _MESH_NAME.fullmatch(config.mesh.name):
        raise ConfigError("mesh.name", "1 to 64 characters from A-Z a-z 0-9 . _ -")
    if config.mesh.preset not in _MESH_PRESETS:
        raise ConfigError("mesh.preset", f"must be one of {', '.join(_MESH_PRESETS)}")
    zones = config.trust.zones
    if not zones:
        raise ConfigError("trust.zones", "must name at least one zone")
    if len(set(zones)) != len(zones):
        raise ConfigError("trust.zones", "zone names must be unique")
    if config.trust.dev_zone not in zones:
        raise ConfigError("trust.dev_zone", f"'{config.trust.dev_zone}' is not in trust.zones")
    _check_range("envelope.max_bytes", config.envelope.max_bytes, 1024, 64 << 20)
    _check_range("mesh.dead_reap_after_s", config.mesh.dead_reap_after_s, 0, MAX_REAP_AFTER_S)
    _check_range("mesh.left_reap_after_s", config.mesh.left_reap_after_s, 0, MAX_REAP_AFTER_S)
    _check_range("envelope.max_skew_s", config.envelope.max_skew_s, 1, 3600)
    _check_range("envelope.max_future_skew_s", config.envelope.max_future_skew_s, 1, 3600)
    _check_range("envelope.replay_window", config.envelope.replay_window, 64, 1 << 16)
    _check_range("envelope.replay_max_senders", config.envelope.replay_max_senders, 16, 1 << 22)
    _check_range("audit.batch_size", config.audit.batch_size, 1, 1 << 16)
    _check_range("audit.queue_size", config.audit.queue_size, 1, 1 << 22)
    _check_range("audit.linger_ms", config.audit.linger_ms, 0, MAX_AUDIT_LINGER_MS)
    _validate_zone_references(config)
    for i, seed in enumerate(config.mesh.seeds):
        try:
            parse_seed(seed)
        except MeshError as e:
            raise ConfigError(
                f"mesh.seeds[{i}]", f"'{seed}' is not [NODE_ID@]HOST:PORT: {e}"
            ) from e


def _validate_zone_references(config: Config) -> None:
    """Every zone a tool, mount or token names must be one of trust.zones."""
    known = set(config.trust.zones)
    references: list[tuple[str, str | None]] = [
        ("tools.introspection_zone", config.tools.introspection_zone),
        ("mcp.loopback_zone", config.mcp.loopback_zone),
        ("mcp.stdio_zone", config.mcp.stdio_zone),
    ]
    for i, plugin in enumerate(config.tools.plugins):
        references.append((f"tools.plugins[{i}].zone", plugin.zone))
    for i, mount in enumerate(config.tools.mounts):
        references.append((f"tools.mounts[{i}].zone", mount.zone))
        for tool, zone in mount.tool_zones.items():
            references.append((f"tools.mounts[{i}].tool_zones.{tool}", zone))
    for i, token in enumerate(config.mcp.tokens):
        references.append((f"mcp.tokens[{i}].zone", token.zone))
    for key, referenced in references:
        if referenced is not None and referenced not in known:
            raise ConfigError(
                key, f"unknown zone '{referenced}' (trust.zones: {', '.join(config.trust.zones)})"
            )


def _check_port(key: str, port: int) -> None:
    _check_range(key, port, 0, 65535)


def _check_range(key: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ConfigError(key, f"{value} is out of range ({low}..{high})")
