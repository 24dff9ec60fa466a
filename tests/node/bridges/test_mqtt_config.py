"""`[bridges.mqtt]`: bad values refused naming the key, zones checked against the mesh's,
and the zone a request topic grants (the lowest of the filters it matches)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from vsmcp.node.bridges.mqtt_calls import CallTopics
from vsmcp.node.bridges.mqtt_config import MqttSection, broker_of
from vsmcp.node.errors import ConfigError

ZONES = ("public", "internal", "restricted")


def _section(**values: Any) -> MqttSection:
    return msgspec.convert(values, MqttSection)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"url": "ws://h"}, "bridges.mqtt.url"),
        ({"url": "mqtt://h:0"}, "bridges.mqtt.url"),
        ({"url": "mqtt://"}, "bridges.mqtt.url"),
        ({"url": "mqtt://h:99999"}, "bridges.mqtt.url"),
        ({"url": "mqtt://h/path"}, "bridges.mqtt.url"),
        ({"prefix": "a/b"}, "bridges.mqtt.prefix"),
        ({"prefix": ""}, "bridges.mqtt.prefix"),
        ({"telemetry_topics": ["ok/#", "bad/#/x"]}, "bridges.mqtt.telemetry_topics[1]"),
        ({"telemetry_topics": ["a+/b"]}, "bridges.mqtt.telemetry_topics[0]"),
        ({"telemetry_topics": ["$SYS/#"]}, "bridges.mqtt.telemetry_topics[0]"),
        ({"call_topics": {"x/#/y": "public"}}, "bridges.mqtt.call_topics[0]"),
        ({"alert_kinds": ["nope"]}, "bridges.mqtt.alert_kinds"),
        ({"max_telemetry_bytes": 0}, "bridges.mqtt.max_telemetry_bytes"),
        ({"max_call_bytes": 1 << 30}, "bridges.mqtt.max_call_bytes"),
        ({"inbox": 0}, "bridges.mqtt.inbox"),
        ({"alert_outbox": 0}, "bridges.mqtt.alert_outbox"),
        ({"max_concurrent_calls": 0}, "bridges.mqtt.max_concurrent_calls"),
        ({"keepalive_s": 0}, "bridges.mqtt.keepalive_s"),
        ({"reconnect_max_s": float("nan")}, "bridges.mqtt.reconnect_max_s"),
    ],
)
def test_bad_values_name_their_key(values: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _section(**values)
    assert caught.value.key == key


def test_zones_must_be_the_meshs() -> None:
    _section(call_zone="internal", call_topics={"ops/calls": "restricted"}).check_zones(ZONES)
    with pytest.raises(ConfigError) as caught:
        _section(call_zone="secret").check_zones(ZONES)
    assert caught.value.key == "bridges.mqtt.call_zone"
    with pytest.raises(ConfigError) as caught:
        _section(call_topics={"ops/calls": "secret"}).check_zones(ZONES)
    assert caught.value.key == "bridges.mqtt.call_topics.ops/calls"


def test_broker_of_the_url() -> None:
    broker = broker_of("mqtt://dev%40site:p%3Ass@broker.local:8883")
    assert (broker.host, broker.port, broker.username, broker.password) == (
        "broker.local",
        8883,
        "dev@site",
        "p:ss",
    )
    assert broker_of("mqtt://127.0.0.1").port == 1883


def test_a_request_topic_gets_the_lowest_zone_of_the_filters_it_matches() -> None:
    topics = CallTopics(
        {
            "vsmcp/calls/n1": "public",
            "$share/vsmcp/vsmcp/calls": "public",
            "ops/+/calls": "restricted",
            "ops/lab/#": "internal",
        },
        ZONES,
    )
    assert topics.zone_of("vsmcp/calls/n1") == "public"
    assert topics.zone_of("vsmcp/calls") == "public"
    assert topics.zone_of("ops/plant/calls") == "restricted"
    assert topics.zone_of("ops/lab/calls") == "internal"  # restricted and internal match
    assert topics.zone_of("vsmcp/calls/n2") is None
    assert topics.zone_of("ops/plant/calls/x") is None
