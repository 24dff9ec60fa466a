from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from vsmcp.node.app.parent_watch import parent_pid_from


def test_the_parent_pid_comes_from_the_environment_or_not_at_all() -> None:
    assert parent_pid_from({"VSMCP_PARENT_PID": "1234"}) == 1234
    assert parent_pid_from({}) is None
    assert parent_pid_from({"VSMCP_PARENT_PID": "1"}) is None  # init: no parent to watch
    assert parent_pid_from({"VSMCP_PARENT_PID": "-5"}) is None


def test_a_process_told_of_another_parent_exits_at_once() -> None:
    code = textwrap.dedent(
        """
        import time
        from vsmcp.node.app.parent_watch import watch_parent
        watch_parent(999_999_999)
        time.sleep(30)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=os.environ.copy(), timeout=20, capture_output=True
    )
    assert done.returncode == 0, done.stderr
