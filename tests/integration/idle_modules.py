"""`vsmcpd`, writing the names of every module it imported to $VSMCP_MODULES_OUT at exit.

Started by tests/integration/test_idle_node.py in place of `python -m vsmcp.node`: the
list at exit holds everything the node imported while it ran (a superset of idle).
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys


def _write_modules() -> None:
    with open(os.environ["VSMCP_MODULES_OUT"], "w") as out:
        json.dump(sorted(sys.modules), out)


atexit.register(_write_modules)
sys.argv = ["vsmcpd", *sys.argv[1:]]
runpy.run_module("vsmcp.node", run_name="__main__", alter_sys=True)
