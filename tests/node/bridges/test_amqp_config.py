"""`[bridges.amqp]`: every bad value is a ConfigError naming its key; the defaults and
a full table load through the node's config loader."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from vsmcp.node.app.config import load_config
from vsmcp.node.bridges.amqp_config import DEFAULT_EVENT_KINDS, AmqpSection, event_kinds
from vsmcp.node.errors import ConfigError

ZONES = ("public", "ops", "restricted")
URL = "amqp://guest:guest@127.0.0.1:5672/"


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"url": ""}, "bridges.amqp.url"),
        ({"url": "http://x/"}, "bridges.amqp.url"),
        ({"exchange": ""}, "bridges.amqp.exchange"),
        ({"calls_queue": ""}, "bridges.amqp.calls_queue"),
        ({"events": ["tool_call", "nope"]}, "bridges.amqp.events"),
        ({"prefetch": 0}, "bridges.amqp.prefetch"),
        ({"max_message_bytes": 0}, "bridges.amqp.max_message_bytes"),
        ({"outbox_capacity": 0}, "bridges.amqp.outbox_capacity"),
        ({"pain_after_s": 0}, "bridges.amqp.pain_after_s"),
        ({"default_zone": "root"}, "bridges.amqp.default_zone"),
        ({"user_zones": {"svc": "root"}}, "bridges.amqp.user_zones.svc"),
        ({"queue_zones": {"q": "root"}}, "bridges.amqp.queue_zones.q"),
    ],
)
def test_a_bad_value_names_its_key(changes: dict[str, object], key: str) -> None:
    section = msgspec.convert({"url": URL, **changes}, AmqpSection)
    with pytest.raises(ConfigError) as raised:
        section.check(ZONES)
    assert raised.value.key == key


def test_the_defaults_are_valid_and_leave_tool_calls_out() -> None:
    section = AmqpSection(url=URL)
    section.check(ZONES)
    assert set(DEFAULT_EVENT_KINDS) == event_kinds() - {"tool_call", "telemetry"}
    assert "denial" in DEFAULT_EVENT_KINDS and "tool_call" not in DEFAULT_EVENT_KINDS


def test_a_table_loads_through_the_node_config(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        f'[bridges.amqp]\nurl = "{URL}"\nevents = ["tool_call"]\n'
        '[bridges.amqp.user_zones]\nops-bot = "ops"\n'
    )
    config = load_config(path)
    assert config.bridges.amqp is not None
    assert config.bridges.amqp.events == ["tool_call"]
    assert config.bridges.amqp.user_zones == {"ops-bot": "ops"}
    assert list(config.bridges.configured()) == ["amqp"]
