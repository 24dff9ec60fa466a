"""`vsmcpd`, writing at exit to $VSMCP_MODULES_OUT (JSON) the names of every module it
imported, how many CA certificates aiohttp's default verifying client context holds, and
which file zeroconf's `_dns` module was loaded from (its source or its extension).

Started by tests/integration/test_idle_node.py in place of `python -m vsmcp.node`: the
list at exit holds everything the node imported while it ran (a superset of idle).
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys


def _aiohttp_default_ca_certs() -> int | None:
    connector = sys.modules.get("aiohttp.connector")
    if connector is None:
        return None
    # aiohttp's own (private) default context: what its client verifies with.
    stats: dict[str, int] = connector._SSL_CONTEXT_VERIFIED.cert_store_stats()
    return stats["x509_ca"]


def _write_modules() -> None:
    with open(os.environ["VSMCP_MODULES_OUT"], "w") as out:
        json.dump(
            {
                "modules": sorted(sys.modules),
                "aiohttp_default_ca_certs": _aiohttp_default_ca_certs(),
                "zeroconf_dns_file": getattr(sys.modules.get("zeroconf._dns"), "__file__", None),
            },
            out,
        )


atexit.register(_write_modules)
sys.argv = ["vsmcpd", *sys.argv[1:]]
runpy.run_module("vsmcp.node", run_name="__main__", alter_sys=True)
