"""node/client_tls.py in a fresh interpreter (aiohttp must not be imported yet): aiohttp's
default contexts are built without their CA certificates, `SSLContext` is left as it was,
and `load_deferred_cas` fills those same contexts, once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from tests.integration.harness import REPO_ROOT

SCRIPT = """
import json, ssl
from vsmcp.node import client_tls
client_tls.import_aiohttp_deferring_cas()
import aiohttp.connector as c
seen = {}
seen["deferred"] = client_tls.cas_deferred()
seen["before"] = [x.cert_store_stats()["x509_ca"]
                  for x in (c._SSL_CONTEXT_VERIFIED, c._SSL_CONTEXT_UNVERIFIED)]
seen["class_restored"] = "set_default_verify_paths" not in vars(ssl.SSLContext)
seen["new_context"] = ssl.create_default_context().cert_store_stats()["x509_ca"]
client_tls.load_deferred_cas()
client_tls.load_deferred_cas()
seen["after"] = [x.cert_store_stats()["x509_ca"]
                 for x in (c._SSL_CONTEXT_VERIFIED, c._SSL_CONTEXT_UNVERIFIED)]
seen["deferred_after"] = client_tls.cas_deferred()
print(json.dumps(seen))
"""


def _run(script: str) -> dict[str, Any]:
    """`script` in a fresh interpreter (aiohttp not imported yet); what it printed."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    seen: dict[str, Any] = json.loads(done.stdout)
    return seen


def test_aiohttp_contexts_get_their_cas_only_when_asked() -> None:
    seen = _run(SCRIPT)
    assert seen["deferred"] is True
    assert seen["before"] == [0, 0]
    assert seen["class_restored"] is True
    assert seen["new_context"] > 0  # contexts made after the import read the CAs as usual
    assert seen["after"] == [seen["new_context"]] * 2
    assert seen["deferred_after"] is False


# Another thread makes a context while aiohttp is being imported (an import hook stands
# in for a thread that happens to run then): it gets its CAs at once, not deferred.
THREAD_SCRIPT = """
import json, ssl, sys, threading
from vsmcp.node import client_tls

seen = {}

class DuringImport:
    def find_spec(self, name, path=None, target=None):
        if name == "aiohttp.connector" and "other" not in seen:
            def other():
                seen["other"] = ssl.create_default_context().cert_store_stats()["x509_ca"]
            t = threading.Thread(target=other)
            t.start()
            t.join()
        return None

sys.meta_path.insert(0, DuringImport())
client_tls.import_aiohttp_deferring_cas()
seen["deferred"] = client_tls.cas_deferred()
print(json.dumps(seen))
"""


def test_a_context_another_thread_makes_during_the_import_gets_its_cas() -> None:
    seen = _run(THREAD_SCRIPT)
    assert seen["deferred"] is True  # aiohttp's own contexts still wait
    assert seen["other"] > 0
