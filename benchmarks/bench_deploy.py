"""Wall time of site.yml on one host (a throwaway Debian root): first run, then the
second, no-change run. Needs root, debootstrap and network for the first root build.

    python benchmarks/bench_deploy.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import machine

from tests.deploy.play import Play, recap
from tests.deploy.rootfs import cached_root, copy_root, wheelhouse_of_checkout


def timed_run(play: Play) -> tuple[float, dict[str, int]]:
    started = time.perf_counter()
    result = play.run()
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stdout[-4000:]
    return elapsed, recap(result)


def main() -> None:
    print(machine())
    base = cached_root()
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        house = Path(tmp) / "wheelhouse"
        wheelhouse_of_checkout(house)
        root = copy_root(base, Path(tmp) / "root")
        play = Play(root, house)
        for label in ("first run (install)", "second run (no change)"):
            elapsed, counts = timed_run(play)
            print(f"{label}: {elapsed:.1f} s wall, changed={counts['changed']} ok={counts['ok']}")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
