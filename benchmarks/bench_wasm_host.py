"""The WASM host's own cost, in this thread: one call of a module (`run_call`: store,
WASI context, instance, `_start`, the host's stdio, store closed), and one host stdio
call (`fd_read`, `fd_write`), each in CPU time of this thread (`time.thread_time()`:
what other jobs on a shared machine take is not counted).

    python benchmarks/bench_wasm_host.py [--quick] [--calls 2000] [--rounds 7] [--tree DIR]

- run_call: the echo example (`examples/wasm/echo.wat`: two `fd_read`, one `fd_write`)
  and a module that does nothing (`_start` returns), `--calls` calls per round.
- fd_read / fd_write: a module calling it 1,000 times in a loop (an `fd_read` at end of
  input, a 5-byte `fd_write`), less the same module with the call left out, per call.

`--tree DIR` imports vsmcp from another checkout (e.g. a worktree of an older commit),
to set the code before a change beside the code after it on the same machine.
Best and median of `--rounds` rounds, in µs.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import inspect
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOP = '(module (memory (export "memory") 1) (func (export "_start")))'
HOST_CALLS = 1000
STDIO_RUNS = 20
# A loop of @COUNT@ iterations; @CALL@ is the host call made in each (or nothing).
# Memory: 0..8 an iovec of 5 bytes at 16 ("hello"), 8..12 the byte count.
LOOP = """(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello")
  (func (export "_start") (local $i i32)
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 5))
    (loop $l
      @CALL@
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const @COUNT@))))))"""
CALLS = {
    "none": "",
    "fd_read": "(drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))",
    "fd_write": "(drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))",
}


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="run_call calls per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tree", type=Path, default=ROOT, help="import vsmcp from here")
    parser.add_argument("--quick", action="store_true", help="200 calls, 3 rounds")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.rounds = 200, 3
    return args


class Host:
    """The runtime of the tree under test, and `run_call` as that tree has it."""

    def __init__(self, tmp: Path) -> None:
        from vsmcp.edge.runtime import WasmRuntime

        self.runtime = WasmRuntime()
        self.tmp = tmp

    def load(self, name: str, wat: str, output_bytes: int = 65536) -> Any:
        from vsmcp.edge.manifest import load_manifest

        module = self.tmp / f"{name}.wat"
        module.write_text(wat)
        manifest = self.tmp / f"{name}.toml"
        manifest.write_text(
            f'name = "{name}"\nmodule = "{module}"\n[limits]\noutput_bytes = {output_bytes}\n'
        )
        return self.runtime.load(load_manifest(manifest))

    def call(self, tool: Any, stdin: bytes) -> Any:
        from vsmcp.edge.sandbox import run_call

        kwargs: dict[str, Any] = {}
        if "host_stdio" in inspect.signature(run_call).parameters:
            kwargs["host_stdio"] = getattr(tool, "host_stdio", True)
        return run_call(
            manifest=tool.manifest,
            pre=tool.pre,
            engine=self.runtime.engine,
            clock=self.runtime.clock,
            stdin=stdin,
            timeout_s=5.0,
            **kwargs,
        )


def _thread_us(host: Host, tool: Any, stdin: bytes, n: int) -> float:
    """CPU µs of this thread per call, over `n` calls."""
    started = time.thread_time()
    for _ in range(n):
        host.call(tool, stdin)
    return (time.thread_time() - started) / n * 1e6


def run_calls(host: Host, calls: int, rounds: int) -> dict[str, list[float]]:
    from vsmcp.edge.manifest import load_manifest

    tools = {
        "echo": host.runtime.load(load_manifest(ROOT / "examples" / "wasm" / "echo.toml")),
        "nop": host.load("nop", NOP),
    }
    stdin = b'{"text":"hello","n":42}'
    for tool in tools.values():
        _thread_us(host, tool, stdin, 200)  # warm up
    out: dict[str, list[float]] = {name: [] for name in tools}
    for _ in range(rounds):
        for name, tool in tools.items():
            out[name].append(_thread_us(host, tool, stdin, calls))
    return out


def stdio_calls(host: Host, rounds: int) -> dict[str, list[float]]:
    tools = {
        name: host.load(
            f"loop_{name}",
            LOOP.replace("@CALL@", call).replace("@COUNT@", str(HOST_CALLS)),
            output_bytes=5 * HOST_CALLS,
        )
        for name, call in CALLS.items()
    }
    for tool in tools.values():
        _thread_us(host, tool, b"", 5)  # warm up
    out: dict[str, list[float]] = {"fd_read": [], "fd_write": []}
    for _ in range(rounds):
        per_run = {name: _thread_us(host, tool, b"", STDIO_RUNS) for name, tool in tools.items()}
        for name in out:
            out[name].append((per_run[name] - per_run["none"]) / HOST_CALLS)
    return out


def _row(label: str, values: list[float]) -> str:
    return f"{label:<34} best {min(values):6.1f}  median {statistics.median(values):6.1f} µs"


def main() -> None:
    args = _args()
    sys.path.insert(0, str(args.tree.resolve()))
    sys.path.insert(1, str(ROOT / "benchmarks"))
    from _machine import machine

    import vsmcp

    with tempfile.TemporaryDirectory() as tmp:
        host = Host(Path(tmp))
        host.runtime.acquire()
        try:
            calls = run_calls(host, args.calls, args.rounds)
            stdio = stdio_calls(host, args.rounds)
        finally:
            host.runtime.release()
    print(
        machine(f"wasmtime-py {importlib.metadata.version('wasmtime')}"),
        f"vsmcp from {Path(vsmcp.__file__).resolve().parent.parent}",
        f"pooled instances: {getattr(host.runtime, 'pooled', 'unknown')}",
        sep="\n",
    )
    print(f"thread CPU, {args.rounds} rounds:")
    for name, values in calls.items():
        print(_row(f"run_call {name} ({args.calls} calls)", values))
    for name, values in stdio.items():
        print(_row(f"{name} (per host call)", values))


if __name__ == "__main__":
    main()
