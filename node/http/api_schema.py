"""The bodies of the node's JSON API (`/api/*`) as msgspec structs: the schemas of the
OpenAPI document (`node/http/openapi.py`) are generated from these, not written twice.

The handlers answer with dicts built by the node; tests/node/http/test_openapi_fuzz.py
checks every answer of a real node against these schemas. Objects are open (unknown keys
allowed): a new key is an addition to the contract, not a break of it. The VSM view's
systems are listed by key with open contents: they are diagnostics that grow with the
VSM, not a stable interface.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec

from vsmcp.node.vsm.algedonic import MAX_REASON_CHARS, MAX_SOURCE_CHARS


class Error(msgspec.Struct):
    """Every 4xx/5xx answer of `/api/*`: what was wrong, and where when it is one field."""

    error: str
    field: str | msgspec.UnsetType = msgspec.UNSET
    lane: str | msgspec.UnsetType = msgspec.UNSET
    host: str | msgspec.UnsetType = msgspec.UNSET
    origin: str | msgspec.UnsetType = msgspec.UNSET
    limit: str | msgspec.UnsetType = msgspec.UNSET


class Status(msgspec.Struct):
    node_id: str
    name: str
    zone: str
    roles: list[str]
    version: str
    uptime_s: float
    event_loop: str
    dev: bool
    http_port: int | None
    mesh_port: int | None
    peers: dict[str, int]
    certificate_fingerprint: str
    certificate_expires_at_s: int


class Peer(msgspec.Struct):
    id: str
    # Its configured node.name as it announced it; else its id's last 8 characters.
    name: str
    state: str
    incarnation: int
    admitted: bool
    zone: str | None
    endpoint: str | None
    http_port: int | None
    since_s: float
    # When the peer's certificate (as it last presented it) expires; a child VSM's is
    # short-lived and renewed by its parent while it runs.
    certificate_expires_at_s: int | None = None
    # Gray failures as this node's calls saw the peer: {"degraded": bool (every tool of
    # it this node used is degraded), "degraded_tools": [...]}
    gray: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


class Peers(msgspec.Struct):
    peers: list[Peer]


class Tool(msgspec.Struct):
    name: str
    provider: str
    zone: str
    description: str
    version: int
    provider_state: str | None
    # Gray failures: "local" (this node's calls), "quorum" (a quorum of callers), or None.
    degraded: str | None = None


class Tools(msgspec.Struct):
    # The tools clients call.
    tools: list[Tool]
    # The offers tools `vsm.mcp.<unit>`: the registry entries that carry a unit's
    # resources, prompts and completion (docs/mcp-resources.md), never listed as tools.
    offers: list[Tool]


class Pattern(msgspec.Struct):
    name: str
    source: str
    kinds: list[str]
    matches: int
    group_by: str | None
    actions: list[str]
    window: dict[str, int] | msgspec.UnsetType = msgspec.UNSET


class Patterns(msgspec.Struct):
    patterns: list[Pattern]
    evictions: int
    events: int
    bad_events: int


class Viability(msgspec.Struct):
    node: float
    mesh: float
    inputs: dict[str, Any]
    factors: dict[str, float]


class Vsm(msgspec.Struct):
    s1: dict[str, Any]
    s2: dict[str, Any]
    s3: dict[str, Any]
    s4: dict[str, Any]
    s5: dict[str, Any]
    viability: Viability
    # Each configured bridge's status (node/bridges/model.py BridgeStatus), by name.
    bridges: dict[str, Any]


class Policy(msgspec.Struct):
    id: str
    key: str
    kind: str
    issuer: str
    issued_at_ms: int
    expires_at_ms: int
    issued: str
    expires: str
    version: int


class Policies(msgspec.Struct):
    policies: list[Policy]
    stats: dict[str, int]


class PolicyAgentSet(msgspec.Struct):
    """The mitigations this node enforces and its zones, signed by the node, for the policy
    agent: `set` is the JSON text the agent loads as is, `signature` the base64 Ed25519
    signature of its UTF-8 bytes by `node` (whose id is its public key). docs/wasm.md."""

    set: str
    signature: str
    node: str


class RecentEvents(msgspec.Struct):
    """The node's last events (every kind but tool calls; each tagged by `kind`, with
    `ts`) and the status page's stream counters (clients, refused, dropped)."""

    events: list[dict[str, Any]]
    page: dict[str, Any]


class AuditEntry(msgspec.Struct):
    seq: int
    ts_ms: int
    kind: str
    actor: str
    data: Any


class AuditRecent(msgspec.Struct):
    """The last committed audit entries, newest first."""

    entries: list[AuditEntry]


class Signal(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /api/algedonic`: unknown keys are refused (a typo is not ignored)."""

    valence: Literal["pain", "pleasure"]
    intensity: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
    reason: Annotated[str, msgspec.Meta(max_length=MAX_REASON_CHARS)]
    # Not blank: at least one non-space character.
    source: Annotated[str, msgspec.Meta(pattern=r"\S", max_length=MAX_SOURCE_CHARS)] | (
        msgspec.UnsetType
    ) = msgspec.UNSET


class SignalAccepted(msgspec.Struct):
    accepted: bool
    lane: Literal["s5", "s3"]
    seq: int


BASE64: Final = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


class RevocationRecord(msgspec.Struct):
    record: Annotated[
        str, msgspec.Meta(pattern=BASE64, description="base64 of the signed revocation record")
    ]


class RevocationAnswer(msgspec.Struct):
    accepted: bool


class RevokeRequest(msgspec.Struct):
    """`POST /api/policies/revoke`: the policy, as `GET /api/policies` names it."""

    issuer: Annotated[str, msgspec.Meta(description="the policy's issuer (node id)")]
    id: Annotated[str, msgspec.Meta(min_length=1, description="the policy's id")]


class Revoked(msgspec.Struct):
    revoked: bool


class AdminView(msgspec.Struct):
    caller: str
    actions: list[str]


class WasmModule(msgspec.Struct):
    name: str
    sha256: str
    size: int
    issuer: str  # public key (hex) of the manifest's signer
    version: int
    expires_at_ms: int
    held: bool  # this node holds the bytes (and serves them)
    loaded: bool  # this node runs it (`[edge] run`)


class WasmModules(msgspec.Struct):
    modules: list[WasmModule]
    stats: dict[str, int]


class WasmPublish(msgspec.Struct):
    """A module to publish: `record` (a signed manifest, with or without the module) or
    `manifest` (TOML text; the node signs) with `module`."""

    module: Annotated[str, msgspec.Meta(pattern=BASE64, description="base64 of the module")] = ""
    record: Annotated[
        str, msgspec.Meta(pattern=BASE64, description="base64 of the signed manifest record")
    ] = ""
    manifest: str = ""


class WasmPublished(msgspec.Struct):
    name: str
    sha256: str
    size: int
    issuer: Literal["node", "record"]


class WasmUnpublished(msgspec.Struct):
    revoked: int


class PeerBlock(msgspec.Struct):
    peer: str
    blocked: bool


class DebugTool(msgspec.Struct):
    tool: str
    zone: str
    present: bool


class LoopFault(msgspec.Struct):
    loop: str
    fault: str


class Child(msgspec.Struct):
    name: str
    node_id: str | None
    pid: int | None
    state: str
    depth: int
    restarts: int
    url: str | None
    data_dir: str
    tools: list[str]
    last_error: str | None = None


class Children(msgspec.Struct):
    children: list[Child]


class SpawnRequest(msgspec.Struct):
    """`POST /api/children`: the child's name, and optionally its zone (at or below
    the node's) and a config file for it."""

    name: str
    zone: str = ""
    config: str = ""


class ChildStopped(msgspec.Struct):
    stopped: str


class PlanRequest(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /api/plan` and `POST /api/ask`: a request in words."""

    text: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class PlanStep(msgspec.Struct):
    tool: str
    arguments: dict[str, Any]


class Plan(msgspec.Struct, omit_defaults=True):
    planner: Literal["llm", "offline"]
    steps: list[PlanStep]
    confidence: float
    # Why nothing runs (unsure, nothing fits) or what could not be planned.
    note: str = ""
    # The policy that refuses the tool the request asks for.
    refusal: str = ""


class StepOutcome(msgspec.Struct, omit_defaults=True):
    tool: str
    arguments: dict[str, Any]
    # ok, error_result, not_run (refused before it ran) or the tool layer's reason.
    outcome: str
    result: str = ""
    error: str = ""


class Answer(msgspec.Struct, omit_defaults=True):
    text: str
    planner: Literal["llm", "offline"]
    steps: list[StepOutcome]
    note: str = ""


BODIES: tuple[type[msgspec.Struct], ...] = (
    Child,
    Children,
    SpawnRequest,
    ChildStopped,
    Error,
    Status,
    Peers,
    Tools,
    Patterns,
    Vsm,
    Policies,
    PolicyAgentSet,
    RecentEvents,
    AuditRecent,
    Signal,
    SignalAccepted,
    PlanRequest,
    Plan,
    Answer,
    RevocationRecord,
    RevocationAnswer,
    RevokeRequest,
    Revoked,
    AdminView,
    WasmModules,
    WasmPublish,
    WasmPublished,
    WasmUnpublished,
    PeerBlock,
    DebugTool,
    LoopFault,
)
