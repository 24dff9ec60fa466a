"""`[bridges.mqtt]`: the MQTT bridge's broker, topics and bounds (docs/bridges.md "MQTT").

Checked when the config is read (`__post_init__` raises `ConfigError` naming the key, so
the daemon exits 2); the zones it names are checked against `trust.zones` when the
bridge is built (`check_zones`), the one place that knows them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Final, Literal
from urllib.parse import unquote, urlsplit

import msgspec

from vsmcp.node.errors import ConfigError
from vsmcp.node.tools.config import doc
from vsmcp.node.vsm.events import NODE_CATALOG

if TYPE_CHECKING:
    import ssl

    # Reading and checking TLS files: imported when a section is read that uses them,
    # not by every node's config loader.
    from vsmcp.node.bridges.mqtt_tls import TlsFiles

SECTION: Final = "bridges.mqtt"
DEFAULT_PORT: Final = 1883
DEFAULT_TLS_PORT: Final = 8883
MAX_TOPIC_CHARS: Final = 1024
# Bounds of the size caps: a payload is read whole by the MQTT client before we see it.
MAX_PAYLOAD_CAP: Final = 16 * 1024 * 1024
MAX_QUEUE: Final = 1_000_000


class MqttSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: Annotated[
        str,
        doc(
            "the broker: mqtt://[user[:password]@]host[:port] (MQTT 5, QoS 1; port 1883), or "
            "mqtts://… for TLS (port 8883; the broker's certificate and name verified)"
        ),
    ] = "mqtt://127.0.0.1:1883"
    ca_file: Annotated[
        str,
        doc(
            "mqtts://: PEM file of the CA certificate(s) the broker's certificate must chain "
            'to (only these); "": the system\'s CAs'
        ),
    ] = ""
    cert_file: Annotated[
        str,
        doc(
            "mqtts://: PEM client certificate (chain) this node presents to the broker, "
            'with its key unless key_file is set; "": none'
        ),
    ] = ""
    key_file: Annotated[
        str,
        doc(
            "mqtts://: PEM private key of cert_file, unencrypted, readable by the node's "
            'user only (mode 0600); "": in cert_file'
        ),
    ] = ""
    server_hostname: Annotated[
        str,
        doc(
            "mqtts://: the name the broker's certificate must carry, when the url's host "
            'is another (an IP address, a tunnel); "": the url\'s host'
        ),
    ] = ""
    client_id: Annotated[
        str, doc('the MQTT client id; "": vsmcp-<node id> (one connection per id)')
    ] = ""
    prefix: Annotated[
        str,
        doc(
            "first topic level of what the node publishes and answers: <prefix>/nodes/<node "
            "id>/tools and /status (retained), <prefix>/alerts, <prefix>/calls[/<node id>]"
        ),
    ] = "vsmcp"
    telemetry_topics: Annotated[
        list[str],
        doc(
            "topic filters read as telemetry events (kind telemetry); the first level a "
            "wildcard matches names the device, the rest the metric"
        ),
    ] = msgspec.field(default_factory=lambda: ["vsmcp/telemetry/#"])
    telemetry_connection: Annotated[
        Literal["own", "shared"],
        doc(
            'how telemetry is read: "own": a second connection, MQTT 3.1.1, client id '
            "<client id>-telemetry, read by the node's own subscriber (8–16× the messages/s); "
            '"shared": subscribed on the main MQTT 5 connection (aiomqtt)'
        ),
    ] = "own"
    max_telemetry_bytes: Annotated[
        int, doc("largest telemetry payload; a larger one is counted (bad) and dropped")
    ] = 16 * 1024
    alert_kinds: Annotated[
        list[str],
        doc("event kinds published to <prefix>/alerts (docs/patterns.md lists the kinds)"),
    ] = msgspec.field(default_factory=lambda: ["pattern_matched", "s5_response", "policy"])
    alert_outbox: Annotated[
        int, doc("alerts held while the broker is away; beyond it the oldest are dropped, counted")
    ] = 10_000
    call_zone: Annotated[
        str,
        doc('zone of callers on <prefix>/calls and <prefix>/calls/<node id>; "": the lowest zone'),
    ] = ""
    call_topics: Annotated[
        dict[str, str],
        doc(
            "more request topic filters and the zone their callers get (the broker's ACL "
            "decides who may publish there); a topic matching several gets the lowest"
        ),
    ] = msgspec.field(default_factory=dict)
    shared_calls: Annotated[
        bool,
        doc("answer <prefix>/calls too, as a shared subscription ($share): one node answers"),
    ] = True
    max_call_bytes: Annotated[
        int, doc("largest request; a larger one is answered with error -32019")
    ] = 256 * 1024
    max_concurrent_calls: Annotated[
        int, doc("requests running at once; more are answered with error -32012 (overloaded)")
    ] = 64
    inbox: Annotated[
        int, doc("messages received and not yet handled; beyond it they are dropped, counted")
    ] = 65_536
    keepalive_s: Annotated[
        int, doc("MQTT keepalive: the broker publishes the last will after 1.5× this silence")
    ] = 30
    reconnect_max_s: Annotated[
        float, doc("longest wait between reconnection attempts (backoff doubles from 0.2 s)")
    ] = 30.0

    def __post_init__(self) -> None:
        broker = broker_of(self.url)  # raises ConfigError naming the key
        self._check_tls(broker)
        _check_level("prefix", self.prefix)
        _check_filters("telemetry_topics", self.telemetry_topics)
        _check_filters("call_topics", list(self.call_topics))
        unknown = [k for k in self.alert_kinds if k not in NODE_CATALOG.kinds]
        if unknown:
            raise ConfigError(
                f"{SECTION}.alert_kinds",
                f"unknown event kind {unknown[0]!r} (kinds: {', '.join(NODE_CATALOG.kinds)})",
            )
        _check_range("max_telemetry_bytes", self.max_telemetry_bytes, 16, MAX_PAYLOAD_CAP)
        _check_range("max_call_bytes", self.max_call_bytes, 256, MAX_PAYLOAD_CAP)
        _check_range("alert_outbox", self.alert_outbox, 1, MAX_QUEUE)
        _check_range("inbox", self.inbox, 1, MAX_QUEUE)
        _check_range("max_concurrent_calls", self.max_concurrent_calls, 1, 10_000)
        _check_range("keepalive_s", self.keepalive_s, 1, 3600)
        if not (math.isfinite(self.reconnect_max_s) and 0.2 <= self.reconnect_max_s <= 3600):
            raise ConfigError(f"{SECTION}.reconnect_max_s", "must be in 0.2..3600 s")

    def _check_tls(self, broker: Broker) -> None:
        """TLS keys only with mqtts://, a key only with its certificate, and every file
        usable (read here: the daemon exits 2 naming the key, before it starts)."""
        files = self.tls_files()
        set_keys = [f.name for f in dataclasses.fields(files) if getattr(files, f.name)]
        if not broker.tls:
            if set_keys:
                raise ConfigError(
                    f"{SECTION}.{set_keys[0]}",
                    f"TLS setting, but url {redacted(self.url)!r} is plain mqtt:// (use mqtts://)",
                )
            return
        from vsmcp.node.bridges.mqtt_tls import check_server_hostname, client_context

        if files.key_file and not files.cert_file:
            raise ConfigError(f"{SECTION}.key_file", "a client key needs cert_file too")
        if files.server_hostname:
            check_server_hostname(f"{SECTION}.server_hostname", files.server_hostname)
        client_context(files, SECTION)

    def tls_files(self) -> TlsFiles:
        from vsmcp.node.bridges.mqtt_tls import TlsFiles

        return TlsFiles(self.ca_file, self.cert_file, self.key_file, self.server_hostname)

    def tls_context(self) -> ssl.SSLContext | None:
        """The broker connections' TLS context (None: mqtt://), the files read again;
        `ConfigError` naming the key of a file that went bad. Blocking file I/O."""
        if not broker_of(self.url).tls:
            return None
        from vsmcp.node.bridges.mqtt_tls import client_context

        return client_context(self.tls_files(), SECTION)

    def check_zones(self, zones: Sequence[str]) -> None:
        """Every zone named must be one of `trust.zones`."""
        named = [("call_zone", self.call_zone)] if self.call_zone else []
        named += [(f"call_topics.{t}", z) for t, z in self.call_topics.items()]
        for key, zone in named:
            if zone not in zones:
                raise ConfigError(
                    f"{SECTION}.{key}", f"unknown zone {zone!r} (trust.zones: {', '.join(zones)})"
                )


@dataclass(frozen=True, slots=True)
class Broker:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool = False


def broker_of(url: str) -> Broker:
    """The broker an `mqtt://` or `mqtts://` URL names; `ConfigError` naming `url`
    otherwise (echoing the URL without its password)."""
    key = f"{SECTION}.url"
    shown = repr(redacted(url))
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        # Not urlsplit's message: it may quote a piece of the password (`as 'pa'`).
        raise ConfigError(
            key, f"{shown} is not a URL (percent-encode '/', '#', '?' and '@' in credentials)"
        ) from e
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(key, f"{shown}: mqtt:// or mqtts:// (TLS) expected")
    if not parts.hostname:
        raise ConfigError(key, f"{shown} names no host")
    if port == 0:
        raise ConfigError(key, f"{shown}: the port must be 1..65535")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(key, f"{shown}: no path, query or fragment expected")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    tls = parts.scheme == "mqtts"
    default_port = DEFAULT_TLS_PORT if tls else DEFAULT_PORT
    return Broker(parts.hostname, port or default_port, username, password, tls)


def redacted(url: str) -> str:
    """`url` with the password in its user info replaced by `***`: everything from the
    first `:` after `//` to the last `@`, so a password holding an unencoded `/`, `#`,
    `?` or `@` (which is no URL, and splits where the password does) is hidden whole."""
    scheme, slashes, rest = url.partition("//")
    userinfo, at, host = rest.rpartition("@")
    if not slashes or not at or ":" not in userinfo:
        return url
    return f"{scheme}//{userinfo.split(':', 1)[0]}:***@{host}"


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{SECTION}.{name}", f"{value} is out of range ({low}..{high})")


def _check_level(name: str, value: str) -> None:
    if not value or len(value) > MAX_TOPIC_CHARS or any(c in value for c in "/+#\0$"):
        raise ConfigError(
            f"{SECTION}.{name}", f"{value!r} must be one topic level (no / + # $, not empty)"
        )


def _check_filters(name: str, filters: list[str]) -> None:
    for i, value in enumerate(filters):
        levels = value.split("/")
        bad = (
            not value
            or len(value) > MAX_TOPIC_CHARS
            or "\0" in value
            or value.startswith("$")
            or any(("+" in lv or "#" in lv) and len(lv) > 1 for lv in levels)
            or "#" in levels[:-1]
        )
        if bad:
            raise ConfigError(f"{SECTION}.{name}[{i}]", f"{value!r} is not an MQTT topic filter")
