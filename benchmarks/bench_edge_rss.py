"""Resident memory of an idle node: default profile vs `--profile edge`.

    python benchmarks/bench_edge_rss.py

Starts real `vsmcpd --dev --no-mdns` processes one at a time, waits until each is ready
and then idle for `--settle` seconds, and reads VmRSS (and VmHWM, the peak) from
/proc. Variants: default profile, no tools (entry points off, as on an edge node);
edge profile, no tools; edge profile with the WAT example tool (imports wasmtime and
compiles one module); edge profile after one call of that tool (the worker thread and
the epoch clock exist).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import machine

from tests.integration.harness import REPO_ROOT, NodeProcess, call_tool

TOKEN = "bench-token-0123456789"
WASM = (
    f'[[tools.wasm]]\nmanifest = "{REPO_ROOT / "examples" / "wasm" / "echo.toml"}"\n'
    f'[[mcp.tokens]]\nname = "bench"\ntoken = "{TOKEN}"\nzone = "public"\n'
)
VARIANTS = {
    "default profile, no tools": ("default", "[tools]\nentry_points = false\n", False),
    "edge profile, no tools": ("edge", "", False),
    "edge profile, 1 WASM tool": ("edge", WASM, False),
    "edge profile, 1 WASM tool, called once": ("edge", WASM, True),
}


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _call_once(node: NodeProcess) -> None:
    reply = call_tool(node, TOKEN, "wasm.echo")
    assert reply["result"]["structuredContent"] == {"echo": {}}, reply


def measure(
    base: Path, name: str, profile: str, config: str, call: bool, settle: float
) -> tuple[int, int]:
    path = base / f"{name.replace(' ', '_').replace(',', '')}.toml"
    path.write_text(config)
    node = NodeProcess(base / path.stem, "--config", str(path), "--profile", profile, "--no-mdns")
    node.start()
    try:
        if call:
            _call_once(node)
        time.sleep(settle)  # idle: what stays resident, not what start-up touched
        return _status_kb(node.pid, "VmRSS"), _status_kb(node.pid, "VmHWM")
    finally:
        node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=3.0)
    args = parser.parse_args()
    results: dict[str, list[tuple[int, int]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for name, (profile, config, call) in VARIANTS.items():
                base = Path(tmp) / f"run{run}"
                base.mkdir(exist_ok=True)
                results[name].append(measure(base, name, profile, config, call, args.settle))
    print(f"machine: {machine()}; {args.runs} runs, {args.settle:g} s idle\n")
    print("| node | RSS (median) | RSS (min–max) | peak RSS (median) |\n|---|---|---|---|")
    for name, values in results.items():
        rss = [v[0] / 1024 for v in values]
        peak = [v[1] / 1024 for v in values]
        print(
            f"| {name} | {statistics.median(rss):.1f} MiB | {min(rss):.1f}–{max(rss):.1f} MiB "
            f"| {statistics.median(peak):.1f} MiB |"
        )


if __name__ == "__main__":
    main()
