"""WASM tools as units of the local catalog: listing, results, tool errors, stderr in the
log, hostile modules stopped and counted, and quarantine after repeated faults."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.edge.conftest import EXAMPLES, MODULES, slots_held, write_manifest
from tests.skips import require_module
from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.tools.config import (
    EdgeConfig,
    SupervisionConfig,
    ToolsConfig,
    WasmToolConfig,
)
from vsmcp.node.tools.errors import ToolConfigError, ToolQuarantined, WasmRuntimeBusy
from vsmcp.node.tools.model import CallContext
from vsmcp.node.tools.registry import LocalCatalog, build_local_catalog
from vsmcp.node.tools.supervisor import UnitState
from vsmcp.node.tools.wasm import WasmProvider
from vsmcp.node.vsm.audits import Auditor
from vsmcp.node.vsm.audits_config import AuditsConfig

PUBLIC = CallContext(caller_id="t", caller_zone="public", origin="test:public")
FAULTS_TO_QUARANTINE = 2


def wasm_tools(tmp_path: Path) -> ToolsConfig:
    manifests = [EXAMPLES / "echo.toml"]
    for module in ("loop", "fail"):
        manifests.append(
            write_manifest(tmp_path, module, MODULES / f"{module}.wat", limits="timeout_ms = 200")
        )
    return ToolsConfig(
        entry_points=False,
        wasm=[WasmToolConfig(manifest=str(m)) for m in manifests],
        supervision=SupervisionConfig(crash_loop_failures=FAULTS_TO_QUARANTINE),
    )


@pytest.fixture
async def catalog(tmp_path: Path) -> AsyncIterator[LocalCatalog]:
    require_module("wasmtime")
    cat = build_local_catalog(wasm_tools(tmp_path), wasm_cache_dir=tmp_path / "cache")
    async with cat:
        await cat.supervisor.wait_running()
        yield cat


def stops(catalog: LocalCatalog) -> dict[str, int]:
    total: dict[str, int] = {}
    for unit in catalog.supervisor.units.values():
        if isinstance(unit.provider, WasmProvider):
            for limit, n in unit.provider.stops.items():
                total[limit] = total.get(limit, 0) + n
    return total


async def test_wasm_tools_are_listed_as_wasm_provider_tools(catalog: LocalCatalog) -> None:
    specs = {s.name: s for s in catalog.list_tools(PUBLIC)}
    assert {"wasm.echo", "loop", "fail"} <= set(specs)
    echo = specs["wasm.echo"].to_mcp()
    assert echo["_meta"] == {"vsmcp/zone": "public", "vsmcp/provider": "wasm"}
    assert "echo" in echo["description"]


async def test_a_json_object_on_stdout_is_text_and_structured_content(
    catalog: LocalCatalog,
) -> None:
    result = await catalog.call_tool("wasm.echo", {"x": "é"}, PUBLIC)
    assert result["isError"] is False
    assert json.loads(result["content"][0]["text"]) == {"echo": {"x": "é"}}
    assert result["structuredContent"] == {"echo": {"x": "é"}}


async def test_a_non_zero_exit_is_a_tool_error_and_stderr_goes_to_the_log_escaped(
    catalog: LocalCatalog, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="vsmcp.node.tools.wasm"):
        result = await catalog.call_tool("fail", {}, PUBLIC)
    assert result["isError"] is True
    assert result["content"][0]["text"] == (
        'Tool \'fail\' exited with code 3: {"error":"bad input"}'
    )
    logged = [r.getMessage() for r in caplog.records]
    assert "wasm fail stderr: bad input" in logged
    assert "wasm fail stderr: \\x1b[31mred" in logged  # the escape sequence made visible
    assert stops(catalog) == {}  # an exit is the tool's answer, not a fault


async def test_a_runaway_is_stopped_counted_and_quarantined_while_others_answer(
    catalog: LocalCatalog,
) -> None:
    for n in range(FAULTS_TO_QUARANTINE):
        result = await catalog.call_tool("loop", {}, PUBLIC)
        assert result["isError"] is True
        assert "time limit of 200 ms" in result["content"][0]["text"]
        assert stops(catalog) == {"time": n + 1}
        answer = await catalog.call_tool("wasm.echo", {"n": n}, PUBLIC)
        assert answer["structuredContent"] == {"echo": {"n": n}}
    with pytest.raises(ToolQuarantined, match="time limit"):
        await catalog.call_tool("loop", {}, PUBLIC)
    assert stops(catalog) == {"time": FAULTS_TO_QUARANTINE}  # refused: not run again
    answer = await catalog.call_tool("wasm.echo", {}, PUBLIC)
    assert answer["isError"] is False


async def test_a_call_refused_for_want_of_instance_slots_is_overloaded_not_a_fault(
    catalog: LocalCatalog,
) -> None:
    from vsmcp.edge.engine import pool_slots

    unit = catalog.supervisor.units["wasm:wasm.echo"]
    assert isinstance(unit.provider, WasmProvider)
    # Slots held as by other tools' runaway calls running to their deadlines.
    with slots_held(unit.provider.runtime.engine, pool_slots(EdgeConfig().threads)):
        for _ in range(FAULTS_TO_QUARANTINE + 1):
            with pytest.raises(WasmRuntimeBusy, match=r"busy .*retry later") as refused:
                await catalog.call_tool("wasm.echo", {}, PUBLIC)
            assert refused.value.data["reason"] == "overloaded"
            assert refused.value.data["retry_after_s"] > 0
    assert stops(catalog) == {}
    assert unit.state is UnitState.RUNNING  # not counted towards its quarantine
    answer = await catalog.call_tool("wasm.echo", {"n": 1}, PUBLIC)
    assert answer["structuredContent"] == {"echo": {"n": 1}}


def test_a_manifest_granting_more_than_the_config_allows_is_a_config_error(
    tmp_path: Path,
) -> None:
    require_module("wasmtime")
    manifest = write_manifest(
        tmp_path, "clocky", MODULES / "clock.wat", extra="[grants]\nclock = true"
    )
    tools = ToolsConfig(entry_points=False, wasm=[WasmToolConfig(manifest=str(manifest))])
    with pytest.raises(ToolConfigError, match=r"tools\.wasm\[0\]\.manifest.*edge\.allow_clock"):
        build_local_catalog(tools)
    build_local_catalog(tools, edge=EdgeConfig(allow_clock=True))


def test_a_catalog_without_wasm_tools_never_imports_wasmtime() -> None:
    code = (
        "import sys\n"
        "from vsmcp.node.app.node import Node\n"
        "from vsmcp.node.tools.config import ToolsConfig\n"
        "from vsmcp.node.tools.registry import build_local_catalog\n"
        "build_local_catalog(ToolsConfig(entry_points=False))\n"
        "print('wasmtime' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


async def test_a_wasm_tool_declares_its_probe_in_its_manifest_and_is_audited(
    tmp_path: Path,
) -> None:
    """System 3* audits WASM units by their manifest's `[probe]`: a passing probe keeps
    the unit, failures in a row quarantine it, a unit without one is unaudited."""
    require_module("wasmtime")
    probe = '[probe]\narguments = { text = "probe" }\nexpect = { required = ["echo"] }'
    manifests = [
        write_manifest(tmp_path, "echoed", EXAMPLES / "echo.wat", extra=probe),
        write_manifest(tmp_path, "failing", MODULES / "fail.wat", extra=probe),
        write_manifest(tmp_path, "plain", EXAMPLES / "echo.wat"),
    ]
    tools = ToolsConfig(
        entry_points=False, wasm=[WasmToolConfig(manifest=str(m)) for m in manifests]
    )
    async with build_local_catalog(tools, wasm_cache_dir=tmp_path / "cache") as cat:
        await cat.supervisor.wait_running()
        auditor = Auditor(AuditsConfig(failures_to_quarantine=2), LoopSupervisor(), zone="public")
        auditor.bind(cat.supervisor, {})  # no probe in the node's config: the manifests'
        assert set(auditor.probes) == {"echoed", "failing"}
        assert await auditor.audit_tool("echoed") is True
        assert await auditor.audit_tool("failing") is False
        assert cat.supervisor.units["wasm:failing"].state is UnitState.RUNNING  # one: not yet
        assert await auditor.audit_tool("failing") is False
        assert cat.supervisor.units["wasm:failing"].state is UnitState.QUARANTINED
        assert cat.supervisor.units["wasm:echoed"].state is UnitState.RUNNING
        view = auditor.view()
        assert view["unaudited"] == ["builtin", "wasm:plain"]
        assert view["audited"]["echoed"]["ok"] is True
        assert view["audited"]["failing"]["ok"] is False
        assert view["audited"]["failing"]["detail"] == "the probe's result is an error"
