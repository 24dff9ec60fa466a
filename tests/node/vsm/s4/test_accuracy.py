"""The offline planner's accuracy on the labelled set stays at the floor it reached
(benchmarks/bench_planner.py; docs/benchmarks.md "Planner")."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[4] / "benchmarks" / "bench_planner.py"
# Reached: 97.2 % / 97.2 % (104 of 107). The floors leave room for one or two requests.
TOOL_FLOOR = 0.95
ARGUMENTS_FLOOR = 0.95


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_planner", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_planner"] = module
    spec.loader.exec_module(module)
    return module


def test_the_labelled_set_has_at_least_100_requests_over_20_tools() -> None:
    import tomllib

    data = tomllib.loads(_bench().CASES.read_text())
    assert len(data["cases"]) >= 100
    assert len({c["tool"] for c in data["cases"] if c["tool"]}) >= 20
    assert sum(1 for c in data["cases"] if not c["tool"]) >= 5  # unsure cases too


def test_offline_accuracy_on_the_labelled_set_is_at_its_floor() -> None:
    result = _bench().evaluate()
    assert result.tool_accuracy >= TOOL_FLOOR, result.misses
    assert result.argument_accuracy >= ARGUMENTS_FLOOR, result.misses
