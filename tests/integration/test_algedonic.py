"""The algedonic channel in a real `vsmcpd`.

- A strong signal posted to `POST /api/algedonic` is answered by System 5 (its
  configured `shed` rule) and the answer shows in `GET /api/vsm` while a weak signal
  posted *earlier* still waits in System 3's lane. Deterministic: S3 drains its lane
  every `vsm.s3_interval_s`, set here to an hour, so the weak signal is still queued
  whatever the machine's speed; the order is checked on the signals' sequence numbers.
- The shed rule really sheds: a call at the entry is refused with a JSON-RPC error and
  a `denial` event with limit `shed`, and the response is in the audit log.
- `vsm.signal` through the MCP SDK raises a signal (zone `restricted`); a bad POST gets
  400 naming the field; a caller below `vsm.signal_zone` gets 403.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client

from tests.integration.harness import NodeProcess, call_tool, counters
from tests.polling import wait_for
from vsmcp.node.mcp.protocol import OVERLOADED

pytestmark = pytest.mark.integration

OPS_TOKEN = "ops-token-0123456789abcdef"
PUBLIC_TOKEN = "public-token-0123456789abc"

CONFIG = f"""
[tools]
entry_points = false
[vsm]
algedonic_threshold = 0.7
s3_interval_s = 3600
[[vsm.responses]]
name = "shed-normal"
do = "shed"
priority = "normal"
duration_s = 600
[[mcp.tokens]]
name = "ops"
token = "{OPS_TOKEN}"
zone = "restricted"
[[mcp.tokens]]
name = "viewer"
token = "{PUBLIC_TOKEN}"
zone = "public"
"""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    config = tmp_path / "node.toml"
    config.write_text(CONFIG)
    process = NodeProcess(tmp_path / "data", "--config", str(config)).start()
    try:
        yield process
    finally:
        process.stop()


def _post(
    node: NodeProcess, body: bytes, token: str | None = OPS_TOKEN
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        node.url + "/api/algedonic", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return int(r.status), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), json.loads(e.read())


def _signal(node: NodeProcess, **fields: Any) -> tuple[int, dict[str, Any]]:
    return _post(node, json.dumps(fields).encode())


def test_strong_signal_reaches_s5_before_an_earlier_weak_one_is_processed(
    node: NodeProcess,
) -> None:
    assert call_tool(node, PUBLIC_TOKEN, "echo", {"text": "before"})["result"]["content"]

    status, weak = _signal(node, valence="pain", intensity=0.3, reason="slow disk")
    assert status == 202 and weak["lane"] == "s3"
    status, strong = _signal(node, valence="pain", intensity=0.9, reason="under attack")
    assert status == 202 and strong["lane"] == "s5"
    assert strong["seq"] > weak["seq"]

    def answered() -> dict[str, Any] | None:
        view = node.get_json("/api/vsm")
        active = view["s5"]["active"]
        return view if any(a["signal_seq"] == strong["seq"] for a in active) else None

    view = wait_for(answered, timeout_s=30, what="S5's shed response in /api/vsm")
    (response,) = view["s5"]["active"]
    assert response["rule"] == "shed-normal" and response["action"] == "shed"
    assert view["s5"]["shedding"] == "normal"
    handled = [s["seq"] for s in view["s5"]["recent_signals"]]
    assert handled == [strong["seq"]]
    # The weak signal, raised first, is still waiting for System 3.
    s3 = view["s3"]["algedonic"]
    assert s3["queued"] == 1 and s3["last_seq"] < weak["seq"]
    assert view["viability"]["inputs"]["balance"] < 0  # S5 felt the pain

    # The response has effect: calls at the entry are shed, with a clear error.
    refused = call_tool(node, PUBLIC_TOKEN, "echo", {"text": "during"})
    assert refused["error"]["code"] == OVERLOADED
    assert refused["error"]["data"]["reason"] == "shed"
    assert "System 5" in refused["error"]["message"]
    wait_for(
        lambda: counters(node, "vsmcp_events").get("s5_response", 0) >= 1,
        what="the s5_response event counted",
    )
    node.terminate()
    assert node.wait_exit(timeout_s=10) == 0
    with sqlite3.connect(node.data_dir / "vsmcp.db") as db:
        rows = db.execute(
            "SELECT data FROM audit_entries WHERE kind = 'vsm.response' ORDER BY seq"
        ).fetchall()
    entry = json.loads(rows[0][0])
    assert entry["rule"] == "shed-normal" and entry["outcome"] == "applied"
    assert entry["signal_seq"] == strong["seq"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "body"),
        (b"[1, 2]", "body"),
        (json.dumps({"valence": "meh", "intensity": 0.5, "reason": "x"}).encode(), "valence"),
        (json.dumps({"valence": "pain", "intensity": 1.5, "reason": "x"}).encode(), "intensity"),
        (json.dumps({"valence": "pain", "intensity": "hot", "reason": "x"}).encode(), "intensity"),
        (json.dumps({"valence": "pain", "intensity": 0.5}).encode(), "reason"),
        (json.dumps({"valence": "pain", "intensity": 0.5, "reason": "x" * 501}).encode(), "reason"),
        (
            json.dumps({"valence": "pain", "intensity": 0.5, "reason": "x", "colour": 1}).encode(),
            "colour",
        ),
    ],
)
def test_bad_post_gets_400_naming_the_field(node: NodeProcess, body: bytes, field: str) -> None:
    status, answer = _post(node, body)
    assert status == 400, answer
    assert answer["field"] == field
    assert node.get_json("/api/vsm")["s5"]["channel"]["signals"] == 0


def test_zone_below_signal_zone_is_refused(node: NodeProcess) -> None:
    good = json.dumps({"valence": "pleasure", "intensity": 0.1, "reason": "ok"}).encode()
    assert _post(node, good, token=PUBLIC_TOKEN)[0] == 403
    assert _post(node, good, token="not-a-token")[0] == 401
    # Loopback without a token has mcp.loopback_zone (public): below restricted.
    assert _post(node, good, token=None)[0] == 403
    assert node.get_json("/api/vsm")["s5"]["channel"]["signals"] == 0


async def test_vsm_signal_through_the_mcp_sdk(node: NodeProcess) -> None:
    headers = {"Authorization": f"Bearer {OPS_TOKEN}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(node.url + "/mcp", http_client=http)) as client,
    ):
        names = [t.name for t in (await client.list_tools()).tools]
        assert "vsm.signal" in names
        result = await client.call_tool(
            "vsm.signal", {"valence": "pleasure", "intensity": 0.2, "reason": "all good"}
        )
        assert not result.is_error
        assert result.structured_content == {"accepted": True, "lane": "s3", "seq": 1}
        status = await client.call_tool("vsm.status", {})
        data = status.structured_content
        assert data is not None
        assert data["node_id"] == node.node_id  # the status fields are kept
        assert set(data) >= {"s1", "s2", "s3", "s4", "s5", "viability"}
    view = node.get_json("/api/vsm")
    assert view["s5"]["channel"]["lanes"]["s3"]["accepted"] == 1
    assert view["s3"]["algedonic"]["queued"] == 1  # S3 drains hourly here


def test_vsm_signal_is_not_offered_below_its_zone(node: NodeProcess) -> None:
    answer = call_tool(
        node, PUBLIC_TOKEN, "vsm.signal", {"valence": "pain", "intensity": 0.9, "reason": "x"}
    )
    assert "error" in answer
    assert node.get_json("/api/vsm")["s5"]["channel"]["signals"] == 0
