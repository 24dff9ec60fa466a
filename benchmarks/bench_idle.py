"""An idle node as a new user starts it (`vsmcpd --dev`): start to healthy, and memory.

    python benchmarks/bench_idle.py [--runs 5] [--settle 3] [--quick]
    python benchmarks/bench_idle.py --by-import [--runs 2]

Starts real `vsmcpd --dev` processes one at a time on a free HTTP port and measures:
start to healthy (from spawning the process to the first `GET /healthz` answering 200),
start to ready (to the `vsmcpd ready` line on stdout), the CPU time the process used until
healthy (user + system: what start costs, whatever else the machine runs), then,
`--settle` seconds after ready, from /proc: VmRSS, its anonymous and file-backed parts,
and PSS (the file-backed pages, shared libraries, counted once per process sharing them)
and private memory.

Variants: as a new user (mDNS on), with python-zeroconf's compiled extensions instead of
its Python sources (`mesh.mdns_compiled`), without mDNS (`--no-mdns`, as the other
benchmarks), and with the standard asyncio event loop instead of uvloop (`node.event_loop`).

`--by-import`: where the memory of `vsmcpd --dev` (mDNS on) goes, the RSS each package
adds while the daemon imports it (benchmarks/_import_rss.py; our own modules by
subpackage), means of `--runs` runs, beside the RSS `--settle` seconds after ready.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import machine

from tests.integration.harness import REPO_ROOT, mesh_name_for

IMPORT_RSS = Path(__file__).with_name("_import_rss.py")
START_TIMEOUT_S = 30.0
POLL_S = 0.005
VARIANTS: dict[str, tuple[list[str], str]] = {
    "vsmcpd --dev (mDNS on)": ([], ""),
    "mDNS on, zeroconf compiled": ([], "mesh.mdns_compiled = true\n"),
    "vsmcpd --dev --no-mdns": (["--no-mdns"], ""),
    "--no-mdns, asyncio loop": (["--no-mdns"], '[node]\nevent_loop = "asyncio"\n'),
}
FIELDS = ("start_to_healthy_s", "cpu_to_healthy_s", "start_to_ready_s")
FIELDS += ("rss", "anon", "file", "pss", "private")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _kb(path: str, field: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of the process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _memory_kb(pid: int) -> dict[str, int]:
    status, rollup = f"/proc/{pid}/status", f"/proc/{pid}/smaps_rollup"
    return {
        "rss": _kb(status, "VmRSS"),
        "anon": _kb(status, "RssAnon"),
        "file": _kb(status, "RssFile"),
        "pss": _kb(rollup, "Pss"),
        "private": _kb(rollup, "Private_Dirty") + _kb(rollup, "Private_Clean"),
    }


def measure(
    base: Path,
    args: list[str],
    config: str,
    settle: float,
    launcher: tuple[str, ...] = ("-m", "vsmcp.node"),
    env_extra: dict[str, str] | None = None,
) -> dict[str, float]:
    base.mkdir(parents=True)
    port = _free_port()
    cmd = [sys.executable, *launcher, "--dev", "--data-dir", str(base / "data")]
    cmd += ["--http-port", str(port), "--mesh-port", "0", *args]
    # Each node in a mesh of its own (mDNS would find the others on this host), named in a
    # config file rather than by VSMCP_MESH_NAME: a new user sets no VSMCP_ variable, and a
    # node given one builds the table of every key's variable names (node/app/config_env.py).
    (base / "vsmcp.toml").write_text(f"mesh.name = {json.dumps(mesh_name_for(base))}\n" + config)
    cmd += ["--config", str(base / "vsmcp.toml")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VSMCP_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(env_extra or {})
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO_ROOT, env=env
    )
    try:
        deadline = started + START_TIMEOUT_S
        while not _healthy(port):
            if time.perf_counter() > deadline or proc.poll() is not None:
                raise RuntimeError(f"vsmcpd did not become healthy: {cmd}")
            time.sleep(POLL_S)
        healthy = time.perf_counter() - started
        cpu = _cpu_s(proc.pid)
        assert proc.stdout is not None
        while not proc.stdout.readline().startswith(b"vsmcpd ready"):
            if proc.poll() is not None:
                raise RuntimeError("vsmcpd exited before ready")
        ready = time.perf_counter() - started
        time.sleep(settle)  # idle: what stays resident, not what start-up touched
        memory = _memory_kb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    return {
        "start_to_healthy_s": healthy,
        "cpu_to_healthy_s": cpu,
        "start_to_ready_s": ready,
        **memory,
    }


def _package(module: str) -> str:
    """`aiohttp.web` -> `aiohttp`; ours by subpackage: `vsmcp.node.routing.catalog` ->
    `vsmcp.node.routing`."""
    parts = module.split(".")
    return ".".join(parts[:3] if parts[0] == "vsmcp" else parts[:1])


def by_import(runs: int, settle: float) -> None:
    added: dict[str, float] = {}
    rss: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs):
            out = Path(tmp) / f"imports{run}.json"
            env = {"VSMCP_IMPORT_RSS_OUT": str(out)}
            base = Path(tmp) / f"run{run}"
            rss.append(measure(base, [], "", settle, (str(IMPORT_RSS),), env)["rss"] * 1024)
            for module, size in json.loads(out.read_text()).items():
                added[_package(module)] = added.get(_package(module), 0) + size / runs
    mib = 2**20
    print(f"machine: {machine()}; {runs} runs, `vsmcpd --dev` (mDNS on); means\n")
    print(f"RSS {settle:g} s after ready: {statistics.mean(rss) / mib:.1f} MiB")
    ours = sum(size for package, size in added.items() if package.startswith("vsmcp"))
    print(f"imports: {sum(added.values()) / mib:.1f} MiB, of which ours {ours / mib:.1f} MiB\n")
    print("| package | RSS added at import |\n|---|---|")
    for package, size in sorted(added.items(), key=lambda item: -item[1])[:40]:
        print(f"| {package} | {size / mib:.2f} MiB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="one run (run_all.py --quick)")
    parser.add_argument("--by-import", action="store_true", help="RSS by imported package")
    args = parser.parse_args()
    if args.quick:
        args.runs = 1
    if args.by_import:
        by_import(args.runs, args.settle)
        return
    results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for i, (name, (flags, config)) in enumerate(VARIANTS.items()):
                base = Path(tmp) / f"run{run}-{i}"
                results[name].append(measure(base, flags, config, args.settle))
    print(f"machine: {machine()}; {args.runs} runs, {args.settle:g} s idle; medians\n")
    print(
        "| node | start to healthy | CPU to healthy | start to ready "
        "| RSS | anon | file | PSS | private |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    for name, runs in results.items():
        med = {f: statistics.median(r[f] for r in runs) for f in FIELDS}
        mib = [f"{med[f] / 1024:.1f} MiB" for f in ("rss", "anon", "file", "pss", "private")]
        print(
            f"| {name} | {med['start_to_healthy_s']:.2f} s | {med['cpu_to_healthy_s']:.2f} s | "
            f"{med['start_to_ready_s']:.2f} s | " + " | ".join(mib) + " |"
        )


if __name__ == "__main__":
    main()
