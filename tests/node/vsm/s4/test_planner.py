"""The planner over a real local catalog: offline (no key), and with the official
`anthropic` client pointed at a local fake of the Messages API (tests/fakes)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from tests.fakes.anthropic_api import (
    API_KEY,
    FakeAnthropic,
    Turn,
    error,
    overloaded,
    reply,
    text_block,
    tool_results,
    tool_use_block,
)
from tests.polling import async_wait_until
from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.tools.functions import FunctionProvider, PluginTool
from vsmcp.node.tools.model import CallContext
from vsmcp.node.tools.registry import LocalCatalog
from vsmcp.node.tools.supervisor import Supervisor, UnitPolicy
from vsmcp.node.vsm.s4.config import LlmConfig, S4Config
from vsmcp.node.vsm.s4.planner import MAX_REQUEST_CHARS, Planner
from vsmcp.node.vsm.s4.scan import EnvironmentScan, ScanInputs
from vsmcp.node.vsm.stream import EventStream

KEY_ENV = "VSMCP_TEST_ANTHROPIC_KEY"
PUBLIC = CallContext(caller_id="t", caller_zone="public", origin="test:public")
ZONES = ("public", "ops", "restricted")
ADD_SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
SECRET_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "description": "the secret's name"}},
    "required": ["name"],
}


class Tools:
    """math.add (public) and vault.read_secret (restricted), counting their calls."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.catalog = LocalCatalog(Supervisor())
        self.catalog.add(FunctionProvider("test", self._load), UnitPolicy())

    def _load(self) -> list[PluginTool]:
        def add(arguments: Mapping[str, Any]) -> dict[str, int]:
            self.calls["math.add"] += 1
            return {"sum": arguments["a"] + arguments["b"]}

        def secret(arguments: Mapping[str, Any]) -> str:
            self.calls["vault.read_secret"] += 1
            return "hunter2"

        return [
            PluginTool(
                name="math.add",
                fn=add,
                description="Add two integers and return their sum",
                input_schema=ADD_SCHEMA,
            ),
            PluginTool(
                name="vault.read_secret",
                fn=secret,
                description="Read a secret from the vault",
                input_schema=SECRET_SCHEMA,
                zone="restricted",
            ),
        ]


@pytest.fixture
async def tools() -> AsyncIterator[Tools]:
    t = Tools()
    async with t.catalog:
        yield t


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeAnthropic]:
    monkeypatch.setenv(KEY_ENV, API_KEY)
    async with FakeAnthropic() as server:
        yield server


def llm_planner(tools: Tools, fake: FakeAnthropic, **overrides: Any) -> Planner:
    config = LlmConfig(api_key_env=KEY_ENV, base_url=fake.base_url, **overrides)
    planner = Planner(tools.catalog, ZONES, llm=config)
    fake.planners.append(planner)
    return planner


# -- offline ----------------------------------------------------------------------------


async def test_offline_plans_runs_and_summarises(tools: Tools) -> None:
    planner = Planner(tools.catalog, ZONES)
    plan = await planner.plan("add 2 and 3", PUBLIC)
    assert plan.planner == "offline"
    assert [s.to_json() for s in plan.steps] == [
        {"tool": "math.add", "arguments": {"a": 2, "b": 3}}
    ]
    assert tools.calls["math.add"] == 0  # a dry run
    answer = await planner.answer("add 2 and 3", PUBLIC)
    assert answer.planner == "offline"
    assert "sum: 5" in answer.text
    assert [s.outcome for s in answer.steps] == ["ok"]
    assert tools.calls["math.add"] == 1


async def test_a_public_requester_asking_for_a_restricted_tool_is_refused_naming_the_policy(
    tools: Tools,
) -> None:
    planner = Planner(tools.catalog, ZONES)
    answer = await planner.answer("read the secret db-password from the vault", PUBLIC)
    assert "zone-order" in answer.text
    assert "'public'" in answer.text and "vault.read_secret" in answer.text
    assert answer.steps == []
    assert tools.calls["vault.read_secret"] == 0


async def test_offline_says_when_it_is_unsure_and_runs_nothing(tools: Tools) -> None:
    planner = Planner(tools.catalog, ZONES)
    answer = await planner.answer("tell me a joke about ducks", PUBLIC)
    assert "not sure" in answer.text
    assert answer.steps == [] and sum(tools.calls.values()) == 0


async def test_a_request_over_the_limit_is_refused_whole(tools: Tools) -> None:
    planner = Planner(tools.catalog, ZONES)
    answer = await planner.answer("add 2 and 3 " * (MAX_REQUEST_CHARS // 4), PUBLIC)
    assert f"at most {MAX_REQUEST_CHARS}" in answer.text
    assert sum(tools.calls.values()) == 0


# -- with the language model -------------------------------------------------------------


async def test_llm_tool_use_loop_runs_the_call_and_answers_with_its_result(
    tools: Tools, fake: FakeAnthropic
) -> None:
    fake.script = [reply(text_block("Adding."), tool_use_block("math_add", {"a": 2, "b": 40}))]
    answer = await llm_planner(tools, fake).answer("what is 2 plus 40?", PUBLIC)
    assert answer.planner == "llm"
    assert [s.outcome for s in answer.steps] == ["ok"]
    assert "sum: 42" in answer.text
    first, second = fake.requests
    # Only what the requester may call is offered, under API-safe names, with schemas.
    assert [t["name"] for t in first["tools"]] == ["math_add"]
    assert first["tools"][0]["input_schema"] == ADD_SCHEMA
    [result] = tool_results(second)
    assert "sum: 42" in result["content"] and result["is_error"] is False


async def test_llm_nonexistent_tool_and_schema_failing_arguments_are_not_run_but_reported(
    tools: Tools, fake: FakeAnthropic
) -> None:
    fake.script = [
        reply(
            tool_use_block("math_subtract", {"a": 1, "b": 2}),
            tool_use_block("math_add", {"a": "two", "b": 2}),
        )
    ]
    answer = await llm_planner(tools, fake).answer("subtract or add something", PUBLIC)
    assert [(s.tool, s.outcome) for s in answer.steps] == [
        ("math_subtract", "not_run"),
        ("math.add", "not_run"),
    ]
    assert "Unknown tool" in answer.steps[0].error
    assert "'two' is not of type 'integer'" in answer.steps[1].error
    assert tools.calls["math.add"] == 0
    errors = tool_results(fake.requests[1])
    assert [r["is_error"] for r in errors] == [True, True]
    assert "Unknown tool" in errors[0]["content"]


@pytest.mark.parametrize("name", ["vault_read_secret", "vault.read_secret"])
async def test_llm_proposing_a_tool_the_zone_may_not_call_is_refused_before_it_runs(
    tools: Tools, fake: FakeAnthropic, name: str
) -> None:
    fake.script = [reply(tool_use_block(name, {"name": "db"}))]
    answer = await llm_planner(tools, fake).answer("the db secret please", PUBLIC)
    [step] = answer.steps
    assert step.outcome == "not_run" and "zone-order" in step.error
    assert tools.calls["vault.read_secret"] == 0


# Only the hang is timed out: an error answer gets the default timeout, so that a slow
# answer on a loaded machine is not taken for a hang (the note would name the timeout).
@pytest.mark.parametrize(
    ("turn", "timeout_s", "why"),
    [
        (Turn(hang_s=2.0), 0.5, "no answer within 0.5 s"),
        (overloaded(), None, "HTTP 529"),
        (error(500, "api_error", "Internal server error"), None, "HTTP 500"),
    ],
)
async def test_llm_failure_falls_back_to_the_offline_answer_with_a_note(
    tools: Tools, fake: FakeAnthropic, turn: Turn, timeout_s: float | None, why: str
) -> None:
    fake.script = [turn]
    overrides = {} if timeout_s is None else {"timeout_s": timeout_s}
    answer = await llm_planner(tools, fake, **overrides).answer("add 2 and 3", PUBLIC)
    assert answer.planner == "offline"
    assert "sum: 5" in answer.text
    assert why in answer.note and "offline planner" in answer.text


async def test_a_wrong_api_key_falls_back_too(
    tools: Tools, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    answer = await llm_planner(tools, fake).answer("add 2 and 3", PUBLIC)
    assert answer.planner == "offline" and "HTTP 401" in answer.note


async def test_llm_loop_is_bounded_by_max_steps(tools: Tools, fake: FakeAnthropic) -> None:
    fake.fallback = lambda body: reply(tool_use_block("math_add", {"a": 1, "b": 1}))
    answer = await llm_planner(tools, fake, max_steps=3).answer("keep adding", PUBLIC)
    assert len(fake.requests) == 3
    assert tools.calls["math.add"] == 3
    assert "llm.max_steps = 3" in answer.text


async def test_llm_dry_run_lists_valid_calls_and_notes_the_rest(
    tools: Tools, fake: FakeAnthropic
) -> None:
    fake.script = [reply(tool_use_block("math_add", {"a": 1, "b": 2}), tool_use_block("nope", {}))]
    plan = await llm_planner(tools, fake).plan("add 1 and 2", PUBLIC)
    assert plan.planner == "llm"
    assert [s.to_json() for s in plan.steps] == [
        {"tool": "math.add", "arguments": {"a": 1, "b": 2}}
    ]
    assert plan.confidence == 0.5
    assert "nope" in plan.note and tools.calls["math.add"] == 0


async def test_scan_notes_are_explained_by_the_model_when_one_is_configured(
    tools: Tools, fake: FakeAnthropic
) -> None:
    planner = llm_planner(tools, fake)
    fake.script = [reply(text_block("Echo now runs on one node only: add a second."))]
    providers = {"echo": frozenset({"b", "c"})}
    inputs = ScanInputs(
        peers=dict,
        tools=lambda: providers,
        kpis=lambda: (0.0, None),
        latency_objective_ms=100.0,
        bridges=dict,
    )
    async with EventStream() as events:
        scan = EnvironmentScan(
            inputs, S4Config(), events, LoopSupervisor(), explainer=planner.explain
        )
        scan.scan()
        providers = {"echo": frozenset({"b"})}
        scan.scan()
        await scan.explain_pending()
    [proposal] = scan.proposals
    assert proposal["note_by"] == "llm"
    assert proposal["note"] == "Echo now runs on one node only: add a second."
    assert "has one provider left" in fake.requests[0]["messages"][0]["content"]
    assert "tools" not in fake.requests[0]


async def test_scan_notes_keep_their_template_when_the_model_fails(
    tools: Tools, fake: FakeAnthropic
) -> None:
    planner = llm_planner(tools, fake)
    fake.script = [overloaded()]
    assert await planner.explain("tool x has one provider left") is None
    assert planner.stats["llm_failed"] == 1


async def test_llm_failing_after_calls_ran_reports_them_and_runs_nothing_again(
    tools: Tools, fake: FakeAnthropic
) -> None:
    fake.script = [reply(tool_use_block("math_add", {"a": 2, "b": 2})), overloaded()]
    answer = await llm_planner(tools, fake).answer("add 2 and 2", PUBLIC)
    assert answer.planner == "llm"
    assert tools.calls["math.add"] == 1  # not again by the offline planner
    assert "sum: 4" in answer.text
    assert "failed after the calls ran (HTTP 529" in answer.text


async def test_requests_at_once_are_bounded(tools: Tools, fake: FakeAnthropic) -> None:
    # The first request holds the slot for 1 s: the timeout is well past it (and past
    # the second's wait for the slot) however loaded the machine.
    config = LlmConfig(api_key_env=KEY_ENV, base_url=fake.base_url, timeout_s=30.0)
    planner = Planner(tools.catalog, ZONES, S4Config(max_concurrent=1), config)
    fake.planners.append(planner)
    fake.script = [Turn(hang_s=1.0), reply(text_block("second"))]
    first = asyncio.create_task(planner.answer("add 2 and 3", PUBLIC))
    await async_wait_until(lambda: len(fake.requests) == 1, what="the first request at the model")
    assert planner.busy
    second = asyncio.create_task(planner.answer("add 2 and 3", PUBLIC))
    assert (await first).planner == "llm"
    assert (await second).text == "second"  # it waited for the slot
    assert not planner.busy
