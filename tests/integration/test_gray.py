"""Gray failures caught by callers, on real `vsmcpd` processes: two nodes provide the
same plugin tool; on one the tool starts to hang while its process and heartbeats stay
alive. The entry node (a third) marks it degraded from its own calls' outcomes, routes
around it with no failed call after the switch, probes it, and brings it back when the
hang ends. A provider that is slow but within the objective is never degraded."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import NodeProcess, call_tool, counters, wait_mesh_states
from tests.integration.plugin_tools import GRAY_FLAG_ENV
from tests.polling import wait_for

pytestmark = pytest.mark.integration

TOKEN = "gray-token-0123456789"
OBJECTIVE_S = 1.0
# gray_solo's objective: "slow but healthy" calls take a third of it, with room for a
# loaded machine's scheduling delays (two answers past it in a row would degrade it).
SOLO_OBJECTIVE_S = 2.5
PROVIDER_CONFIG = """
[mesh]
preset = "local"
[tools]
entry_points = false
[vsm.audits]
enabled = false
[[tools.plugins]]
name = "gray_echo"
target = "tests.integration.plugin_tools:gray_echo"
probe = { arguments = { text = "probe" }, expect = { required = ["echo"] } }
"""
SOLO_PLUGIN = """
[[tools.plugins]]
name = "gray_solo"
target = "tests.integration.plugin_tools:gray_echo"
"""
ENTRY_CONFIG = f"""
[mesh]
preset = "local"
[tools]
entry_points = false
timeout_s = 4
[vsm.audits]
enabled = false
[vsm.gray]
objective_s = {OBJECTIVE_S}
probe_interval_s = 0.5
objectives = {{ gray_solo = {SOLO_OBJECTIVE_S} }}
[[mcp.tokens]]
name = "pub"
token = "{TOKEN}"
zone = "public"
"""


def _start(base: Path, nodes: list[NodeProcess], name: str, config: str) -> NodeProcess:
    path = base / f"{name}.toml"
    path.write_text(config)
    node = NodeProcess(
        base / name, "--config", str(path), env={GRAY_FLAG_ENV: str(base / f"{name}.flag")}
    )
    nodes.append(node)
    return node.start(wait=False)


def _degraded(entry: NodeProcess, tool: str) -> dict[str, str | None]:
    return {
        t["provider"]: t.get("degraded")
        for t in entry.get_json("/api/tools")["tools"]
        if t["name"] == tool
    }


class Caller:
    """Threads calling `tool` at the entry node; each call: (start, end, pid or None)."""

    def __init__(self, entry: NodeProcess, tool: str, threads: int) -> None:
        self.entry = entry
        self.tool = tool
        self.calls: list[tuple[float, float, int | None, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            reply = call_tool(self.entry, TOKEN, self.tool, {"text": "hi"})
            pid = _pid(reply)
            self.calls.append((start, time.monotonic(), pid, "" if pid else json.dumps(reply)))

    def __enter__(self) -> Caller:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)

    def served_by(self, pid: int, since: float) -> int:
        return sum(1 for s, _, p, _ in self.calls if s >= since and p == pid)


def _pid(reply: dict[str, Any]) -> int | None:
    result = reply.get("result")
    if not isinstance(result, dict) or result.get("isError"):
        return None
    structured = result.get("structuredContent")
    if not isinstance(structured, dict):
        structured = json.loads(result["content"][0]["text"])
    return int(structured["pid"])


def test_a_hung_provider_is_routed_around_and_comes_back(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    a = _start(tmp_path, nodes, "a", PROVIDER_CONFIG + SOLO_PLUGIN)
    b = _start(tmp_path, nodes, "b", PROVIDER_CONFIG)
    entry = _start(tmp_path, nodes, "entry", ENTRY_CONFIG)
    group = [a, b, entry]
    for node in group:
        node.wait_ready()
    wait_mesh_states(group, {n.node_id: "alive" for n in group})
    wait_for(
        lambda: (
            set(_degraded(entry, "gray_echo")) == {a.node_id, b.node_id}
            and _degraded(entry, "gray_solo")
        ),
        timeout_s=30,
        what="gray_echo offered by a and b, gray_solo by a, at the entry node",
    )
    pids = {a.pid: a, b.pid: b}

    # Slow but within the objective: the only provider of gray_solo keeps its traffic.
    (tmp_path / "a.flag").write_text(f"slow:{SOLO_OBJECTIVE_S / 3}")
    with Caller(entry, "gray_solo", threads=2) as solo:
        wait_for(lambda: len(solo.calls) >= 20, timeout_s=30, what="20 slow calls")
    assert all(p == a.pid for _, _, p, _ in solo.calls), solo.calls
    assert _degraded(entry, "gray_solo") == {a.node_id: None}
    (tmp_path / "a.flag").unlink()

    with Caller(entry, "gray_echo", threads=3) as caller:
        wait_for(lambda: len(caller.calls) >= 10, timeout_s=30, what="10 calls")
        busy_pid = caller.calls[-1][2]
        assert busy_pid in pids
        hung, other = pids[busy_pid], pids[next(p for p in pids if p != busy_pid)]
        (tmp_path / f"{'a' if hung is a else 'b'}.flag").write_text("hang")
        wait_for(
            lambda: _degraded(entry, "gray_echo")[hung.node_id] == "local",
            # Detection time is measured by benchmarks/bench_gray.py, not asserted here:
            # the deadline only bounds the wait on a loaded machine.
            timeout_s=30,
            what="the hung provider degraded at the entry node",
        )
        switched_at = time.monotonic()
        wait_for(
            lambda: caller.served_by(other.pid, switched_at) >= 20,
            timeout_s=30,
            what="20 calls served by the healthy provider after the switch",
        )
        # Membership does not hold the hung node dead (suspect at most, its heartbeats
        # late on a loaded machine): the callers saw what it did not.
        assert entry.peer_states()[hung.node_id] in ("alive", "suspect")
        [peer] = [p for p in entry.get_json("/api/peers")["peers"] if p["id"] == hung.node_id]
        assert peer["gray"]["degraded_tools"] == ["gray_echo"]
        (tmp_path / f"{'a' if hung is a else 'b'}.flag").unlink()
        wait_for(
            lambda: _degraded(entry, "gray_echo")[hung.node_id] is None,
            timeout_s=15,
            what="the provider back once the hang ended",
        )
    after_switch = [c for c in caller.calls if c[0] >= switched_at]
    failed = [c for c in after_switch if c[2] is None]
    assert not failed, failed
    events = counters(entry, "vsmcp_gray_events")
    assert events.get("degraded", 0) >= 1 and events.get("recovered", 0) >= 1, events
    vsm = entry.get_json("/api/vsm")
    assert vsm["s2"]["gray"]["degraded"] == []


def test_a_quorum_of_callers_marks_it_degraded_at_every_node(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    a = _start(tmp_path, nodes, "a", PROVIDER_CONFIG)
    b = _start(tmp_path, nodes, "b", PROVIDER_CONFIG)
    e1 = _start(tmp_path, nodes, "e1", ENTRY_CONFIG)
    e2 = _start(tmp_path, nodes, "e2", ENTRY_CONFIG)
    group = [a, b, e1, e2]
    for node in group:
        node.wait_ready()
    wait_mesh_states(group, {n.node_id: "alive" for n in group})
    for entry in (e1, e2):
        wait_for(
            lambda entry=entry: set(_degraded(entry, "gray_echo")) == {a.node_id, b.node_id},
            timeout_s=30,
            what="gray_echo offered by a and b at both entry nodes",
        )
    (tmp_path / "a.flag").write_text("hang")
    (tmp_path / "b.flag").write_text("slow:0.05")  # a is the faster one until it hangs
    with Caller(e1, "gray_echo", threads=2), Caller(e2, "gray_echo", threads=2):
        # b called a only through its own local unit: it learns of the hang from the
        # quorum of the two entry nodes' signed observations.
        wait_for(
            lambda: _degraded(b, "gray_echo").get(a.node_id) == "quorum",
            timeout_s=30,
            what="a's tool degraded by quorum at b, which never called it",
        )
        # Each entry node holds the quorum once the other's observation has reached it:
        # a replication path of its own, which may be behind the one to b.
        for entry in (e1, e2):
            wait_for(
                lambda entry=entry: _degraded(entry, "gray_echo")[a.node_id] == "quorum",
                timeout_s=30,
                what="a's tool degraded by quorum at the entry node",
            )
        gray = b.get_json("/api/vsm")["s2"]["gray"]
        [seen] = [o for o in gray["observations"] if o["provider"] == a.node_id]
        assert sorted(seen["observers"]) == sorted([e1.node_id, e2.node_id])
        assert seen["quorum"] == 2
        (tmp_path / "a.flag").unlink()
        wait_for(
            lambda: _degraded(b, "gray_echo").get(a.node_id) is None,
            timeout_s=30,
            what="the quorum gone once the callers' probes brought a back",
        )
    # The quorum goes as soon as one of the two revokes (the other may not have yet).
    revoked = [counters(e, "vsmcp_gray_observations").get("revoked", 0) for e in (e1, e2)]
    assert sum(revoked) >= 1, revoked
