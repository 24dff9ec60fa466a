"""System 4's planner in real `vsmcpd` processes: A mounts `mcp-server-time` (PyPI) and
offers a restricted tool; B plans with a language model (the official `anthropic` client
inside B, pointed by `[llm] base_url` at the fake Messages API this test runs); C has no
key and plans offline. "What time is it in Tokyo?" asked at B and at C is answered with
Tokyo's current time from A."""

from __future__ import annotations

import json
import re
import socket
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.anthropic_api import (
    API_KEY,
    FakeAnthropic,
    Turn,
    echo_results,
    reply,
    tool_use_block,
)
from tests.integration.harness import NodeProcess, run_cli, wait_mesh_states
from tests.polling import async_wait_for, wait_for
from tests.skips import require_module

pytestmark = pytest.mark.integration

KEY_ENV = "VSMCP_PLANNER_TEST_KEY"
PUBLIC_TOKEN = "planner-public-token-0123"
TOKYO = "what time is it in Tokyo?"
# How far the time in an answer may be from the test's clock (a loaded machine).
CLOCK_SLACK_S = 120

A_CONFIG = f"""
[mesh]
preset = "local"
[node]
debug_api = true
[tools]
entry_points = false
[[tools.mounts]]
name = "time"
command = "{sys.executable}"
args = ["-m", "mcp_server_time", "--local-timezone", "UTC"]
"""

ASKER = """
[mesh]
preset = "local"
[tools]
entry_points = false
[[mcp.tokens]]
name = "pub"
token = "{token}"
zone = "public"
[llm]
api_key_env = "{key_env}"
base_url = "http://127.0.0.1:{port}"
timeout_s = 3
"""


class Mesh:
    def __init__(self, a: NodeProcess, b: NodeProcess, c: NodeProcess, llm_port: int) -> None:
        self.a, self.b, self.c, self.llm_port = a, b, c, llm_port


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    require_module("mcp_server_time")
    base: Path = tmp_path_factory.mktemp("planner")
    port = _free_port()
    asker = ASKER.format(token=PUBLIC_TOKEN, key_env=KEY_ENV, port=port)
    started: list[NodeProcess] = []
    try:
        for name, text, env in (
            ("a", A_CONFIG, {}),
            ("b", asker, {KEY_ENV: API_KEY}),
            ("c", asker, {}),  # the key's variable unset: offline
        ):
            config = base / f"{name}.toml"
            config.write_text(text)
            node = NodeProcess(base / name, "--config", str(config), env=env)
            started.append(node.start(wait=False))
        for node in started:
            node.wait_ready()
        wait_mesh_states(started, {n.node_id: "alive" for n in started})
        a, b, c = started
        assert a.post("/api/debug/tools?name=vault.read_secret&zone=restricted") == 200
        yield Mesh(a, b, c, port)
    except BaseException:
        for node in started:
            print(f"--- log of {node.data_dir} ---\n{node.log_text()[-6000:]}")
        raise
    finally:
        for node in started:
            node.stop()


async def _post(
    node: NodeProcess, path: str, body: Any, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(node.url + path, data=json.dumps(body), headers=headers) as r,
    ):
        return r.status, await r.json(content_type=None)


async def _ask_until_the_tool_is_seen(node: NodeProcess, text: str) -> dict[str, Any]:
    """The time tool reaches the asker by replication: ask until the answer ran it."""
    last: list[dict[str, Any]] = []

    async def probe() -> dict[str, Any] | None:
        status, answer = await _post(node, "/api/ask", {"text": text})
        assert status == 200, answer
        last[:] = [answer]
        ran = [s for s in answer["steps"] if s["tool"] == "time.get_current_time"]
        return answer if ran and ran[0]["outcome"] == "ok" else None

    try:
        return await async_wait_for(probe, timeout_s=30, what="an answer that ran the time tool")
    except AssertionError as e:
        raise AssertionError(f"{e}; the last answer: {last}") from None


def _assert_tokyo_now(text: str) -> None:
    assert "Asia/Tokyo" in text, text
    found = re.search(r"datetime: (\S+?)[,;\s]", text + " ")
    assert found, text
    then = datetime.fromisoformat(found.group(1))
    assert then.utcoffset() is not None and then.utcoffset().total_seconds() == 9 * 3600
    assert abs((then - datetime.now(UTC)).total_seconds()) < CLOCK_SLACK_S


async def test_offline_tokyo_time_from_the_mounted_server_on_another_node(mesh: Mesh) -> None:
    answer = await _ask_until_the_tool_is_seen(mesh.c, TOKYO)
    assert answer["planner"] == "offline"
    [step] = answer["steps"]
    assert step["arguments"] == {"timezone": "Asia/Tokyo"}
    _assert_tokyo_now(answer["text"])


async def test_llm_tokyo_time_through_the_tool_use_loop(mesh: Mesh) -> None:
    async with FakeAnthropic(port=mesh.llm_port) as fake:
        fake.fallback = lambda body: (
            reply(tool_use_block("time_get_current_time", {"timezone": "Asia/Tokyo"}))
            if len(body["messages"]) == 1
            else echo_results(body)
        )
        answer = await _ask_until_the_tool_is_seen(mesh.b, TOKYO)
        assert answer["planner"] == "llm"
        # The scan's wording requests (no tools) may come between the ask's turns.
        first_turns = [r for r in fake.requests if "tools" in r and len(r["messages"]) == 1]
        offered = {t["name"] for t in first_turns[-1]["tools"]}
    assert "time_get_current_time" in offered
    assert "vault_read_secret" not in offered  # loopback callers are public
    _assert_tokyo_now(answer["text"])


async def test_llm_timeout_gives_the_offline_answer_with_a_note(mesh: Mesh) -> None:
    async with FakeAnthropic([Turn(hang_s=6.0)], port=mesh.llm_port):
        status, answer = await _post(mesh.b, "/api/ask", {"text": "echo hello"})
    assert status == 200
    assert answer["planner"] == "offline"
    assert "no answer within 3 s" in answer["note"]
    assert answer["steps"][0]["tool"] == "echo"


async def test_a_public_token_asking_for_a_restricted_tool_is_refused_naming_the_policy(
    mesh: Mesh,
) -> None:
    async def refused() -> dict[str, Any] | None:
        status, answer = await _post(
            mesh.c, "/api/ask", {"text": "read the vault secret please"}, PUBLIC_TOKEN
        )
        assert status == 200, answer
        return answer if "zone-order" in answer["text"] else None

    answer = await async_wait_for(refused, timeout_s=30, what="a refusal naming the policy")
    assert "vault.read_secret" in answer["text"] and "'public'" in answer["text"]
    assert answer["steps"] == []


async def test_plan_is_a_dry_run_and_bad_bodies_are_refused(mesh: Mesh) -> None:
    status, plan = await _post(mesh.c, "/api/plan", {"text": "echo hello world"})
    assert status == 200
    assert plan["planner"] == "offline"
    assert plan["steps"] == [{"tool": "echo", "arguments": {"text": "hello world"}}]
    assert 0 < plan["confidence"] <= 1
    for body in ({"text": ""}, {"text": "x" * 4097}, {"text": "hi", "zone": "x"}, ["hi"]):
        status, answer = await _post(mesh.c, "/api/plan", body)
        assert status == 400, body
        assert answer["field"] == "text"
    status, _ = await _post(mesh.c, "/api/plan", {"text": "hi"}, "not-a-token")
    assert status == 401


def test_vsmcp_ask_prints_the_answer_and_s4_is_running(mesh: Mesh) -> None:
    done = run_cli("ask", "echo planner via cli", "--url", mesh.c.url)
    assert done.returncode == 0, done.stderr
    assert "echo: planner via cli" in done.stdout
    dry = run_cli("ask", "--dry-run", "echo x", "--url", mesh.c.url)
    assert dry.returncode == 0 and "planner: offline" in dry.stdout
    s4 = mesh.c.get_json("/api/vsm")["s4"]
    assert s4["status"] == "running"
    assert s4["planner"]["requests"]["answer_offline"] >= 1


def test_the_scan_proposes_what_changed_on_the_mesh(mesh: Mesh) -> None:
    # vault.read_secret was added on A after C's first scan (its baseline).
    def appeared() -> dict[str, Any] | None:
        proposals = mesh.c.get_json("/api/vsm")["s4"]["scan"]["proposals"]
        return next(
            (
                p
                for p in proposals
                if (p["proposal"], p["subject"]) == ("tool_appeared", "vault.read_secret")
            ),
            None,
        )

    proposal = wait_for(appeared, timeout_s=30, what="a tool_appeared proposal")
    assert proposal["note_by"] == "template"
    assert "vault.read_secret appeared" in proposal["note"]
