"""`[bridges.amqp]`: events out to a topic exchange, tool calls in from work queues."""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from vsmcp.node.errors import ConfigError
from vsmcp.node.tools.config import doc
from vsmcp.node.vsm.events import NODE_EVENT_TYPES

# The pseudo-kind of capability announcements (the node's local tools, on change).
CAPABILITIES_KIND: Final = "capabilities"
# Kinds with one event per call or per reading: opt in when consumers want those streams.
HIGH_VOLUME_KINDS: Final = frozenset({"tool_call", "telemetry"})
# Every other kind of the node's events, in the stream's own order.
DEFAULT_EVENT_KINDS: Final = tuple(
    tag
    for tag in (str(cls.__struct_config__.tag) for cls in NODE_EVENT_TYPES)
    if tag not in HIGH_VOLUME_KINDS
)
MAX_PREFETCH: Final = 1_000
MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
# The largest `outbox_capacity` (rows of the bridge's SQLite outbox, bridges/outbox.py).
# Here, with the config it bounds: reading the config does not import the outbox.
MAX_OUTBOX_CAPACITY: Final = 10_000_000
KEY: Final = "bridges.amqp"


def event_kinds() -> frozenset[str]:
    """The tags of the node's event kinds (what `events` may name)."""
    return frozenset(str(cls.__struct_config__.tag) for cls in NODE_EVENT_TYPES)


class AmqpSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: Annotated[
        str, doc('the broker, e.g. "amqp://guest:guest@127.0.0.1:5672/" (amqps:// for TLS)')
    ] = ""
    exchange: Annotated[
        str, doc("topic exchange events leave to, routing key <node id>.<event kind>")
    ] = "vsmcp.events"
    events: Annotated[
        list[str],
        doc(
            "event kinds published (tags as in docs/patterns.md); "
            "default: all but tool_call and telemetry"
        ),
    ] = msgspec.field(default_factory=lambda: list(DEFAULT_EVENT_KINDS))
    announce: Annotated[
        bool, doc("publish the node's local tools (<node id>.capabilities) when they change")
    ] = True
    calls: Annotated[
        bool, doc("serve tools/call from the queues vsmcp.calls and vsmcp.calls.<node id>")
    ] = True
    calls_queue: Annotated[
        str, doc("the shared work queue of calls; the pinned one is <calls_queue>.<node id>")
    ] = "vsmcp.calls"
    prefetch: Annotated[int, doc(f"calls in flight at most (1..{MAX_PREFETCH})")] = 64
    max_message_bytes: Annotated[
        int, doc("a call body above this is refused with a JSON-RPC error (-32019)")
    ] = 1024 * 1024
    default_zone: Annotated[
        str, doc('zone of a caller no mapping names; "": the lowest of trust.zones')
    ] = ""
    user_zones: Annotated[
        dict[str, str],
        doc("AMQP user id (validated by the broker) -> zone; checked before queue_zones"),
    ] = msgspec.field(default_factory=dict)
    queue_zones: Annotated[dict[str, str], doc("queue name -> zone of the calls read from it")] = (
        msgspec.field(default_factory=dict)
    )
    outbox_capacity: Annotated[
        int,
        doc("events kept in SQLite while the broker is unreachable; more are dropped, audited"),
    ] = 100_000
    pain_after_s: Annotated[
        float, doc("seconds the broker may be unreachable before it is pain (algedonic)")
    ] = 10.0

    def check(self, zones: tuple[str, ...]) -> None:
        """Raise `ConfigError` naming the first bad key."""
        if not self.url.startswith(("amqp://", "amqps://")):
            raise ConfigError(f"{KEY}.url", "an amqp:// or amqps:// URL is required")
        if not self.exchange or not self.calls_queue:
            which = "exchange" if not self.exchange else "calls_queue"
            raise ConfigError(f"{KEY}.{which}", "must not be empty")
        unknown = sorted(set(self.events) - event_kinds())
        if unknown:
            known = ", ".join(sorted(event_kinds()))
            raise ConfigError(f"{KEY}.events", f"unknown kind(s) {unknown}; known: {known}")
        if not 1 <= self.prefetch <= MAX_PREFETCH:
            raise ConfigError(f"{KEY}.prefetch", f"must be in 1..{MAX_PREFETCH}")
        if not 1 <= self.max_message_bytes <= MAX_MESSAGE_BYTES:
            raise ConfigError(f"{KEY}.max_message_bytes", f"must be in 1..{MAX_MESSAGE_BYTES}")
        if not 1 <= self.outbox_capacity <= MAX_OUTBOX_CAPACITY:
            raise ConfigError(f"{KEY}.outbox_capacity", f"must be in 1..{MAX_OUTBOX_CAPACITY}")
        if not 0 < self.pain_after_s <= 86_400:
            raise ConfigError(f"{KEY}.pain_after_s", "must be in (0, 86400]")
        if self.default_zone and self.default_zone not in zones:
            raise ConfigError(f"{KEY}.default_zone", f"{self.default_zone!r} is not in trust.zones")
        for table, mapping in (("user_zones", self.user_zones), ("queue_zones", self.queue_zones)):
            for name, zone in mapping.items():
                if zone not in zones:
                    raise ConfigError(f"{KEY}.{table}.{name}", f"{zone!r} is not in trust.zones")
