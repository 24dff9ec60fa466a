"""The policy agent against real `vsmcpd` processes (the status page test's 3-node
mesh): a block made by the immune system on node A (a public caller probing a restricted
tool) reaches B; B serves the agent (`/api/policy-agent.wasm`) and its signed policy set
(`/api/policy-agent/policies`); the agent decides a batch of requests the same in
headless Chromium (Debian's, driven by playwright-core) and in wasmtime as the Python
reference, and as B itself does: the blocked caller's real call at B is refused naming
the same policy."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.integration.harness import NodeProcess, call_tool
from tests.integration.test_status_page import (
    ATTACKER,
    DENIALS,
    DRIVER_DIR,
    PAGE_WAIT_S,
    ZONE_DENIED,
    Browser,
    three,  # noqa: F401 (the fixture: A, B, C with secret.echo in zone restricted on A)
)
from tests.polling import wait_for
from tests.skips import require_browser, require_module
from vsmcp.node.policyagent.policy_set import verify_policy_set
from vsmcp.node.policyagent.reference import PolicySet

pytestmark = pytest.mark.integration

POLICY_BLOCKED = -32007
BLOCK = "origin:http:attacker"
# In the page: fetch the module and the signed set from the node, run the batch.
BROWSER_AGENT = """
(async (batch) => {
  const [module, signed] = await Promise.all([
    WebAssembly.compileStreaming(fetch('/api/policy-agent.wasm')),
    fetch('/api/policy-agent/policies').then((r) => r.json()),
  ]);
  const x = (await WebAssembly.instantiate(module, {})).exports;
  const call = (fn, text) => {
    const bytes = new TextEncoder().encode(text);
    const ptr = x.alloc(bytes.length) >>> 0;
    new Uint8Array(x.memory.buffer, ptr, bytes.length).set(bytes);
    const status = x[fn](ptr, bytes.length);
    x.dealloc(ptr, bytes.length);
    const out = new Uint8Array(x.memory.buffer, x.output_ptr() >>> 0, x.output_len() >>> 0);
    const answer = JSON.parse(new TextDecoder().decode(out));
    if (status !== 0) throw new Error(answer.error);
    return answer;
  };
  call('load_policies', signed.set);
  return { signed, decisions: call('evaluate', JSON.stringify(batch)).decisions };
})(BATCH)
"""


def _batch(a: NodeProcess) -> dict[str, Any]:
    request = {"origin": "http:friend", "tool": "secret.echo", "caller_zone": "public"}
    return {
        "now_ms": int(time.time() * 1000),
        "requests": [
            {**request, "origin": "http:attacker", "tool_zone": "restricted"},
            {**request, "tool_zone": "restricted"},
            {**request, "tool": "echo", "tool_zone": "public"},
            {
                **request,
                "origin": f"mesh:{a.node_id}",
                "entry_origin": "http:attacker",
                "entry_node": a.node_id,
                "caller_zone": "restricted",
                "tool_zone": "restricted",
            },
            {**request, "origin": "stdio", "client_addr": "127.0.0.1", "tool_zone": "public"},
        ],
    }


def _signed_set(node: NodeProcess) -> dict[str, Any]:
    status, body, headers = node.get("/api/policy-agent/policies")
    assert status == 200, body
    assert headers.get("Cache-Control") == "no-store"  # a snapshot: never from a cache
    return verify_policy_set(json.loads(body), node.node_id, now_ms=int(time.time() * 1000))


EXPECTED = [  # (by, reason) of each request of `_batch`
    ("mitigation", "caller"),
    ("zone", "below_tool_zone"),
    (None, None),
    ("mitigation", "caller"),
    (None, None),
]


def _blocked(a: NodeProcess, b: NodeProcess) -> None:
    """A's immune system blocks the attacker (zone denials); the block reaches B's set."""
    if any(x["policy"] == BLOCK for x in _signed_set(b)["blocks"]):
        return
    for _ in range(DENIALS):
        reply = call_tool(a, ATTACKER, "secret.echo")
        assert reply["error"]["code"] in (ZONE_DENIED, POLICY_BLOCKED), reply
    wait_for(
        lambda: any(x["policy"] == BLOCK for x in _signed_set(b)["blocks"]),
        timeout_s=PAGE_WAIT_S,
        what="B's policy set holding A's block",
    )


def test_the_agent_in_wasmtime_decides_as_the_reference_and_the_node(
    three: list[NodeProcess],  # noqa: F811
) -> None:
    require_module("wasmtime")
    from vsmcp.node.policyagent.agent import WasmPolicyAgent

    a, b, _ = three
    _blocked(a, b)
    refused = call_tool(b, ATTACKER, "secret.echo")
    assert refused["error"]["code"] == POLICY_BLOCKED, refused
    assert refused["error"]["data"]["policy"] == BLOCK

    status, module, headers = b.get("/api/policy-agent.wasm")
    assert status == 200 and headers["Content-Type"] == "application/wasm"
    agent = WasmPolicyAgent(module)
    doc = _signed_set(b)
    agent.load_policies(doc)
    batch = _batch(a)
    decisions = agent.evaluate(batch["requests"], batch["now_ms"])
    assert decisions == PolicySet(doc).evaluate(batch)["decisions"]
    assert [(d["by"], d["reason"]) for d in decisions] == EXPECTED
    assert decisions[0]["policy"] == BLOCK


def test_the_agent_in_chromium_decides_as_the_reference(
    three: list[NodeProcess],  # noqa: F811
) -> None:
    require_browser(str(DRIVER_DIR))
    a, b, _ = three
    _blocked(a, b)
    batch = _batch(a)
    # On B's page, fetching the module and the signed set from B itself.
    browser = Browser()
    try:
        browser.run("goto", url=b.url + "/")
        answer = browser.run("eval", js=BROWSER_AGENT.replace("BATCH", json.dumps(batch)))
        assert browser.run("errors") == []
    finally:
        browser.close()
    page_set = verify_policy_set(answer["signed"], b.node_id)
    assert any(x["policy"] == BLOCK for x in page_set["blocks"])
    assert answer["decisions"] == PolicySet(page_set).evaluate(batch)["decisions"]
    assert [(d["by"], d["reason"]) for d in answer["decisions"]] == EXPECTED
    assert answer["decisions"][0]["policy"] == BLOCK
