"""Node configuration: embedded defaults < TOML file < `VSMCP_*` environment < CLI flags.

Every value is validated once, at start; the first problem becomes a `ConfigError`
naming the dotted key (`http.port`) and what is wrong, and the CLI exits with code 2.

Environment overrides are `VSMCP_<SECTION>_<KEY>`, e.g. `VSMCP_HTTP_PORT=8080` or
`VSMCP_MESH_SEEDS='["10.0.0.2:7701"]'`, and reach keys of deeper tables too
(`VSMCP_BRIDGES_AMQP_URL`, or `VSMCP_BRIDGES__AMQP__URL`): node/app/config_env.py.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

from vsmcp.crdt.policies import DEFAULT_MAX_PER_ISSUER
from vsmcp.mesh.certs import DEFAULT_ZONES
from vsmcp.mesh.discovery import parse_seed
from vsmcp.mesh.errors import MeshError
from vsmcp.node.app.config_env import env_overrides
from vsmcp.node.app.profiles import apply_profile_defaults, check_profile
from vsmcp.node.bridges.config import BridgesSection
from vsmcp.node.children.config import CHILD_NAME, MAX_DEPTH_LIMIT, ChildEntry, RecursionSection
from vsmcp.node.errors import ConfigError
from vsmcp.node.peers.service import MAX_NODE_NAME_BYTES, is_loopback_host, is_node_name
from vsmcp.node.routing.gray_config import GrayConfig
from vsmcp.node.tools.config import (
    STDIO_GRANT_NAME,
    EdgeConfig,
    McpConfig,
    RateLimitsConfig,
    ToolsConfig,
    doc,
)
from vsmcp.node.vsm.algedonic import DEFAULT_LANE_CAPACITY, DEFAULT_THRESHOLD
from vsmcp.node.vsm.audits import check_probe_schema
from vsmcp.node.vsm.audits_config import AuditsConfig
from vsmcp.node.vsm.balance import DEFAULT_WINDOW_S as BALANCE_WINDOW_S
from vsmcp.node.vsm.concurrency_config import ConcurrencyConfig
from vsmcp.node.vsm.immune.config import ImmuneConfig
from vsmcp.node.vsm.kpis import DEFAULT_WINDOW_S as KPI_WINDOW_S
from vsmcp.node.vsm.responses import ResponseRule, default_rules, validate_rules
from vsmcp.node.vsm.s4.config import LlmConfig, S4Config
from vsmcp.node.vsm.s4.config import check as check_s4
from vsmcp.node.vsm.stream import DEFAULT_SUBSCRIBER_CAPACITY, MAX_SUBSCRIBER_CAPACITY
from vsmcp.node.vsm.system3 import DEFAULT_INTERVAL_S as S3_INTERVAL_S
from vsmcp.node.wasmdist.model import MAX_MODULE_BYTES

DEFAULT_HTTP_PORT = 7700
DEFAULT_MAX_CONNECTIONS = 512
DEFAULT_MAX_CONNECTIONS_PER_CLIENT = 128
DEFAULT_HEAD_TIMEOUT_S = 10.0
DEFAULT_BODY_IDLE_TIMEOUT_S = 30.0
DEFAULT_MAX_PAGE_CLIENTS = 32
MAX_PAGE_CLIENTS = 4096
DEFAULT_MESH_PORT = 7701
MAX_CONFIG_FILE_BYTES = 1 << 20


def default_data_dir() -> Path:
    """Where a node keeps its key, certificate and database unless told otherwise."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "vsmcp"


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


# Every field has a description (`Annotated[T, doc("...")]`, what the key does, in its
# unit): README.md's config reference is generated from these structs
# (`python -m vsmcp.node.app.config_reference --write README.md`;
# tests/node/app/test_config_reference.py fails when a field has none or the README is stale).


class NodeSection(_Section):
    data_dir: Annotated[
        str,
        doc(
            'key, certificate, database, runtime.json; "": $XDG_DATA_HOME/vsmcp '
            "or ~/.local/share/vsmcp"
        ),
    ] = ""
    dev: Annotated[
        bool, doc("self-certify; mesh.host must be loopback (single machine only, loudly flagged)")
    ] = False
    log_format: Annotated[str, doc('"text" or "json" (one object per line), on stdout')] = "text"
    log_level: Annotated[str, doc("debug | info | warning | error")] = "info"
    name: Annotated[
        str,
        doc(
            "a human name, announced to the mesh (calls may be pinned to the node by it); "
            '"": the node id\'s last 8 characters'
        ),
    ] = ""
    debug_api: Annotated[
        bool, doc("/api/debug/* (cut links, add tools): tests only, never in production")
    ] = False
    event_loop: Annotated[
        str, doc("auto (uvloop when installed; it is a dependency) | uvloop | asyncio")
    ] = "auto"
    profile: Annotated[
        str,
        doc(
            "default | edge: a small host, WASM tools only (plugins and mounts refused), "
            "smaller buffers (node/app/profiles.py)"
        ),
    ] = "default"


class HttpSection(_Section):
    host: Annotated[str, doc("HTTP bind address: an IP address or a host name of this machine")] = (
        "127.0.0.1"
    )
    port: Annotated[int, doc("0 = pick a free port (printed, and in runtime.json)")] = (
        DEFAULT_HTTP_PORT
    )
    max_connections: Annotated[
        int, doc("open connections at most; 16 more serve only /healthz, /metrics and /api/*")
    ] = DEFAULT_MAX_CONNECTIONS
    max_connections_per_client: Annotated[
        int, doc("open connections from one client address (all local clients share one)")
    ] = DEFAULT_MAX_CONNECTIONS_PER_CLIENT
    head_timeout_s: Annotated[
        float,
        doc(
            "seconds a connection has to send a complete request head, from opening or from "
            "its previous response (also how long an idle keep-alive connection stays open)"
        ),
    ] = DEFAULT_HEAD_TIMEOUT_S
    body_idle_timeout_s: Annotated[
        float, doc("seconds a request body may go without a byte before the connection closes")
    ] = DEFAULT_BODY_IDLE_TIMEOUT_S
    max_page_clients: Annotated[
        int,
        doc(
            "status page clients (open /api/stream feeds) at most; past it, 503. "
            f"1..{MAX_PAGE_CLIENTS}"
        ),
    ] = DEFAULT_MAX_PAGE_CLIENTS
    admin_zone: Annotated[
        str,
        doc(
            "zone a bearer token needs for the status page's admin actions (revoking a "
            "policy; stopping a child also needs recursion.spawn_zone); the data dir's "
            "owner's token always may"
        ),
    ] = "restricted"


class MeshSection(_Section):
    host: Annotated[
        str,
        doc(
            "mesh (ZeroMQ) bind address, advertised to peers; also the mDNS interface. "
            "An IP address, an interface name or localhost"
        ),
    ] = "127.0.0.1"
    port: Annotated[int, doc("0 = pick a free port; UDP whois on the same number")] = (
        DEFAULT_MESH_PORT
    )
    seeds: Annotated[
        list[str], doc('peers to join through: "HOST:PORT" or "NODE_ID@HOST:PORT"')
    ] = msgspec.field(default_factory=list)
    mdns: Annotated[bool, doc("find peers by multicast DNS (_vsmcp._tcp.local.)")] = True
    mdns_compiled: Annotated[
        bool,
        doc(
            "run python-zeroconf's compiled extensions (≈4× less CPU per mDNS packet, for a "
            "LAN with heavy mDNS traffic; +2.8 MiB resident) instead of its Python sources"
        ),
    ] = False
    preset: Annotated[str, doc("membership timing: local | lan | wan")] = "lan"
    name: Annotated[str, doc("admit only peers of the same mesh name")] = "default"
    dead_reap_after_s: Annotated[
        int, doc("forget dead members after this; 0 = the preset's (24 h; local: 10 min)")
    ] = 0
    left_reap_after_s: Annotated[
        int, doc("forget left members after this; 0 = the preset's (1 h; local: 60 s)")
    ] = 0


class TrustSection(_Section):
    authority_public_key: Annotated[
        str, doc("the mesh authority: hex, base64 or its node id (required unless dev)")
    ] = ""
    certificate_file: Annotated[str, doc('this node\'s certificate; "": <data_dir>/node.cert')] = ""
    zones: Annotated[list[str], doc("zones, lowest first")] = msgspec.field(
        default_factory=lambda: list(DEFAULT_ZONES)
    )
    dev_zone: Annotated[str, doc("the zone a dev (self-certified) node gives itself")] = (
        "restricted"
    )


class EnvelopeSection(_Section):
    max_bytes: Annotated[int, doc("largest envelope, checked before anything is decoded")] = 1 << 20
    max_skew_s: Annotated[int, doc("how old an envelope may be")] = 30
    # Kept short: after a crash the node refuses everything stamped before restart +
    # this (it may have accepted it already), so it is also how long a crashed node
    # takes to rejoin.
    max_future_skew_s: Annotated[
        int,
        doc(
            "how far ahead of our clock an envelope may be stamped; also how long a "
            "crashed node refuses envelopes after restart"
        ),
    ] = 5
    replay_window: Annotated[int, doc("per-sender sequence window of the replay guard")] = 1024
    replay_max_senders: Annotated[
        int, doc("senders the replay guard remembers (its memory bound)")
    ] = 16384


class AuditSection(_Section):
    batch_size: Annotated[int, doc("audit entries written per transaction, at most")] = 2048
    queue_size: Annotated[
        int, doc("audit entries waiting to be written; a full queue makes callers wait")
    ] = 65536
    linger_ms: Annotated[
        int,
        doc(
            "ms a batch waits for more entries before it is committed (group commit); with "
            "commit_before_answer off, how long an answered call's entry may stay uncommitted "
            "(plus one commit, and any backlog up to queue_size)"
        ),
    ] = 5
    commit_before_answer: Annotated[
        bool,
        doc(
            "answer a tool call only once its audit entry is committed (an answered call is "
            "never missing after a crash), at the cost of one commit per answer"
        ),
    ] = False


class ReplicationSection(_Section):
    max_policies_per_issuer: Annotated[
        int,
        doc(
            "policies CRDT keys (grants, revocations) held per non-authority issuer; "
            "beyond it the issuer's lowest ids are kept, the rest refused and counted "
            "(vsmcp_policies_over_cap_total); authority policies are not capped"
        ),
    ] = DEFAULT_MAX_PER_ISSUER


class VsmSection(_Section):
    event_buffer: Annotated[
        int,
        doc(
            "events each subscriber of the event stream holds before it drops "
            "(vsmcp_events_dropped_total)"
        ),
    ] = DEFAULT_SUBSCRIBER_CAPACITY
    patterns_dir: Annotated[
        str,
        doc(
            'a directory of pattern files (*.toml, *.json), reloaded on change; "": none. '
            "At start a refused file stops the node; later the running set is kept"
        ),
    ] = ""
    patterns_poll_s: Annotated[
        float, doc("how often patterns_dir is checked for changes, in seconds")
    ] = 2.0
    algedonic_threshold: Annotated[
        float,
        doc(
            "intensity in [0, 1] above which an algedonic signal goes to System 5 at once; "
            "at or below it System 3 aggregates it"
        ),
    ] = DEFAULT_THRESHOLD
    algedonic_queue: Annotated[
        int, doc("signals each algedonic lane (S5, S3) holds before it drops (counted)")
    ] = DEFAULT_LANE_CAPACITY
    algedonic_window_s: Annotated[
        float, doc("window of System 3's pain/pleasure balance (viability input), in seconds")
    ] = BALANCE_WINDOW_S
    s3_interval_s: Annotated[
        float, doc("how often System 3 takes its queued weak signals into its balance, in seconds")
    ] = S3_INTERVAL_S
    kpi_window_s: Annotated[
        float, doc("window of System 3's call KPIs (calls, errors, latency), in seconds")
    ] = KPI_WINDOW_S
    latency_objective_ms: Annotated[
        float, doc("p95 call latency the viability score expects, in milliseconds")
    ] = 1000.0
    signal_zone: Annotated[
        str,
        doc("zone a caller needs to raise signals (the vsm.signal tool, POST /api/algedonic)"),
    ] = "restricted"
    alert_telegram_chat: Annotated[
        str,
        doc(
            "a Telegram chat id: System 5's alerts go there through the mesh tool "
            'telegram.send of a bridge node (docs/bridges.md); "": not sent'
        ),
    ] = ""
    responses: Annotated[
        list[ResponseRule] | None,
        doc(
            "System 5's response rules (docs/vsm.md); unset: strong pain tightens limits "
            "to 50% for 60 s; responses = []: none"
        ),
    ] = None

    @property
    def response_rules(self) -> list[ResponseRule]:
        return default_rules() if self.responses is None else self.responses

    immune: Annotated[
        ImmuneConfig,
        doc("the immune system: built-in patterns and mesh-wide mitigation policies"),
    ] = msgspec.field(default_factory=ImmuneConfig)
    s4: Annotated[
        S4Config, doc("System 4: the planner's offline matcher and the environment scan")
    ] = msgspec.field(default_factory=S4Config)
    concurrency: Annotated[
        ConcurrencyConfig | None,
        doc(
            "adaptive concurrency limits at the /mcp entry, for calls served to peers and "
            "per unit (docs/regulation.md); absent: fixed unit limits only"
        ),
    ] = None
    gray: Annotated[
        GrayConfig, doc("gray failures: callers observe providers and route around degraded ones")
    ] = msgspec.field(default_factory=GrayConfig)
    audits: Annotated[
        AuditsConfig, doc("System 3*: sporadic probes of the units and of peers' tools")
    ] = msgspec.field(default_factory=AuditsConfig)


class Config(_Section):
    node: Annotated[NodeSection, doc("this process")] = msgspec.field(default_factory=NodeSection)
    http: Annotated[HttpSection, doc("/healthz, /metrics, /api/*, /mcp")] = msgspec.field(
        default_factory=HttpSection
    )
    mesh: Annotated[MeshSection, doc("peers: ZeroMQ, discovery, membership")] = msgspec.field(
        default_factory=MeshSection
    )
    trust: Annotated[TrustSection, doc("authority, certificate, zones")] = msgspec.field(
        default_factory=TrustSection
    )
    envelope: Annotated[EnvelopeSection, doc("signed messages between nodes")] = msgspec.field(
        default_factory=EnvelopeSection
    )
    audit: Annotated[AuditSection, doc("the signed audit log")] = msgspec.field(
        default_factory=AuditSection
    )
    replication: Annotated[ReplicationSection, doc("the replicated documents (CRDTs)")] = (
        msgspec.field(default_factory=ReplicationSection)
    )
    tools: Annotated[ToolsConfig, doc("System 1 units: built-ins, plugins, mounts")] = (
        msgspec.field(default_factory=ToolsConfig)
    )
    limits: Annotated[RateLimitsConfig, doc("token buckets; a refused call gets retry-after")] = (
        msgspec.field(default_factory=RateLimitsConfig)
    )
    mcp: Annotated[McpConfig, doc("the MCP gateway (/mcp, vsmcp mcp-stdio)")] = msgspec.field(
        default_factory=McpConfig
    )
    vsm: Annotated[
        VsmSection, doc("the VSM systems: event stream, pattern engine, algedonic channel")
    ] = msgspec.field(default_factory=VsmSection)
    edge: Annotated[EdgeConfig, doc("the WebAssembly runtime of WASM tools (docs/wasm.md)")] = (
        msgspec.field(default_factory=EdgeConfig)
    )
    recursion: Annotated[
        RecursionSection, doc("System 5's recursion guard on child VSMs (docs/children.md)")
    ] = msgspec.field(default_factory=RecursionSection)
    children: Annotated[
        list[ChildEntry], doc("child VSMs started with this node ([[children]], docs/children.md)")
    ] = msgspec.field(default_factory=list)
    llm: Annotated[
        LlmConfig,
        doc("the planner's language model (Anthropic Messages API; off without an API key)"),
    ] = msgspec.field(default_factory=LlmConfig)
    bridges: Annotated[
        BridgesSection,
        doc("AMQP, MQTT, PostgreSQL, Telegram: each off unless its table is set (docs/bridges.md)"),
    ] = msgspec.field(default_factory=BridgesSection)

    @property
    def data_dir(self) -> Path:
        return Path(self.node.data_dir).expanduser() if self.node.data_dir else default_data_dir()


_LOG_FORMATS = ("text", "json")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_MESH_PRESETS = ("local", "lan", "wan")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
MAX_REAP_AFTER_S = 30 * 86_400
MAX_AUDIT_LINGER_MS = 60_000
MAX_POLICIES_PER_ISSUER = 1_000_000
MAX_TIMEOUT_S = 3600.0
MIN_PATTERNS_POLL_S = 0.1
MAX_IMMUNE_TTL_S = 7 * 86_400.0
_MESH_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_LISTED_TOOLS = 100_000
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")  # RFC 1123
_MAX_HOST_NAME_CHARS = 253
_MSGSPEC_PATH = re.compile(r"\s*-\s*at `\$(?P<path>[^`]*)`$")


def load_config(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build and validate the config. `overrides` holds CLI flags as dotted keys."""
    raw: dict[str, Any] = _read_toml(path) if path is not None else {}
    _merge_dotted(raw, env_overrides(os.environ if environ is None else environ, Config))
    _merge_dotted(raw, dict(overrides or {}))
    apply_profile_defaults(raw)
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


def _merge_dotted(raw: dict[str, Any], dotted: Mapping[str, Any]) -> None:
    for key, value in dotted.items():
        *tables, field = key.split(".")
        target = raw
        for depth, name in enumerate(tables):
            target = target.setdefault(name, {})
            if not isinstance(target, dict):
                raise ConfigError(
                    ".".join(tables[: depth + 1]),
                    f"expected a table, got {type(target).__name__}",
                )
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


# A mount's stop grace must leave the rest of the 5 s shutdown budget to the node.
MAX_MOUNT_STOP_GRACE_S = 2.0


def _validate(config: Config) -> None:
    _check_port("http.port", config.http.port)
    _check_port("mesh.port", config.mesh.port)
    _check_host("http.host", config.http.host)
    _check_host("mesh.host", config.mesh.host)
    _check_range("http.max_connections", config.http.max_connections, 1, 1 << 20)
    _check_range("http.max_page_clients", config.http.max_page_clients, 1, MAX_PAGE_CLIENTS)
    _check_range(
        "http.max_connections_per_client", config.http.max_connections_per_client, 1, 1 << 20
    )
    _check_seconds("http.head_timeout_s", config.http.head_timeout_s)
    _check_seconds("http.body_idle_timeout_s", config.http.body_idle_timeout_s)
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
    listed = config.mcp.max_listed_tools
    if listed != 0 and not 2 <= listed <= MAX_LISTED_TOOLS:
        raise ConfigError(
            "mcp.max_listed_tools",
            f"{listed} is out of range: 0 (off) or 2..{MAX_LISTED_TOOLS} "
            "(room for vsm.find_tools and a tool)",
        )
    name = config.node.name
    if not is_node_name(name):
        raise ConfigError(
            "node.name", f"at most {MAX_NODE_NAME_BYTES} bytes in UTF-8, no control characters"
        )
    if config.node.dev and not is_loopback_host(config.mesh.host):
        # A self-certified node admits self-certified peers; only loopback keeps that
        # on one machine.
        raise ConfigError(
            "mesh.host",
            f"'{config.mesh.host}' is not a loopback address: node.dev (--dev, "
            "self-certified) runs on loopback only; a real mesh needs certificates",
        )
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
    if isinstance(config.edge.run, str) and config.edge.run != "*":
        raise ConfigError("edge.run", 'a list of tool names, or "*" for every published module')
    _check_range("edge.max_module_bytes", config.edge.max_module_bytes, 1, MAX_MODULE_BYTES)
    _check_range("envelope.max_future_skew_s", config.envelope.max_future_skew_s, 1, 3600)
    _check_range("envelope.replay_window", config.envelope.replay_window, 64, 1 << 16)
    _check_range("envelope.replay_max_senders", config.envelope.replay_max_senders, 16, 1 << 22)
    _check_range("audit.batch_size", config.audit.batch_size, 1, 1 << 16)
    _check_range(
        "replication.max_policies_per_issuer",
        config.replication.max_policies_per_issuer,
        1,
        MAX_POLICIES_PER_ISSUER,
    )
    _check_range("audit.queue_size", config.audit.queue_size, 1, 1 << 22)
    _check_range("audit.linger_ms", config.audit.linger_ms, 0, MAX_AUDIT_LINGER_MS)
    _check_range("tools.max_result_bytes", config.tools.max_result_bytes, 1024, 1 << 30)
    for i, mount in enumerate(config.tools.mounts):
        if mount.stop_grace_s > MAX_MOUNT_STOP_GRACE_S:
            raise ConfigError(
                f"tools.mounts[{i}].stop_grace_s",
                f"{mount.stop_grace_s} is over {MAX_MOUNT_STOP_GRACE_S} s "
                "(the node stops within 5 s)",
            )
    _check_range("vsm.event_buffer", config.vsm.event_buffer, 1, MAX_SUBSCRIBER_CAPACITY)
    if not MIN_PATTERNS_POLL_S <= config.vsm.patterns_poll_s <= MAX_TIMEOUT_S:
        raise ConfigError(
            "vsm.patterns_poll_s",
            f"{config.vsm.patterns_poll_s} is out of range "
            f"({MIN_PATTERNS_POLL_S}..{MAX_TIMEOUT_S} s)",
        )
    _validate_algedonic(config)
    _validate_immune(config.vsm.immune)
    if config.vsm.concurrency is not None:
        config.vsm.concurrency.settings()  # raises ConfigError naming the key
        config.vsm.concurrency.bound_settings(1.0)
    check_profile(config)
    _validate_wasm(config)
    _validate_zone_references(config)
    _validate_tokens(config)
    for i, seed in enumerate(config.mesh.seeds):
        try:
            parse_seed(seed)
        except MeshError as e:
            raise ConfigError(
                f"mesh.seeds[{i}]", f"'{seed}' is not [NODE_ID@]HOST:PORT: {e}"
            ) from e
    _validate_children(config)
    _validate_s3_star(config)
    _validate_bridges(config)


def _validate_bridges(config: Config) -> None:
    """Each configured bridge's table, checked at load (not when the bridge starts, after
    the node is already up): its zones against trust.zones, its URLs and chat ids."""
    zones = tuple(config.trust.zones)
    bridges = config.bridges
    if bridges.amqp is not None:
        bridges.amqp.check(zones)
    if bridges.mqtt is not None:
        bridges.mqtt.check_zones(zones)
    if bridges.telegram is not None:
        bridges.telegram.check(zones)


def _validate_s3_star(config: Config) -> None:
    audits = config.vsm.audits
    if audits.max_interval_s < audits.min_interval_s:
        raise ConfigError("vsm.audits.max_interval_s", "must be at least min_interval_s")
    declared = [
        *((f"tools.plugins[{i}]", p.probe) for i, p in enumerate(config.tools.plugins)),
        *((f"tools.mounts[{i}]", m.probe) for i, m in enumerate(config.tools.mounts)),
    ]
    for where, probe in declared:
        if probe is not None:
            why = check_probe_schema(probe.expect)
            if why is not None:
                raise ConfigError(f"{where}.probe.expect", f"not a JSON schema: {why}")


def _validate_children(config: Config) -> None:
    rec = config.recursion
    _check_range("recursion.max_depth", rec.max_depth, 0, MAX_DEPTH_LIMIT)
    _check_range("recursion.max_children", rec.max_children, 0, 1024)
    _check_range("recursion.max_descendants", rec.max_descendants, 0, 1 << 16)
    _check_range("recursion.child_certificate_s", rec.child_certificate_s, 4, 366 * 24 * 3600)
    if rec.spawn_zone not in config.trust.zones:
        raise ConfigError("recursion.spawn_zone", f"'{rec.spawn_zone}' is not in trust.zones")
    for i, plugin in enumerate(config.tools.plugins):
        if plugin.scale is not None and plugin.scale.max > rec.max_children:
            raise ConfigError(
                f"tools.plugins[{i}].scale.max",
                f"{plugin.scale.max} children is more than recursion.max_children "
                f"({rec.max_children})",
            )
    if config.http.admin_zone not in config.trust.zones:
        zone = config.http.admin_zone
        raise ConfigError("http.admin_zone", f"'{zone}' is not in trust.zones")
    if config.edge.publish_zone not in config.trust.zones:
        zone = config.edge.publish_zone
        raise ConfigError("edge.publish_zone", f"'{zone}' is not in trust.zones")
    seen: set[str] = set()
    for i, child in enumerate(config.children):
        if not CHILD_NAME.fullmatch(child.name):
            raise ConfigError(
                f"children[{i}].name", "letters, digits, - and _ (at most 63), not a path"
            )
        if child.name in seen:
            raise ConfigError(f"children[{i}].name", f"{child.name!r} is declared twice")
        seen.add(child.name)
        if child.zone and child.zone not in config.trust.zones:
            raise ConfigError(f"children[{i}].zone", f"'{child.zone}' is not in trust.zones")


def _validate_wasm(config: Config) -> None:
    """Each manifest reads, and grants only what `[edge]` allows (checked again at start)."""
    if not config.tools.wasm:
        return
    if importlib.util.find_spec("wasmtime") is None:
        raise ConfigError("tools.wasm", "WASM tools need wasmtime: pip install 'vsmcp[wasm]'")
    from vsmcp.edge.errors import ManifestError
    from vsmcp.edge.manifest import load_manifest
    from vsmcp.node.tools.wasm import edge_permissions

    permissions = edge_permissions(config.edge)
    zones = set(config.trust.zones)
    for i, wasm in enumerate(config.tools.wasm):
        key = f"tools.wasm[{i}].manifest"
        try:
            manifest = load_manifest(Path(wasm.manifest), permissions)
        except ManifestError as e:
            raise ConfigError(key, str(e)) from e
        if manifest.zone not in zones:
            raise ConfigError(key, f"zone '{manifest.zone}' is not in trust.zones")
        why = None if manifest.probe is None else check_probe_schema(manifest.probe.expect)
        if why is not None:
            raise ConfigError(key, f"probe.expect: not a JSON schema: {why}")


def _validate_algedonic(config: Config) -> None:
    vsm = config.vsm
    if not 0.0 <= vsm.algedonic_threshold <= 1.0:
        raise ConfigError("vsm.algedonic_threshold", f"{vsm.algedonic_threshold} is not in [0, 1]")
    _check_range("vsm.algedonic_queue", vsm.algedonic_queue, 1, 1 << 20)
    _check_seconds("vsm.algedonic_window_s", vsm.algedonic_window_s)
    _check_seconds("vsm.kpi_window_s", vsm.kpi_window_s)
    if not 0.01 <= vsm.s3_interval_s <= MAX_TIMEOUT_S:
        raise ConfigError(
            "vsm.s3_interval_s", f"{vsm.s3_interval_s} is out of range (0.01..3600 s)"
        )
    if not 0 < vsm.latency_objective_ms <= MAX_TIMEOUT_S * 1000:
        raise ConfigError("vsm.latency_objective_ms", f"{vsm.latency_objective_ms} is out of range")
    validate_rules(vsm.response_rules)
    check_s4(config.llm, vsm.s4)
    if vsm.alert_telegram_chat and not re.fullmatch(r"-?[0-9]{1,20}", vsm.alert_telegram_chat):
        raise ConfigError(
            "vsm.alert_telegram_chat", f"{vsm.alert_telegram_chat!r} is not a Telegram chat id"
        )


def _validate_immune(immune: ImmuneConfig) -> None:
    for name in ("block_ttl_s", "quarantine_ttl_s", "observation_ttl_s"):
        _check_immune_seconds(name, getattr(immune, name), MAX_IMMUNE_TTL_S)
    for name in ("denial", "storm", "bad_envelope", "tool_error"):
        _check_range(f"vsm.immune.{name}_count", getattr(immune, f"{name}_count"), 1, 100_000)
        _check_immune_seconds(f"{name}_window_s", getattr(immune, f"{name}_window_s"), 3600.0)
    _check_range("vsm.immune.max_blocks_per_minute", immune.max_blocks_per_minute, 1, 10_000)


def _check_immune_seconds(name: str, value: float, upper: float) -> None:
    if not 0 < value <= upper:
        raise ConfigError(f"vsm.immune.{name}", f"{value} is out of range (0..{upper:g} s]")


def _validate_zone_references(config: Config) -> None:
    """Every zone a tool, mount or token names must be one of trust.zones."""
    known = set(config.trust.zones)
    references: list[tuple[str, str | None]] = [
        ("tools.introspection_zone", config.tools.introspection_zone),
        ("mcp.loopback_zone", config.mcp.loopback_zone),
        ("mcp.stdio_zone", config.mcp.stdio_zone),
        ("vsm.signal_zone", config.vsm.signal_zone),
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


def _validate_tokens(config: Config) -> None:
    """One token, one grant: a token listed twice would get whichever zone came last, and
    two tokens sharing a name could not be told apart in the audit log or the rate limits.
    Messages name the entries, never the secret."""
    by_token: dict[str, int] = {}
    by_name: dict[str, int] = {}
    for i, entry in enumerate(config.mcp.tokens):
        if any(c.isspace() for c in entry.token):
            raise ConfigError(f"mcp.tokens[{i}].token", "must not contain whitespace")
        if entry.token in by_token:
            raise ConfigError(
                f"mcp.tokens[{i}].token",
                f"the same token as mcp.tokens[{by_token[entry.token]}] "
                "(a token grants one zone: list it once)",
            )
        if entry.name in by_name:
            raise ConfigError(
                f"mcp.tokens[{i}].name",
                f"'{entry.name}' is already the name of mcp.tokens[{by_name[entry.name]}]",
            )
        if entry.name == STDIO_GRANT_NAME:
            raise ConfigError(
                f"mcp.tokens[{i}].name",
                f"'{STDIO_GRANT_NAME}' is reserved for `vsmcp mcp-stdio` clients (mcp.stdio_zone)",
            )
        by_token[entry.token] = i
        by_name[entry.name] = i


def _check_host(key: str, host: str) -> None:
    """An IP address or a host name (an interface name for mesh.host has the same shape).
    Whether it is an address of this machine is only known when binding: the node then
    refuses to start naming the key (node/app/node.py)."""
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if len(host) > _MAX_HOST_NAME_CHARS or not all(
        _HOST_LABEL.fullmatch(label) for label in host.removesuffix(".").split(".")
    ):
        raise ConfigError(key, f"{host!r} is not an IP address or a host name")


def _check_port(key: str, port: int) -> None:
    _check_range(key, port, 0, 65535)


def _check_seconds(key: str, value: float) -> None:
    if not 0 < value <= MAX_TIMEOUT_S:
        raise ConfigError(key, f"{value} is out of range (0 < seconds <= {MAX_TIMEOUT_S})")


def _check_range(key: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ConfigError(key, f"{value} is out of range ({low}..{high})")
