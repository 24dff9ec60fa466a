"""The Telegram bridge on an in-process node, against the fake Bot API (tests/fakes),
with aiogram pointed at it by base URL."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.fakes.telegram_api import TOKEN, FakeTelegram
from tests.polling import async_wait_until
from vsmcp.node.app.config import Config, load_config
from vsmcp.node.app.node import Node
from vsmcp.node.bridges.telegram import KV_OFFSET, PAIN_SOURCE, TelegramBridge, create
from vsmcp.node.bridges.telegram_config import TelegramSection
from vsmcp.node.errors import ConfigError
from vsmcp.node.store.database import Store
from vsmcp.node.tools.errors import ZoneDenied
from vsmcp.node.tools.model import CallContext
from vsmcp.node.vsm.events import AlgedonicSignal, Event

OPS_CHAT = 100
PUBLIC_CHAT = 200
STRANGER = 999
TOKEN_ENV = "VSMCP_TEST_TELEGRAM_TOKEN"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as api:
        yield api


def _config(data_dir: Path, api: FakeTelegram, **telegram: Any) -> Config:
    section = {
        "token_env": TOKEN_ENV,
        "api_base": api.base_url,
        "chats": {str(OPS_CHAT): "ops", str(PUBLIC_CHAT): "public"},
        "poll_timeout_s": 5,
        "alert_chat": str(OPS_CHAT),
        **telegram,
    }
    quiet = {"http.port": 0, "mesh.port": 0, "mesh.preset": "local", "mesh.mdns": False}
    overrides: dict[str, Any] = {
        **quiet,
        "node.data_dir": str(data_dir),
        "node.dev": True,
        "tools.entry_points": False,
        "bridges.telegram": section,
        "vsm.responses": [{"name": "tell", "do": "alert"}],
    }
    return load_config(environ={}, overrides=overrides)


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return TOKEN


def _bridge(node: Node) -> TelegramBridge:
    assert node.bridges is not None
    bridge = node.bridges.get("telegram")
    assert isinstance(bridge, TelegramBridge)
    return bridge


async def _polling(node: Node) -> TelegramBridge:
    """The bridge once it polls (aiogram is imported first: seconds on a busy machine)."""
    bridge = _bridge(node)
    await async_wait_until(lambda: bridge.status().connected, timeout_s=90, what="polling")
    return bridge


async def _ask(api: FakeTelegram, chat: int, text: str, *, replies: int = 1) -> list[str]:
    """Send `text` from `chat`; the bridge's next `replies` messages to it."""
    before = len(api.texts_to(chat))
    api.push_message(chat, text)
    await async_wait_until(
        lambda: len(api.texts_to(chat)) >= before + replies,
        # The first message waits for aiogram's import (seconds; more on a busy machine).
        timeout_s=90,
        what=f"{replies} replies to {text[:40]!r} in chat {chat}",
    )
    return api.texts_to(chat)[before:]


async def test_a_call_from_a_mapped_chat_is_answered(
    tmp_path: Path, fake: FakeTelegram, token: str
) -> None:
    async with Node(_config(tmp_path, fake)) as node:
        assert await _ask(fake, OPS_CHAT, '/call echo text="hello mesh"') == ["hello mesh"]
        # Values are JSON when they parse: 3 is a number, which echo's schema refuses.
        (refused,) = await _ask(fake, OPS_CHAT, "/call echo text=3")
        assert refused.startswith("✗ echo:") and "is not of type 'string'" in refused
        (unknown,) = await _ask(fake, OPS_CHAT, "/call no.such.tool")
        assert "Unknown tool" in unknown and "/tools" in unknown
        # the node's offers tool (its status resource) is no tool to a client either
        (offers,) = await _ask(fake, OPS_CHAT, "/call vsm.mcp.node method=resources/list")
        assert offers == unknown.replace("no.such.tool", "vsm.mcp.node")
        (bad,) = await _ask(fake, OPS_CHAT, "/call echo oops")
        assert bad.startswith("✗ expected key=value")
        status = _bridge(node).status()
        assert status.state == "connected"
        assert status.counters["calls"] == 4  # the malformed command called nothing
        assert status.counters["call_errors"] == 3


async def test_commands_list_tools_status_peers_and_help(
    tmp_path: Path, fake: FakeTelegram, token: str
) -> None:
    async with Node(_config(tmp_path, fake)) as node:
        (ops_tools,) = await _ask(fake, OPS_CHAT, "/tools")
        (public_tools,) = await _ask(fake, PUBLIC_CHAT, "/tools")
        assert "• echo" in ops_tools and "• echo" in public_tools
        # telegram.send is restricted: not even listed to lower zones.
        assert "telegram.send" not in ops_tools
        (status,) = await _ask(fake, OPS_CHAT, "/status")
        assert _bridge(node).context.node_id in status
        # A summary for a phone, not the whole document (that is GET /api/vsm).
        assert "viability: node" in status and "bridges: telegram connected" in status
        assert len(status) < 1000
        (peers,) = await _ask(fake, OPS_CHAT, "/peers")
        assert peers.startswith("Peers:")
        (help_,) = await _ask(fake, OPS_CHAT, "/help@fake_bot")
        assert "/call" in help_ and "zone 'ops'" in help_


async def test_an_unknown_chat_is_refused_politely_and_calls_nothing(
    tmp_path: Path, fake: FakeTelegram, token: str
) -> None:
    async with Node(_config(tmp_path, fake)) as node:
        (reply,) = await _ask(fake, STRANGER, '/call echo text="let me in"')
        assert reply.startswith("Sorry, this chat is not connected") and str(STRANGER) in reply
        counters = _bridge(node).status().counters
        assert counters["refused_chats"] == 1
        assert counters.get("calls", 0) == 0


async def test_a_public_chat_is_refused_a_restricted_tool_naming_the_policy(
    tmp_path: Path, fake: FakeTelegram, token: str
) -> None:
    async with Node(_config(tmp_path, fake)) as node:
        (reply,) = await _ask(fake, PUBLIC_CHAT, f"/call telegram.send chat_id={OPS_CHAT} text=hi")
        assert "Denied by policy zone-order" in reply and "'public'" in reply
        assert fake.texts_to(OPS_CHAT) == []
        assert _bridge(node).status().counters["call_errors"] == 1


async def test_telegram_send_reaches_a_chat_of_the_config_only(
    tmp_path: Path, fake: FakeTelegram, token: str
) -> None:
    async with Node(_config(tmp_path, fake)) as node:
        tools = (await _polling(node)).context.tools
        restricted = CallContext(caller_id="t", caller_zone="restricted", origin="test")
        await async_wait_until(
            lambda: "telegram.send" in {s.name for s in tools.list_tools(restricted)},
            what="telegram.send offered",
        )
        long_text = "x" * 9000
        result = await tools.call_tool(
            "telegram.send", {"chat_id": PUBLIC_CHAT, "text": long_text}, restricted
        )
        assert result["structuredContent"] == {"chat_id": PUBLIC_CHAT, "messages": 3}
        assert "".join(fake.texts_to(PUBLIC_CHAT)) == long_text
        assert all(len(t) <= 4096 for t in fake.texts_to(PUBLIC_CHAT))
        stranger = await tools.call_tool(
            "telegram.send", {"chat_id": str(STRANGER), "text": "hi"}, restricted
        )
        assert stranger["isError"] and "not one of this bridge's chats" in str(stranger)
        assert fake.texts_to(STRANGER) == []
        ops = CallContext(caller_id="t", caller_zone="ops", origin="test")
        with pytest.raises(ZoneDenied):
            await tools.call_tool("telegram.send", {"chat_id": OPS_CHAT, "text": "hi"}, ops)


async def test_429_retry_after_is_honoured(tmp_path: Path, fake: FakeTelegram, token: str) -> None:
    async with Node(_config(tmp_path, fake)) as node:
        await _ask(fake, OPS_CHAT, "/call echo text=warm")
        fake.fail_next("sendMessage", 429, "Too Many Requests: retry after 1", retry_after=1)
        fake.fail_next("getUpdates", 429, "Too Many Requests: retry after 1", retry_after=1)
        sends = fake.calls.count("sendMessage")
        assert await _ask(fake, OPS_CHAT, "/call echo text=again") == ["again"]
        bridge = _bridge(node)
        # The refused send was made again after the wait, not dropped.
        assert fake.calls.count("sendMessage") == sends + 2
        assert bridge.status().counters["send_retry_after"] == 1
        await async_wait_until(
            lambda: bridge.status().counters.get("retry_after") == 1,
            what="the poll's 429 counted",
        )


async def test_a_malformed_update_is_skipped_and_counted(
    tmp_path: Path, fake: FakeTelegram, token: str
) -> None:
    async with Node(_config(tmp_path, fake)) as node:
        bad = fake.push_raw({"message": {"chat": "not a chat", "date": "yesterday"}})
        assert await _ask(fake, OPS_CHAT, "/call echo text=after") == ["after"]
        bridge = _bridge(node)
        assert bridge.status().counters["malformed"] == 1
        # The offset moved past it: Telegram would not send it again.
        await async_wait_until(
            lambda: any(o is not None and o > bad for o in fake.offsets),
            what="an offset past the malformed update",
        )
        assert bridge.status().state == "connected"


async def test_4000_character_messages_and_answers(
    tmp_path: Path, fake: FakeTelegram, token: str
) -> None:
    async with Node(_config(tmp_path, fake)) as node:
        text = "y" * 3980
        assert await _ask(fake, OPS_CHAT, f"/call echo text={text}") == [text]
        # Free text goes to System 4's (offline) planner, which says it is unsure.
        (free,) = await _ask(fake, OPS_CHAT, "z" * 4000)
        assert "not sure" in free
        (too_long,) = await _ask(fake, OPS_CHAT, "z" * 5000)
        assert "longer than 4096" in too_long
        assert _bridge(node).status().counters.get("calls", 0) == 1


async def test_a_chat_over_its_rate_limit_is_told_once(
    tmp_path: Path, fake: FakeTelegram, token: str
) -> None:
    async with Node(_config(tmp_path, fake, rate_per_s=0.01, burst=2)) as node:
        await _polling(node)
        for i in range(5):
            fake.push_message(OPS_CHAT, f"/call echo text=n{i}")
        bridge = _bridge(node)
        await async_wait_until(
            lambda: bridge.status().counters.get("rate_limited", 0) == 3,
            what="three messages over the limit",
        )
        await async_wait_until(lambda: len(fake.texts_to(OPS_CHAT)) == 3, what="3 replies")
        replies = fake.texts_to(OPS_CHAT)
        assert sorted(r for r in replies if not r.startswith("Slow down")) == ["n0", "n1"]
        assert sum(r.startswith("Slow down") for r in replies) == 1
        assert bridge.status().counters["calls"] == 2


async def test_the_conversation_continues_across_a_restart(
    tmp_path: Path, fake: FakeTelegram, token: str
) -> None:
    async with Node(_config(tmp_path, fake)):
        await _ask(fake, OPS_CHAT, "/call echo text=remember-me")
    async with Node(_config(tmp_path, fake)) as node:
        (history,) = await _ask(fake, OPS_CHAT, "/history")
        assert "/call echo text=remember-me" in history and "→ remember-me" in history
        assert await _ask(fake, OPS_CHAT, "/call echo text=again") == ["again"]
        # The chat's turns are a causal chain in the context graph; reading the history
        # back is not a turn of it.
        turns = _bridge(node).conversations.history(OPS_CHAT)
        assert [t["asked"] for t in turns] == [
            "/call echo text=remember-me",
            "/call echo text=again",
        ]
        graph = _bridge(node).context.state.graph
        assert graph.get(turns[1]["id"]).parents == [turns[0]["id"]]
        # The first message was answered once: the offset survived the restart too.
        assert fake.texts_to(OPS_CHAT).count("remember-me") == 1


class _Answer:
    def __init__(self, text: str) -> None:
        self.text = text


class _Planner:
    """A test double of System 4's planner interface: `answer(text, ctx) -> .text`."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    async def answer(self, text: str, ctx: CallContext) -> _Answer:
        self.asked.append((text, ctx.caller_zone))
        if text == "break":
            raise RuntimeError("a bug in the planner")
        return _Answer("p" * 5000)


async def test_free_text_goes_to_the_planner_and_long_answers_are_split(
    tmp_path: Path, fake: FakeTelegram, token: str
) -> None:
    async with Node(_config(tmp_path, fake)) as node:
        bridge = _bridge(node)
        await bridge.stop()
        section = node.config.bridges.telegram
        assert section is not None
        # A node without a planner says that only commands work, and which.
        async with create(section, dataclasses.replace(bridge.context, planner=None)):
            (no_planner,) = await _ask(fake, PUBLIC_CHAT, "what time is it?")
        assert "only commands" in no_planner and "/call" in no_planner
        planner = _Planner()
        context = dataclasses.replace(bridge.context, planner=planner)
        async with create(section, context):
            parts = await _ask(fake, PUBLIC_CHAT, "what time is it?", replies=2)
            (failed,) = await _ask(fake, PUBLIC_CHAT, "break")
        assert planner.asked == [("what time is it?", "public"), ("break", "public")]
        assert [len(p) for p in parts] == [4096, 904]
        # A planner that fails is not silence: the chat is told, the node logs it.
        assert failed.startswith("Sorry, that failed on node")


async def test_failing_polls_raise_pain_and_recover(
    tmp_path: Path, fake: FakeTelegram, token: str
) -> None:
    signals: list[AlgedonicSignal] = []

    def collect(batch: list[Event]) -> None:
        signals.extend(e for e in batch if isinstance(e, AlgedonicSignal))

    async with Node(_config(tmp_path, fake)) as node:
        node.events.subscribe("test-signals", collect, kinds=[AlgedonicSignal])
        bridge = await _polling(node)
        for _ in range(3):
            fake.fail_next("getUpdates", 502, "Bad Gateway")
        # The poll in flight ends when a message arrives; the next three fail.
        await _ask(fake, OPS_CHAT, "/call echo text=before")
        await async_wait_until(
            lambda: any(s.source == PAIN_SOURCE for s in signals),
            timeout_s=20,
            what="pain from the bridge",
        )
        assert bridge.status().errors >= 3 and "Bad Gateway" in bridge.status().last_error
        assert await _ask(fake, OPS_CHAT, "/call echo text=back") == ["back"]
        assert bridge.status().state == "connected"
        metrics = node.metrics.render().decode()
        assert 'vsmcp_bridge_connected{bridge="telegram"} 1.0' in metrics
        errors = bridge.status().errors
        assert f'vsmcp_bridge_errors_total{{bridge="telegram"}} {float(errors)}' in metrics


async def test_an_alert_of_system_5_reaches_the_alert_chat(
    tmp_path: Path, fake: FakeTelegram, token: str
) -> None:
    async with Node(_config(tmp_path, fake)) as node:
        (await _polling(node)).context.pain("disk:/var", 0.95, "disk full")
        await async_wait_until(
            lambda: any("System 5 alert (rule tell)" in t for t in fake.texts_to(OPS_CHAT)),
            timeout_s=20,
            what="the alert in the alert chat",
        )
        (alert,) = fake.texts_to(OPS_CHAT)
        assert "pain 0.95 from disk:/var: disk full" in alert


async def test_a_token_that_is_not_a_bot_token_is_refused(
    tmp_path: Path, fake: FakeTelegram, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Node(_config(tmp_path, fake)) as node:
        monkeypatch.setenv(TOKEN_ENV, "not a token")
        with pytest.raises(ConfigError, match="does not hold a bot token") as caught:
            create(node.config.bridges.telegram, _bridge(node).context)  # type: ignore[arg-type]
        assert caught.value.key == "bridges.telegram.token_env"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"chats": {"100": "nowhere"}}, "bridges.telegram.chats"),
        ({"chats": {"general": "ops"}}, "bridges.telegram.chats"),
        ({"send_zone": "nowhere"}, "bridges.telegram.send_zone"),
        ({"alert_chat": "ops-room"}, "bridges.telegram.alert_chat"),
        ({"token_env": "VSMCP_TEST_NO_SUCH_VARIABLE"}, "bridges.telegram.token_env"),
        ({"api_base": "ftp://example"}, "bridges.telegram.api_base"),
    ],
)
async def test_bad_config_names_the_key(
    tmp_path: Path,
    fake: FakeTelegram,
    token: str,
    change: Mapping[str, Any],
    key: str,
) -> None:
    async with Node(_config(tmp_path, fake)) as node:
        section = TelegramSection(token_env=TOKEN_ENV, api_base=fake.base_url, chats={"100": "ops"})
        with pytest.raises(ConfigError) as caught:
            create(msgspec.structs.replace(section, **change), _bridge(node).context)
        assert caught.value.key == key


async def test_an_unusable_stored_offset_does_not_stop_the_bridge(
    tmp_path: Path, fake: FakeTelegram, token: str
) -> None:
    async with Node(_config(tmp_path, fake)):
        pass
    async with Store.open(tmp_path) as store:
        await store.kv_set(KV_OFFSET, b"\xffnot a number")
    async with Node(_config(tmp_path, fake)):
        assert await _ask(fake, OPS_CHAT, "/call echo text=still-here") == ["still-here"]
