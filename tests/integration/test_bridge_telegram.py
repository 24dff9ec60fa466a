"""The Telegram bridge on real `vsmcpd` processes, against the fake Bot API
(tests/fakes/telegram_api.py) that aiogram in the bridge node is pointed at.

Two nodes: `bridge` runs [bridges.telegram]; `worker` offers the plugin tool `add`.
A mapped chat's `/call add` runs on the worker and its answer comes back; an unknown chat
is refused; a public chat is refused a restricted tool, naming the policy; the worker
calls `telegram.send` over the mesh and the message reaches the fake; a 429, a malformed
update and a 4,000-character message are each survived."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.telegram_api import TOKEN, ThreadedFakeTelegram
from tests.integration.harness import NodeProcess, call_tool, run_daemon, wait_mesh_states
from tests.polling import wait_for

pytestmark = pytest.mark.integration

OPS_CHAT = 100
PUBLIC_CHAT = 200
STRANGER = 999
TOKEN_ENV = "VSMCP_TEST_TELEGRAM_TOKEN"
OPS_TOKEN = "ops-token-for-the-telegram-test"

COMMON = f"""
[mesh]
preset = "local"
[tools]
entry_points = false
[[mcp.tokens]]
name = "ops"
token = "{OPS_TOKEN}"
zone = "restricted"
"""
WORKER = (
    COMMON
    + """
[[tools.plugins]]
name = "add"
target = "tests.integration.plugin_tools:add"
"""
)


def _bridge_config(api_base: str, *, rate_per_s: float = 1.0, burst: int = 5) -> str:
    return (
        COMMON
        + f"""
[bridges.telegram]
token_env = "{TOKEN_ENV}"
api_base = "{api_base}"
chats = {{ "{OPS_CHAT}" = "ops", "{PUBLIC_CHAT}" = "public" }}
poll_timeout_s = 5
rate_per_s = {rate_per_s}
burst = {burst}
"""
    )


@pytest.fixture
def telegram() -> Iterator[ThreadedFakeTelegram]:
    with ThreadedFakeTelegram() as fake:
        yield fake


def _start(base: Path, nodes: list[NodeProcess], name: str, config: str) -> NodeProcess:
    path = base / f"{name}.toml"
    path.write_text(config)
    node = NodeProcess(base / name, "--config", str(path), env={TOKEN_ENV: TOKEN})
    nodes.append(node)
    return node.start(wait=False)


def _ask(telegram: ThreadedFakeTelegram, chat: int, text: str, replies: int = 1) -> list[str]:
    api = telegram.api
    before = len(telegram.call(api.texts_to, chat))
    telegram.call(api.push_message, chat, text)
    wait_for(
        lambda: len(telegram.call(api.texts_to, chat)) >= before + replies,
        timeout_s=60,
        what=f"{replies} replies to {text[:40]!r} in chat {chat}",
    )
    texts: list[str] = telegram.call(api.texts_to, chat)
    return texts[before:]


def _bridge_status(node: NodeProcess) -> dict[str, object]:
    status: dict[str, object] = node.get_json("/api/vsm")["bridges"]["telegram"]
    return status


def _wait_polling(node: NodeProcess) -> None:
    # aiogram is imported after the node is up, in a thread: seconds, more on a busy machine.
    wait_for(lambda: _bridge_status(node)["connected"], timeout_s=90, what="the bridge polling")


def test_chats_reach_the_mesh_and_the_mesh_reaches_chats(
    tmp_path: Path, nodes: list[NodeProcess], telegram: ThreadedFakeTelegram
) -> None:
    bridge = _start(tmp_path, nodes, "bridge", _bridge_config(telegram.base_url))
    worker = _start(tmp_path, nodes, "worker", WORKER)
    for node in (bridge, worker):
        node.wait_ready()
    wait_mesh_states([bridge, worker], {n.node_id: "alive" for n in (bridge, worker)})

    def offered(node: NodeProcess, tool: str) -> bool:
        return any(t["name"] == tool for t in node.get_json("/api/tools")["tools"])

    wait_for(lambda: offered(bridge, "add"), timeout_s=30, what="add known at the bridge")
    _wait_polling(bridge)

    # A mapped chat calls a tool that only the worker offers.
    assert _ask(telegram, OPS_CHAT, "/call add a=2 b=40") == ['{"sum":42}']

    # A chat not in the mapping: refused politely, nothing called.
    (refusal,) = _ask(telegram, STRANGER, "/call add a=1 b=1")
    assert refusal.startswith("Sorry, this chat is not connected")

    # A public chat asking for a restricted tool: refused, naming the policy.
    (denied,) = _ask(telegram, PUBLIC_CHAT, f"/call telegram.send chat_id={OPS_CHAT} text=hi")
    assert "Denied by policy zone-order" in denied and "'public'" in denied

    # The worker reaches Telegram through the bridge: telegram.send over the mesh.
    wait_for(lambda: offered(worker, "telegram.send"), timeout_s=30, what="telegram.send known")
    sent = call_tool(
        worker, OPS_TOKEN, "telegram.send", {"chat_id": PUBLIC_CHAT, "text": "from the worker"}
    )
    assert sent["result"]["structuredContent"] == {"chat_id": PUBLIC_CHAT, "messages": 1}, sent
    assert telegram.call(telegram.api.texts_to, PUBLIC_CHAT)[-1] == "from the worker"

    # 429 with retry_after on the reply: waited out, then sent.
    telegram.call(
        telegram.api.fail_next,
        "sendMessage",
        429,
        "Too Many Requests: retry after 1",
        retry_after=1,
    )
    assert _ask(telegram, OPS_CHAT, "/call add a=1 b=1") == ['{"sum":2}']

    # A malformed update is skipped and counted; the next message is answered.
    telegram.call(telegram.api.push_raw, {"message": {"chat": None, "text": 5}})
    assert _ask(telegram, OPS_CHAT, "/call add a=3 b=4") == ['{"sum":7}']

    # A 4,000-character message is read whole (and its answer fits one message).
    text = "w" * 4000
    assert _ask(telegram, OPS_CHAT, f'/call echo text="{text}"') == [text]

    counters = _bridge_status(bridge)["counters"]
    assert isinstance(counters, dict)
    assert counters["malformed"] == 1 and counters["refused_chats"] == 1
    assert counters["sent"] == 1


def test_a_chat_mapped_to_an_unknown_zone_stops_the_start_naming_the_key(
    tmp_path: Path,
) -> None:
    config = tmp_path / "vsmcp.toml"
    config.write_text(
        f'[bridges.telegram]\ntoken_env = "{TOKEN_ENV}"\nchats = {{ "{OPS_CHAT}" = "admins" }}\n'
    )
    done = run_daemon(
        "--dev", "--no-mdns", "--data-dir", str(tmp_path / "data"), "--http-port", "0",
        "--mesh-port", "0", "--config", str(config),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "config key 'bridges.telegram.chats'" in done.stderr
    assert "'admins' is not in trust.zones" in done.stderr


def test_a_conversation_continues_on_another_bridge_node(
    tmp_path: Path, nodes: list[NodeProcess], telegram: ThreadedFakeTelegram
) -> None:
    # Two bridge nodes, each polling its own fake (one bot cannot be polled twice): the
    # chat's turns on the first reach the second through the replicated context graph.
    with ThreadedFakeTelegram() as other:
        # The test asks /history until the turn has replicated: no per-chat rate limit
        # may stand in its way (it would answer "slow down", then nothing).
        fast = {"rate_per_s": 1000.0, "burst": 1000}
        first = _start(tmp_path, nodes, "first", _bridge_config(telegram.base_url, **fast))
        second = _start(tmp_path, nodes, "second", _bridge_config(other.base_url, **fast))
        for node in (first, second):
            node.wait_ready()
        wait_mesh_states([first, second], {n.node_id: "alive" for n in (first, second)})
        _wait_polling(first)
        _wait_polling(second)
        assert _ask(telegram, OPS_CHAT, "/call echo text=started-on-first") == ["started-on-first"]

        def history_on_second() -> bool:
            (history,) = _ask(other, OPS_CHAT, "/history")
            return "/call echo text=started-on-first" in history

        wait_for(history_on_second, timeout_s=90, what="the first node's turn on the second")


def test_an_alert_of_another_node_reaches_the_chat_through_telegram_send(
    tmp_path: Path, nodes: list[NodeProcess], telegram: ThreadedFakeTelegram
) -> None:
    # The worker has no bridge: its System 5 alert travels to the bridge's telegram.send.
    alerting = (
        WORKER
        + f"""
[vsm]
alert_telegram_chat = "{OPS_CHAT}"
[[vsm.responses]]
name = "page-ops"
do = "alert"
when = 0.5
"""
    )
    bridge = _start(tmp_path, nodes, "bridge", _bridge_config(telegram.base_url))
    worker = _start(tmp_path, nodes, "worker", alerting)
    for node in (bridge, worker):
        node.wait_ready()
    wait_mesh_states([bridge, worker], {n.node_id: "alive" for n in (bridge, worker)})
    wait_for(
        lambda: any(t["name"] == "telegram.send" for t in worker.get_json("/api/tools")["tools"]),
        timeout_s=30,
        what="telegram.send known at the worker",
    )
    _wait_polling(bridge)

    status, _ = worker.post_json(
        "/api/algedonic",
        {"valence": "pain", "intensity": 0.95, "reason": "disk on fire"},
        token=OPS_TOKEN,
    )
    assert status == 202

    def alert() -> str | None:
        texts: list[str] = telegram.call(telegram.api.texts_to, OPS_CHAT)
        return next((t for t in texts if "System 5 alert (rule page-ops)" in t), None)

    text = wait_for(alert, timeout_s=60, what="the worker's alert in the chat")
    assert text.startswith(f"⚠ {worker.node_id[-8:]}:")
    assert "pain 0.95 from http:ops: disk on fire" in text
