"""The node's typed events: one msgspec struct per kind, tagged by `kind` on the wire.

Every event carries `ts`, its time in seconds (wall clock, as `time.time()`); windows
in the pattern engine run on these timestamps, never on the clock of the matcher, so
replaying a recorded stream gives the same matches. Structs are frozen and `gc=False`
(they hold only scalars) so that publishing one costs an allocation and an append.

`EventCatalog` is what the pattern engine knows about kinds: their names, classes and
field types (used to refuse a condition on a field a kind can never have).
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import msgspec

from vsmcp.node.vsm.errors import EventsFileError

# A recorded events file is read line by line; a longer line is refused, not buffered.
MAX_EVENT_LINE_BYTES = 64 * 1024

Scalar = str | int | float | bool | None


class Event(msgspec.Struct, frozen=True, gc=False, kw_only=True, tag_field="kind"):
    """Base of every event. `ts`: seconds since the epoch, from the event's source."""

    ts: float


class ToolCallFinished(Event, frozen=True, gc=False, kw_only=True, tag="tool_call"):
    """A tool call ended (any outcome). `origin` is the caller as this node sees it
    (`http:<token name>`, `stdio`, `mesh:<entry node id>`), `provider` the node that
    ran it (empty when none was reached), `latency_ms` the wall time of the call.
    `outcome` is `ok`, `error_result` or the error's reason (`zone_denied`,
    `unknown_tool`, `timeout`, ...); `reason` its message. For a call served for
    another node, `entry_origin` is the origin that entry node named for its caller."""

    tool: str
    provider: str
    origin: str
    zone: str
    priority: str = "normal"  # the call's priority class (`node.vsm.priority`), as capped
    latency_ms: float = 0.0
    outcome: str = "ok"
    reason: str | None = None
    entry_origin: str | None = None


class Denial(Event, frozen=True, gc=False, kw_only=True, tag="denial"):
    """A limit refused something: `limit` names it (`zone`, `rate:per-origin`, ...,
    `blocked` for a mitigation policy), `blocked` what was refused (a tool, a method),
    `origin` who asked (as in `ToolCallFinished`), `zone` the caller's zone."""

    origin: str
    zone: str
    limit: str
    blocked: str
    entry_origin: str | None = None


class EnvelopeRejected(Event, frozen=True, gc=False, kw_only=True, tag="envelope_rejected"):
    """An envelope failed admission (bad signature, replay, size, unknown sender)."""

    reason: str
    sender: str | None = None


class MembershipChanged(Event, frozen=True, gc=False, kw_only=True, tag="membership"):
    """A mesh member changed state (alive, suspect, dead, zombie, left)."""

    peer: str
    state: str
    previous: str | None = None
    zone: str | None = None


class UnitStateChanged(Event, frozen=True, gc=False, kw_only=True, tag="unit_state"):
    """An S1 unit (tool provider) changed state (running, restarting, quarantined...)."""

    unit: str
    state: str
    previous: str | None = None
    reason: str | None = None


class ChildSpawnRefused(Event, frozen=True, gc=False, kw_only=True, tag="child_refused"):
    """System 5's recursion guard (or bad input) refused to spawn a child VSM."""

    child: str
    reason: str
    caller: str = ""


class ScaleDecision(Event, frozen=True, gc=False, kw_only=True, tag="scale"):
    """System 3 spawned, retired or could not spawn a child VSM serving a `scale` tool,
    with the measurement that caused it (node/children/scale.py)."""

    tool: str
    action: str  # spawn, retire, refused
    child: str
    reason: str
    cpu: float  # the node's CPU use over the last sample, in cores
    running: int  # calls running in the tool's unit
    waiting: int  # calls queued for a slot
    slots: int  # calls the unit may run at once now (max_concurrency, or its adaptive limit)
    children: int  # children serving the tool after the decision
    idle_s: float = 0.0  # how long the retired child served no call


class RegistryChanged(Event, frozen=True, gc=False, kw_only=True, tag="registry"):
    """A tool appeared in, changed in or left the replicated registry."""

    tool: str
    provider: str
    change: str  # added, updated, removed


class AlgedonicSignal(Event, frozen=True, gc=False, kw_only=True, tag="algedonic"):
    """Pain or pleasure raised by any component; `intensity` in [0, 1]."""

    source: str
    valence: str  # pain, pleasure
    intensity: float
    reason: str = ""


class PolicyChanged(Event, frozen=True, gc=False, kw_only=True, tag="policy"):
    """A policy was added, changed, expired or removed."""

    policy: str
    change: str
    origin: str | None = None


class ResponseTaken(Event, frozen=True, gc=False, kw_only=True, tag="s5_response"):
    """System 5 answered a signal (or ended an answer): `rule` and its `action`
    (`tighten_limit`, `shed`, ...), `outcome` (`applied`, `restored`, `failed`,
    `unavailable`, `logged`, or the immune system's status), `target` when it has one,
    `until` (seconds since the epoch) for a response that lasts."""

    rule: str
    action: str
    outcome: str
    target: str | None = None
    until: float | None = None


class PatternMatched(Event, frozen=True, gc=False, kw_only=True, tag="pattern_matched"):
    """A pattern matched and one of its actions asked for an event (`emit`)."""

    pattern: str
    group: str | None = None
    count: int = 1
    label: str = ""


class Telemetry(Event, frozen=True, gc=False, kw_only=True, tag="telemetry"):
    """A reading from outside the mesh (an edge device through a bridge): `device` and
    `metric` name it, `value` is the number read, `source` the bridge (`mqtt`)."""

    device: str
    metric: str
    value: float
    source: str = ""


class AdaptationProposed(Event, frozen=True, gc=False, kw_only=True, tag="s4_proposal"):
    """System 4's environment scan proposes an adaptation: `proposal` names what it saw
    (`single_provider`, `peer_degraded`, `bridge_down`, ...), `subject` the tool, node or
    bridge, `note` explains it in words."""

    proposal: str
    subject: str
    note: str = ""


class WasmModuleRefused(Event, frozen=True, gc=False, kw_only=True, tag="wasm_refused"):
    """A published WASM module refused here (`reason`: `hash` (its bytes do not match
    its manifest), `signature` (the manifest is not validly signed, or by a key without
    the `publisher` role), `manifest`, `too_large`, `load`)."""

    module: str
    reason: str
    sha256: str = ""
    detail: str = ""


class ProviderDegraded(Event, frozen=True, gc=False, kw_only=True, tag="degraded"):
    """A caller's view of a provider's tool changed (gray failures, docs/regulation.md):
    `state` is `degraded` (this node saw its calls time out or fail), `quorum` (a quorum
    of callers did), or `recovered`; `reason` says what was seen."""

    provider: str
    tool: str
    state: str
    reason: str = ""


class AuditFinished(Event, frozen=True, gc=False, kw_only=True, tag="audit"):
    """A System 3* audit probed a unit's tool: `unit` (local) or `provider` (a peer),
    `ok` whether the result had the expected shape, `detail` what was wrong."""

    tool: str
    unit: str = ""
    provider: str = ""
    ok: bool = True
    detail: str = ""


class LimitBoundChanged(Event, frozen=True, gc=False, kw_only=True, tag="s3_bound"):
    """System 3 moved the upper bound of the node's adaptive concurrency limits from
    its KPIs (`node.vsm.bounds`): `direction` `lowered` or `raised`, `share` the new
    bound as a share of the configured `max_limit` (`previous` the old one), `lag_ms`
    the event loop's lag in the tick that decided it."""

    direction: str
    share: float
    previous: float
    lag_ms: float


class EventSink(Protocol):
    """Where publishers put events: the node's `EventStream` (never blocks, never raises)."""

    def publish(self, event: Event) -> None: ...


NODE_EVENT_TYPES: tuple[type[Event], ...] = (
    ToolCallFinished,
    Denial,
    EnvelopeRejected,
    MembershipChanged,
    UnitStateChanged,
    ChildSpawnRefused,
    ScaleDecision,
    RegistryChanged,
    AlgedonicSignal,
    PolicyChanged,
    PatternMatched,
    ResponseTaken,
    Telemetry,
    AdaptationProposed,
    WasmModuleRefused,
    ProviderDegraded,
    AuditFinished,
    LimitBoundChanged,
)

FieldBase = Literal["str", "num", "bool"]


@dataclass(frozen=True, slots=True)
class FieldType:
    """What a condition may compare a field with. `optional`: the field may be None
    (absent), so `exists`/`absent` mean something and comparisons check for None first."""

    base: FieldBase
    optional: bool


def _field_type(annotation: Any) -> FieldType | None:
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    optional = False
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        optional = len(non_none) != len(args)
        if len(non_none) != 1:
            return None
        annotation = non_none[0]
    if annotation is bool:
        return FieldType("bool", optional)
    if annotation in (int, float):
        return FieldType("num", optional)
    if annotation is str:
        return FieldType("str", optional)
    return None


class EventKind:
    """One kind: its tag, class, and the fields conditions may use."""

    __slots__ = ("cls", "fields", "name")

    def __init__(self, cls: type[Event]) -> None:
        tag = cls.__struct_config__.tag
        if not isinstance(tag, str):
            raise TypeError(f"{cls.__name__} has no string tag")
        self.name: str = tag
        self.cls = cls
        hints = typing.get_type_hints(cls)
        fields: dict[str, FieldType] = {"kind": FieldType("str", False)}
        for name in cls.__struct_fields__:
            field_type = _field_type(hints[name])
            if field_type is not None:
                fields[name] = field_type
        self.fields: Mapping[str, FieldType] = fields


class EventCatalog:
    """The kinds the engine can match. The node's catalog is `NODE_CATALOG`; tests and
    benchmarks build others (any tagged `Event` subclasses)."""

    def __init__(self, event_types: Iterable[type[Event]]) -> None:
        self.kinds: dict[str, EventKind] = {}
        self.by_class: dict[type[Event], EventKind] = {}
        for cls in event_types:
            kind = EventKind(cls)
            if kind.name in self.kinds:
                raise TypeError(f"two event classes share the kind {kind.name!r}")
            self.kinds[kind.name] = kind
            self.by_class[cls] = kind
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(
            typing.Union[tuple(self.by_class)]  # noqa: UP007 - a runtime union of classes
        )

    def decode(self, data: bytes | str) -> Event:
        """One event from its JSON form (`{"kind": ..., "ts": ..., ...}`)."""
        event: Event = self._decoder.decode(data)
        if not math.isfinite(event.ts):
            raise msgspec.ValidationError("ts must be a finite number")
        return event


NODE_CATALOG = EventCatalog(NODE_EVENT_TYPES)

_encoder = msgspec.json.Encoder()


def encode_event(event: Event) -> bytes:
    """The JSON form of an event, with its `kind` tag (one line of a recording)."""
    return _encoder.encode(event)


def read_events_jsonl(
    lines: Iterable[bytes], source: str, catalog: EventCatalog = NODE_CATALOG
) -> Iterator[Event]:
    """Events from a JSONL recording; blank lines are skipped, a bad line raises
    `EventsFileError` naming the line."""
    for number, line in enumerate(lines, start=1):
        if len(line) > MAX_EVENT_LINE_BYTES:
            raise EventsFileError(source, number, f"line over {MAX_EVENT_LINE_BYTES} bytes")
        if not line.strip():
            continue
        try:
            yield catalog.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise EventsFileError(source, number, str(e)) from e
