"""System 3* audits on a real `vsmcpd`: a tool whose probe fails is quarantined, shown
in `/api/vsm`, raises pain and is written to the audit log; a tool whose probe passes
keeps running; units without a probe are listed as unaudited. Mounts: their tool list,
and a call of the probe's tool when it names one."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.integration.harness import REPO_ROOT, NodeProcess, counters
from tests.polling import wait_for

pytestmark = pytest.mark.integration

# Audits every 0.2–0.4 s, a probe failing after `timeout_s`, quarantine outlasting the
# test.
HEADER = """
[mesh]
preset = "local"
mdns = false
[tools]
entry_points = false
[vsm.audits]
min_interval_s = 0.2
max_interval_s = 0.4
timeout_s = {timeout_s}
quarantine_s = 600
peer_sample = 0
"""
# A passing probe on a loaded machine may be slow: only a hang should miss this.
CONFIG = (
    HEADER.format(timeout_s=10)
    + """
[[tools.plugins]]
name = "add"
target = "tests.integration.plugin_tools:add"
# add answers {"sum": ...}: a probe expecting "product" fails.
probe = { arguments = { a = 2, b = 3 }, expect = { required = ["product"] } }
[[tools.plugins]]
name = "gray_echo"
target = "tests.integration.plugin_tools:gray_echo"
[tools.plugins.probe]
arguments = { text = "probe" }
[tools.plugins.probe.expect]
type = "object"
required = ["echo"]
properties = { echo = { const = "probe" } }
"""
)


def _unit_state(node: NodeProcess, name: str) -> str | None:
    for unit in node.get_json("/api/vsm")["s1"]["units"]:
        if unit["unit"] == name:
            return str(unit["state"])
    return None


def _quarantined(
    tmp_path: Path, nodes: list[NodeProcess], config: str, unit: str, timeout_s: float
) -> NodeProcess:
    """A node started with `config`, once the audits quarantined `unit`."""
    path = tmp_path / "node.toml"
    path.write_text(config)
    node = NodeProcess(tmp_path / "a", "--config", str(path))
    nodes.append(node)
    node.start()
    wait_for(
        lambda: _unit_state(node, unit) == "quarantined",
        timeout_s=timeout_s,
        what=f"{unit} quarantined by a failed audit",
    )
    return node


def test_a_unit_whose_probe_fails_is_quarantined_and_audited(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    node = _quarantined(tmp_path, nodes, CONFIG, "plugin:add", timeout_s=20)
    audits = wait_for(
        lambda: (a := node.get_json("/api/vsm")["s3"]["audits"])["audited"]["gray_echo"] and a,
        timeout_s=20,
        what="gray_echo audited",
    )
    assert audits["audited"]["add"]["ok"] is False
    assert "product" in audits["audited"]["add"]["detail"]
    assert audits["audited"]["gray_echo"]["ok"] is True
    assert "builtin" in audits["unaudited"]
    assert "plugin:add" not in audits["unaudited"]
    assert _unit_state(node, "plugin:gray_echo") == "running"
    stats = counters(node, "vsmcp_s3_audits")
    assert stats["failed"] >= 1 and stats["quarantined"] == 1, stats
    assert counters(node, "vsmcp_events").get("audit", 0) >= 2
    # The pain (below the algedonic threshold) reaches System 3's aggregate.
    wait_for(
        lambda: node.get_json("/api/vsm")["s3"]["algedonic"]["aggregate"]["pain_total"] >= 1,
        timeout_s=10,
        what="the failed audit's pain aggregated by System 3",
    )

    node.stop()
    rows = [
        row[0]
        for row in sqlite3.connect(tmp_path / "a" / "vsmcp.db").execute(
            "SELECT data FROM audit_entries WHERE kind = 's3.audit'"
        )
    ]
    assert len(rows) == 1 and "add" in str(rows[0]), rows


MOUNT_SERVER = REPO_ROOT / "tests" / "node" / "tools" / "faulty_server.py"


def _mount_config(tmp_path: Path) -> str:
    mounts = "".join(
        f"""
[[tools.mounts]]
name = "{name}"
command = {json.dumps(sys.executable)}
args = [{json.dumps(str(MOUNT_SERVER))}]
env = {{ FAULTY_PID_FILE = {json.dumps(str(tmp_path / name))} }}
probe = {probe}
"""
        for name, probe in (
            # FastMCP's structuredContent for a str result: {"result": ...}
            (
                "good",
                '{ tool = "echo", arguments = { text = "x" }, expect = '
                '{ required = ["result"], properties = { result = { const = "x" } } } }',
            ),
            ("stuck", '{ tool = "hang" }'),
            ("listed", "{}"),
        )
    )
    # 1 s: the stuck mount's probe is shown failing with no answer within 1 s.
    return HEADER.format(timeout_s=1) + mounts


def test_mounts_are_audited_by_their_tool_list_and_probe_call(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    node = _quarantined(tmp_path, nodes, _mount_config(tmp_path), "mount:stuck", timeout_s=60)
    # Polled until both passed: a single slow audit of the good mount (1 s) is a failure
    # that does not quarantine it, and a later audit passes.
    audited = wait_for(
        lambda: (
            (a := node.get_json("/api/vsm")["s3"]["audits"]["audited"])["good.echo"]
            and a["good.echo"]["ok"]
            and a["mount:listed"]
            and a["mount:listed"]["ok"]
            and a
        ),
        timeout_s=60,
        what="the good mount's probe call and the listed mount audited",
    )
    assert audited["good.echo"]["ok"] is True
    assert audited["mount:listed"]["ok"] is True
    assert audited["stuck.hang"]["ok"] is False
    assert "no answer within 1 s" in audited["stuck.hang"]["detail"]
    assert _unit_state(node, "mount:good") == "running"
    assert _unit_state(node, "mount:listed") == "running"
