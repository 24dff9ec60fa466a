"""Run every benchmark in this folder, one after another, and report which failed.

    python benchmarks/run_all.py            # full runs (tens of minutes)
    python benchmarks/run_all.py --quick    # short runs (a few minutes)
    python benchmarks/run_all.py --only envelope,audit

Each benchmark prints its own table and says where its results are written down
(docs/benchmarks.md). They run sequentially: the machine has 2 cores, and benchmarks
that share them measure each other.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs")
    parser.add_argument("--only", help="comma-separated names, e.g. envelope,audit")
    args = parser.parse_args()
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        wanted = {f"bench_{name.strip()}.py" for name in args.only.split(",")}
        scripts = [s for s in scripts if s.name in wanted]
        missing = wanted - {s.name for s in scripts}
        if missing:
            print(f"no such benchmark: {', '.join(sorted(missing))}", file=sys.stderr)
            return 2
    failed: list[str] = []
    for script in scripts:
        command = [sys.executable, str(script), *(["--quick"] if args.quick else [])]
        print(f"=== {script.name}", flush=True)
        started = time.monotonic()
        result = subprocess.run(command, cwd=HERE.parent, check=False)
        print(f"=== {script.name}: exit {result.returncode} in {time.monotonic() - started:.0f} s")
        if result.returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
