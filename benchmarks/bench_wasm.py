"""WASM tools: host overhead per call against a Python plugin tool, and how soon after its
deadline a runaway module is stopped.

    python benchmarks/bench_wasm.py [--quick]

- overhead: sequential calls through `LocalCatalog.call_tool` (zone check, schema, the
  unit's slot, the provider) of the same echo, as a Python plugin (a sync function, run in
  a worker thread like every sync plugin) and as the WAT example (`examples/wasm/echo.wat`:
  reads stdin, writes stdout). The difference is what the WASM host adds per call: a
  fresh store, WASI context and instance (from the engine's pooling allocator), the
  module's stdio served by the host (and,
  for a call past the event loop's 1 ms budget, the hop to a worker the plugin pays
  too). Two breakdowns beside it: a module that does nothing (`_start` returns: store +
  WASI + instance, no I/O), and the raw wasmtime-py floor on this machine (store +
  instantiate + call, no WASI context, in this thread). Each is timed in wall time and
  in CPU time of the whole process (all threads: less sensitive to other jobs' load).
- stop: a module that loops forever, with a 50 ms limit, run directly in this thread
  (`run_call`); the time from its deadline to the return of the call (epoch tick 1 ms).

Variants alternate in rounds so each sees the same background load; best and median.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import wasmtime
from _machine import machine

from vsmcp.edge.errors import WasmTimeLimit
from vsmcp.edge.manifest import load_manifest
from vsmcp.edge.runtime import WasmRuntime
from vsmcp.edge.sandbox import run_call
from vsmcp.node.tools.config import PluginToolConfig, ToolsConfig, WasmToolConfig
from vsmcp.node.tools.model import CallContext
from vsmcp.node.tools.registry import build_local_catalog

ROOT = Path(__file__).resolve().parent.parent
CTX = CallContext(caller_id="bench", caller_zone="public", origin="bench")
ARGS = {"text": "hello", "n": 42}
NOP = '(module (memory (export "memory") 1) (func (export "_start")))'
LOOP_LIMIT_S = 0.05


def py_echo(arguments: dict[str, Any]) -> dict[str, Any]:
    return {"echo": arguments}


async def _time_calls(call: Callable[[], Awaitable[Any]], n: int) -> tuple[float, float]:
    """(wall, CPU) µs per call over `n` sequential calls."""
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        await call()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return wall / n * 1e6, cpu / n * 1e6


async def overhead(n: int, rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    with tempfile.TemporaryDirectory() as tmp:
        nop = Path(tmp) / "nop.wat"
        nop.write_text(NOP)
        (Path(tmp) / "nop.toml").write_text('name = "nop"\n')
        tools = ToolsConfig(
            entry_points=False,
            plugins=[PluginToolConfig(name="py.echo", target="bench_wasm:py_echo")],
            wasm=[
                WasmToolConfig(manifest=str(ROOT / "examples" / "wasm" / "echo.toml")),
                WasmToolConfig(manifest=str(Path(tmp) / "nop.toml")),
            ],
        )
        sys.modules.setdefault("bench_wasm", sys.modules[__name__])
        results: dict[str, list[float]] = {"python": [], "wasm": [], "wasm nop": []}
        cpu: dict[str, list[float]] = {label: [] for label in results}
        async with build_local_catalog(tools) as catalog:
            await catalog.supervisor.wait_running()
            names = {"python": "py.echo", "wasm": "wasm.echo", "wasm nop": "nop"}
            for name in names.values():  # warm up
                await _time_calls(lambda name=name: catalog.call_tool(name, ARGS, CTX), 200)
            for _ in range(rounds):
                for label, name in names.items():
                    call = lambda name=name: catalog.call_tool(name, ARGS, CTX)  # noqa: E731
                    wall, used = await _time_calls(call, n)
                    results[label].append(wall)
                    cpu[label].append(used)
        return results, cpu


def raw_floor(n: int, rounds: int) -> list[float]:
    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, '(module (func (export "_start")))')
    pre = wasmtime.Linker(engine).instantiate_pre(module)
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(n):
            store = wasmtime.Store(engine)
            start = pre.instantiate(store).exports(store)["_start"]
            assert isinstance(start, wasmtime.Func)
            start(store)
        out.append((time.perf_counter() - started) / n * 1e6)
    return out


def stop_latency(runs: int) -> list[float]:
    """ms from the deadline to the runaway call's return."""
    runtime = WasmRuntime()
    with tempfile.TemporaryDirectory() as tmp:
        manifest_path = Path(tmp) / "loop.toml"
        module = ROOT / "tests" / "edge" / "modules" / "loop.wat"
        manifest_path.write_text(f'name = "loop"\nmodule = "{module}"\n')
        tool = runtime.load(load_manifest(manifest_path))
    late = []
    for _ in range(runs):
        started = time.perf_counter()
        try:
            run_call(
                manifest=tool.manifest,
                pre=tool.pre,
                engine=runtime.engine,
                clock=runtime.clock,
                stdin=b"{}",
                timeout_s=LOOP_LIMIT_S,
            )
        except WasmTimeLimit:
            late.append((time.perf_counter() - started - LOOP_LIMIT_S) * 1000)
        else:
            raise AssertionError("the loop ended on its own")
    runtime.clock.close()
    return late


def _row(label: str, values: list[float], unit: str) -> str:
    return (
        f"| {label} | {min(values):.1f} {unit} | {statistics.median(values):.1f} {unit} "
        f"| {max(values):.1f} {unit} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short run (a few seconds)")
    args = parser.parse_args()
    n, rounds, stops = (500, 3, 10) if args.quick else (3000, 7, 40)
    results, cpu = asyncio.run(overhead(n, rounds))
    floor = raw_floor(n, rounds)
    late = stop_latency(stops)
    version = f"wasmtime-py {importlib.metadata.version('wasmtime')}"
    print(f"machine: {machine(version)}")
    print(f"{n} calls x {rounds} rounds; {stops} runaway stops\n")
    print("| per call | best | median | worst |\n|---|---|---|---|")
    for clock, table in (("wall", results), ("CPU", cpu)):
        for label, values in table.items():
            print(_row(f"{clock}: catalog call, {label}", values, "µs"))
        extra = [w - p for w, p in zip(table["wasm"], table["python"], strict=True)]
        extra_nop = [w - p for w, p in zip(table["wasm nop"], table["python"], strict=True)]
        print(_row(f"{clock}: WASM echo minus Python echo (host overhead)", extra, "µs"))
        print(_row(f"{clock}: WASM nop minus Python echo", extra_nop, "µs"))
        # Rounds differ in load: the difference of the two variants' bests and medians.
        wasm, python = table["wasm"], table["python"]
        print(
            f"| {clock}: WASM echo minus Python echo, best − best / median − median "
            f"| {min(wasm) - min(python):.1f} µs "
            f"| {statistics.median(wasm) - statistics.median(python):.1f} µs | |"
        )
    print(_row("raw wasmtime-py: store + instantiate + call", floor, "µs"))
    print(_row(f"runaway: deadline ({LOOP_LIMIT_S * 1000:.0f} ms) to stop", late, "ms"))


if __name__ == "__main__":
    main()
