"""The node's JSON API against its OpenAPI document: a property-based fuzz (schemathesis)
of a real `vsmcpd` — no 5xx other than documented ones, and every answer (status code,
content type, body, 4xx included) as the document says.

Bounded and deterministic: a few examples per operation, derandomized. The node has the
debug API on (its operations answer 200, not only 403) and a token of the signal zone
(`/api/algedonic` answers 202, not only 401/403); spawns stop at the recursion guard
(`recursion.max_children = 0`: 409), so the fuzz starts no child processes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.integration.harness import NodeProcess
from vsmcp.node.http.openapi import STREAM_PATH, openapi_document

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 25
TOKEN = "fuzz-token-0123456789abcdef"
CONFIG = f"""
[node]
debug_api = true
[recursion]
# Spawns are fuzzed up to the recursion guard's refusal (409), not into processes.
max_children = 0
[[mcp.tokens]]
name = "fuzz"
token = "{TOKEN}"
zone = "restricted"
"""

# The status page's stream is an answer that never ends: its tests are in
# tests/integration/test_status_page.py.
schema = schemathesis.openapi.from_dict(json.loads(openapi_document())).exclude(path=STREAM_PATH)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    base: Path = tmp_path_factory.mktemp("fuzz")
    config = base / "vsmcp.toml"
    config.write_text(CONFIG)
    process = NodeProcess(base / "node", "--config", str(config), "--no-mdns").start()
    yield process
    process.stop()


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_matches_the_document(case: schemathesis.Case, node: NodeProcess) -> None:
    case.call_and_validate(base_url=node.url, headers={"Authorization": f"Bearer {TOKEN}"})
