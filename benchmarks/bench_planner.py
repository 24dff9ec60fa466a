"""The offline planner's accuracy on the labelled set (tests/node/vsm/s4/planner_cases.toml).

Right tool: the planner chose the labelled tool, or said it was unsure when the label is
"" (nothing fits). Right tool and arguments: also every labelled argument equal (strings
compared without case). The requester is in the top zone (every tool is visible), so
this measures matching, not policy. Run: `PYTHONPATH=$PWD python benchmarks/bench_planner.py`
(`-v` lists the misses).
"""

from __future__ import annotations

import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vsmcp.node.vsm.s4.offline import OfflinePlanner, labelled_specs

CASES = Path(__file__).resolve().parents[1] / "tests/node/vsm/s4/planner_cases.toml"


@dataclass
class Result:
    cases: int
    right_tool: int
    right_arguments: int
    misses: list[str]
    ms_per_request: float

    @property
    def tool_accuracy(self) -> float:
        return self.right_tool / self.cases

    @property
    def argument_accuracy(self) -> float:
        return self.right_arguments / self.cases


def _same(expected: Any, got: Any) -> bool:
    if isinstance(expected, str) and isinstance(got, str):
        return expected.lower() == got.lower()
    if isinstance(expected, bool) or isinstance(got, bool):
        return expected is got
    if isinstance(expected, int | float) and isinstance(got, int | float):
        return float(expected) == float(got)
    return bool(expected == got)


def evaluate(path: Path = CASES) -> Result:
    data = tomllib.loads(path.read_text())
    planner = OfflinePlanner(labelled_specs(data["tools"]))
    right_tool = right_args = 0
    misses = []
    started = time.perf_counter()
    for case in data["cases"]:
        plan = planner.plan(case["text"], planner.specs)
        tool = plan.steps[0].tool if plan.steps else ""
        args = plan.steps[0].arguments if plan.steps else {}
        if tool != case["tool"]:
            misses.append(
                f"tool {case['text']!r}: {tool or '(unsure)'} != {case['tool'] or '(unsure)'}"
            )
            continue
        right_tool += 1
        expected = case.get("arguments", {})
        if all(_same(v, args.get(k)) for k, v in expected.items()):
            right_args += 1
        else:
            misses.append(f"args {case['text']!r}: {args} != {expected}")
    elapsed = time.perf_counter() - started
    n = len(data["cases"])
    return Result(n, right_tool, right_args, misses, elapsed / n * 1000)


def main() -> None:
    result = evaluate()
    if "-v" in sys.argv:
        print("\n".join(result.misses))
    print(
        f"{result.cases} requests over {len(tomllib.loads(CASES.read_text())['tools'])} tools: "
        f"right tool {result.tool_accuracy:.1%}, right tool and arguments "
        f"{result.argument_accuracy:.1%}, {result.ms_per_request:.2f} ms per request "
        "(first includes building the index and the city table)"
    )


if __name__ == "__main__":
    main()
