"""`[bridges.telegram]`: the Telegram bridge (docs/bridges.md, "Telegram")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Final

import msgspec

from vsmcp.node.errors import ConfigError
from vsmcp.node.tools.config import doc

KEY: Final = "bridges.telegram"

DEFAULT_API_BASE = "https://api.telegram.org"
# Telegram holds a long poll open at most this long (its documented maximum is 50 s).
MAX_POLL_TIMEOUT_S = 50


class TelegramSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    token_env: Annotated[
        str,
        msgspec.Meta(min_length=1, max_length=128),
        doc("the environment variable holding the bot's token (never the token itself)"),
    ]
    api_base: Annotated[
        str,
        doc("the Bot API's base URL (a local Bot API server, or a test's fake)"),
    ] = DEFAULT_API_BASE
    chats: Annotated[
        dict[str, str],
        doc(
            'chat id -> the zone its messages call tools in ({ "12345" = "ops" }); '
            "other chats are refused politely"
        ),
    ] = msgspec.field(default_factory=dict)
    rate_per_s: Annotated[
        float,
        msgspec.Meta(gt=0),
        doc("messages per second each chat may send, sustained (more get a 'slow down')"),
    ] = 1.0
    burst: Annotated[
        float, msgspec.Meta(ge=1), doc("messages a chat may send at once (bucket size)")
    ] = 5.0
    poll_timeout_s: Annotated[
        int,
        msgspec.Meta(ge=0, le=MAX_POLL_TIMEOUT_S),
        doc("how long one getUpdates long poll waits for a message, in seconds"),
    ] = 25
    alert_chat: Annotated[
        str,
        doc('chat id that System 5\'s `alert` responses are sent to; "": none'),
    ] = ""
    send_zone: Annotated[
        str,
        doc("the zone of the mesh tool telegram.send (who may message chats through it)"),
    ] = "restricted"
    context_turns: Annotated[
        int,
        msgspec.Meta(ge=0, le=200),
        doc("turns of each chat (asked, done) kept in the context graph and read back (/history)"),
    ] = 20

    def check(self, zones: Sequence[str]) -> None:
        """What can be checked without the environment or aiogram (at config load, so a
        bad table stops the node before it starts anything): chats, zones, the API URL."""
        for chat, zone in self.chat_zones().items():
            if zone not in zones:
                raise ConfigError(
                    f"{KEY}.chats", f"chat {chat}: zone {zone!r} is not in trust.zones"
                )
        if self.send_zone not in zones:
            raise ConfigError(f"{KEY}.send_zone", f"{self.send_zone!r} is not in trust.zones")
        self.alert_chat_id()
        if not self.api_base.startswith(("http://", "https://")):
            raise ConfigError(f"{KEY}.api_base", "must be an http:// or https:// URL")

    def chat_zones(self) -> dict[int, str]:
        return {chat_id(f"{KEY}.chats", chat): zone for chat, zone in self.chats.items()}

    def alert_chat_id(self) -> int | None:
        return chat_id(f"{KEY}.alert_chat", self.alert_chat) if self.alert_chat else None


def chat_id(key: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(key, f"{text!r} is not a chat id (an integer)") from None
