"""Child VSMs: spawn → child running → its tools visible in the parent's registry, and
the resident memory each child adds.

    python benchmarks/bench_children.py [--runs 5]

One `vsmcpd --dev --no-mdns` parent (entry points off); each run spawns a child with
`POST /api/children` (as `vsmcp spawn` does) and times three moments from the POST:
the child's state is `running` (its runtime.json written, i.e. every part started), the
parent's registry holds the child's tools (`/api/children` lists them: mesh-visible),
then stops it. RSS of each child is read from /proc once it is running and idle
(`--settle` s). Target (issue 12): spawn → tools mesh-visible ≤ 2 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import machine

from tests.integration.harness import NodeProcess

POLL_S = 0.01


def _request(node: NodeProcess, method: str, path: str, body: Any = None) -> Any:
    token = (node.data_dir / "stdio.token").read_text().strip()
    request = urllib.request.Request(
        node.url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


def _child(node: NodeProcess, name: str) -> dict[str, Any]:
    children = node.get_json("/api/children")["children"]
    found: dict[str, Any] = next((c for c in children if c["name"] == name), {})
    return found


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise KeyError("VmRSS")


def one_spawn(parent: NodeProcess, name: str, settle: float) -> tuple[float, float, int]:
    start = time.perf_counter()
    _request(parent, "POST", "/api/children", {"name": name})
    running_at = visible_at = 0.0
    deadline = start + 60
    while time.perf_counter() < deadline:
        child = _child(parent, name)
        now = time.perf_counter() - start
        if not running_at and child.get("state") == "running":
            running_at = now
        if running_at and "echo" in child.get("tools", []):
            visible_at = now
            break
        time.sleep(POLL_S)
    if not visible_at:
        raise SystemExit(f"child {name} not visible within 60 s: {_child(parent, name)}")
    time.sleep(settle)
    rss = _rss_kb(int(_child(parent, name)["pid"]))
    _request(parent, "DELETE", f"/api/children/{name}")
    return running_at, visible_at, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--settle", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "parent.toml"
        config.write_text('[mesh]\npreset = "local"\n[tools]\nentry_points = false\n')
        parent = NodeProcess(Path(tmp) / "p", "--config", str(config), "--no-mdns")
        parent.start()
        try:
            results = [one_spawn(parent, f"b{i}", args.settle) for i in range(args.runs)]
        finally:
            parent.stop()
    running = [r[0] for r in results]
    visible = [r[1] for r in results]
    rss = [r[2] / 1024 for r in results]
    print(f"machine: {machine()}; {args.runs} spawns, one at a time\n")
    print("| what | median | min–max | target |\n|---|---|---|---|")
    print(
        f"| spawn → child running | {statistics.median(running):.2f} s "
        f"| {min(running):.2f}–{max(running):.2f} s | |"
    )
    print(
        f"| spawn → its tools in the parent's registry | {statistics.median(visible):.2f} s "
        f"| {min(visible):.2f}–{max(visible):.2f} s | ≤ 2 s |"
    )
    gap = [v - r for r, v in zip(running, visible, strict=True)]
    print(
        f"| child running → its tools in the parent's registry | {statistics.median(gap):.2f} s "
        f"| {min(gap):.2f}–{max(gap):.2f} s | |"
    )
    print(
        f"| RSS per idle child | {statistics.median(rss):.1f} MiB "
        f"| {min(rss):.1f}–{max(rss):.1f} MiB | |"
    )


if __name__ == "__main__":
    main()
