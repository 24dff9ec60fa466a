"""Issue #15's end-to-end case on real `vsmcpd` processes: "what time is it in Tokyo?"
written in a Telegram chat is answered with Tokyo's current time from `mcp-server-time`
mounted on another node — once through a bridge node whose planner uses a language model
(the official `anthropic` client pointed at the fake Messages API), once through a bridge
node with no key at all (the offline planner); a restricted tool asked for in plain words
from the `public` chat is refused, naming the policy. Each bridge polls its own fake Bot API (one
bot cannot be polled twice), through aiogram pointed at it by `api_base`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fakes.anthropic_api import API_KEY, FakeAnthropic, echo_results, reply, tool_use_block
from tests.fakes.telegram_api import TOKEN, ThreadedFakeTelegram
from tests.integration.harness import NodeProcess, wait_mesh_states
from tests.integration.test_planner import A_CONFIG, _assert_tokyo_now, _free_port
from tests.polling import async_wait_for
from tests.skips import require_module

pytestmark = pytest.mark.integration

CHAT = 4242
TOKYO = "what time is it in Tokyo?"
TOKEN_ENV = "VSMCP_TEST_TELEGRAM_TOKEN"
KEY_ENV = "VSMCP_TELEGRAM_PLANNER_KEY"

BRIDGE = """
[mesh]
preset = "local"
[tools]
entry_points = false
[bridges.telegram]
token_env = "{token_env}"
api_base = "{api_base}"
chats = {{ "{chat}" = "public" }}
poll_timeout_s = 5
# The test asks again until the other node's tool has replicated: no per-chat rate limit
# may stand in its way (it would answer "slow down", then nothing).
rate_per_s = 1000.0
burst = 1000.0
[llm]
api_key_env = "{key_env}"
base_url = "http://127.0.0.1:{llm_port}"
timeout_s = 10
"""


def _start(base: Path, nodes: list[NodeProcess], name: str, text: str, **env: str) -> NodeProcess:
    path = base / f"{name}.toml"
    path.write_text(text)
    node = NodeProcess(base / name, "--config", str(path), env=env)
    nodes.append(node)
    return node.start(wait=False)


async def _answer(telegram: ThreadedFakeTelegram, text: str, expected: str) -> str:
    """Ask in the chat until an answer holds `expected`: the other node's tools reach the
    bridge by replication, and aiogram loads after the node is up."""
    api = telegram.api
    answers: list[str] = []

    async def ask() -> str | None:
        before = len(telegram.call(api.texts_to, CHAT))
        telegram.call(api.push_message, CHAT, text)

        async def answered() -> list[str] | None:
            texts: list[str] = telegram.call(api.texts_to, CHAT)
            return texts[before:] or None

        [answer, *_] = await async_wait_for(answered, timeout_s=120, what="a reply in the chat")
        answers.append(answer)
        return answer if expected in answer else None

    try:
        return await async_wait_for(ask, timeout_s=240, what=f"a reply holding {expected!r}")
    except AssertionError as e:
        raise AssertionError(f"{e}; the replies: {answers[-3:]}") from None


async def test_tokyo_time_in_a_telegram_chat_with_the_llm_and_offline(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    require_module("mcp_server_time")
    require_module("aiogram")
    llm_port = _free_port()

    def bridge_config(telegram: ThreadedFakeTelegram) -> str:
        return BRIDGE.format(
            token_env=TOKEN_ENV,
            api_base=telegram.base_url,
            chat=CHAT,
            key_env=KEY_ENV,
            llm_port=llm_port,
        )

    with ThreadedFakeTelegram() as llm_chat, ThreadedFakeTelegram() as offline_chat:
        time_server = _start(tmp_path, nodes, "time", A_CONFIG)
        with_llm = _start(
            tmp_path,
            nodes,
            "llm",
            bridge_config(llm_chat),
            **{TOKEN_ENV: TOKEN, KEY_ENV: API_KEY},
        )
        # The key's variable unset: this bridge plans offline.
        offline = _start(
            tmp_path, nodes, "offline", bridge_config(offline_chat), **{TOKEN_ENV: TOKEN}
        )
        started = [time_server, with_llm, offline]
        for node in started:
            node.wait_ready()
        wait_mesh_states(started, {n.node_id: "alive" for n in started})

        async with FakeAnthropic(port=llm_port) as fake:

            def model(body: dict[str, Any]) -> dict[str, Any]:
                if len(body["messages"]) == 1:
                    return reply(
                        tool_use_block("time_get_current_time", {"timezone": "Asia/Tokyo"})
                    )
                return echo_results(body)

            fake.fallback = model
            _assert_tokyo_now(await _answer(llm_chat, TOKYO, "Asia/Tokyo"))
            # The model was asked, and offered the mounted tool of the other node.
            assert any(
                "time_get_current_time" in {t["name"] for t in request.get("tools", [])}
                for request in fake.requests
            )
        _assert_tokyo_now(await _answer(offline_chat, TOKYO, "Asia/Tokyo"))
        # The chat is mapped to `public`: a restricted tool asked for in plain words is
        # refused, naming the policy, and nothing runs.
        assert time_server.post("/api/debug/tools?name=vault.read_secret&zone=restricted") == 200
        refusal = await _answer(offline_chat, "read the vault secret please", "zone-order")
        assert "vault.read_secret" in refusal and "'public'" in refusal
