"""What an alert of System 5 says, wherever it is sent (a Telegram chat, a broker)."""

from __future__ import annotations

from vsmcp.node.vsm.events import AlgedonicSignal, ResponseTaken


def alert_text(node_name: str, response: ResponseTaken, signal: AlgedonicSignal | None) -> str:
    """One line naming the node and the rule, and the signal that raised it when known."""
    text = f"⚠ {node_name}: System 5 alert (rule {response.rule})"
    if signal is not None:
        text += f"\n{signal.valence} {signal.intensity:.2f} from {signal.source}: {signal.reason}"
    return text
