"""Which module builds each bridge: imported only when its table is configured.

A bridge module exposes `create(config_section, context) -> Bridge`.
"""

from __future__ import annotations

from typing import Final

# [bridges.<name>] -> the module whose `create` builds it. Append-only.
BRIDGE_MODULES: Final[dict[str, str]] = {
    "postgres": "vsmcp.node.bridges.postgres",
    "mqtt": "vsmcp.node.bridges.mqtt",
    "amqp": "vsmcp.node.bridges.amqp",
    "telegram": "vsmcp.node.bridges.telegram",
}
