"""`[bridges.amqp]`: the factory the bridges service calls (registry.py).

Kept apart from the bridge (`amqp_bridge.py`) so that a node configured with the bridge
but without aio-pika installed refuses to start with a message naming the key and the
extra to install, not an ImportError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vsmcp.node.bridges.amqp_config import KEY, AmqpSection
from vsmcp.node.bridges.model import BridgeContext
from vsmcp.node.errors import ConfigError

if TYPE_CHECKING:
    from vsmcp.node.bridges.amqp_bridge import AmqpBridge


def create(section: AmqpSection, context: BridgeContext) -> AmqpBridge:
    section.check(context.zones)
    try:
        from vsmcp.node.bridges.amqp_bridge import AmqpBridge
    except ImportError as exc:
        raise ConfigError(KEY, f"needs aio-pika: pip install 'vsmcp[amqp]' ({exc})") from exc
    return AmqpBridge(section, context)
