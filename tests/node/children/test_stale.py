from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.polling import wait_for
from vsmcp.node.children.process import PID_FILE_NAME
from vsmcp.node.children.stale import clean_up_stale

SLEEPER = "import time; time.sleep(60)"


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def _sleeper(argv_tail: list[str], started: list[subprocess.Popen[bytes]]) -> int:
    # argv like a child's: `python -c ... vsmcp.node <data dir>` (own session, as children)
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER, *argv_tail], start_new_session=True)
    started.append(proc)
    # Until it has exec'd, /proc shows the forking test's own command line.
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    wait_for(lambda: SLEEPER.encode() in cmdline.read_bytes(), what="the sleeper's exec")
    return proc.pid


def test_a_child_of_a_previous_life_is_killed_and_its_pid_file_removed(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    data_dir = tmp_path / "children" / "a"
    data_dir.mkdir(parents=True)
    pid = _sleeper(["vsmcp.node", str(data_dir)], sleepers)
    (data_dir / PID_FILE_NAME).write_text(f"{pid}\n")

    assert clean_up_stale(tmp_path / "children") == [pid]
    assert sleepers[0].wait(timeout=5) == -signal.SIGKILL
    assert not (data_dir / PID_FILE_NAME).exists()


def test_a_reused_pid_of_another_process_is_left_alone(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    data_dir = tmp_path / "children" / "a"
    data_dir.mkdir(parents=True)
    pid = _sleeper(["vsmcp.node", str(tmp_path / "elsewhere")], sleepers)
    (data_dir / PID_FILE_NAME).write_text(f"{pid}\n")

    assert clean_up_stale(tmp_path / "children") == []
    assert sleepers[0].poll() is None
    assert not (data_dir / PID_FILE_NAME).exists()
