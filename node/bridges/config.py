"""`[bridges]`: one optional table per bridge; a bridge whose table is absent is off.

Each bridge's section lives beside its code (`<name>_config.py`) and is added here as
a field defaulting to None.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from vsmcp.node.bridges.amqp_config import AmqpSection
from vsmcp.node.bridges.mqtt_config import MqttSection
from vsmcp.node.bridges.postgres_config import PostgresSection
from vsmcp.node.bridges.telegram_config import TelegramSection
from vsmcp.node.tools.config import doc


class BridgesSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    postgres: Annotated[
        PostgresSection | None,
        doc("mirror the audit log, policy notes and CRDT snapshots into PostgreSQL"),
    ] = None
    mqtt: Annotated[
        MqttSection | None,
        doc("MQTT broker: telemetry in, alerts and announcements out, MQTT 5 tool calls"),
    ] = None
    amqp: Annotated[
        AmqpSection | None,
        doc("RabbitMQ: events out to a topic exchange, tool calls in (docs/bridges.md#amqp)"),
    ] = None
    telegram: Annotated[
        TelegramSection | None,
        doc("Telegram bot: chats talk to the mesh, telegram.send reaches them (docs/bridges.md)"),
    ] = None

    def configured(self) -> dict[str, Any]:
        """The configured bridges' sections, by name (the field's name)."""
        return {
            name: section
            for name in self.__struct_fields__
            if (section := getattr(self, name)) is not None
        }
