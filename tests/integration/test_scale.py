"""Variety-driven spawning with real processes: a saturated CPU-bound `scale` tool makes
System 3 spawn a child serving it, calls spread over parent and child, and the child is
retired once idle; each decision is a `scale` event with its measurement."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import NodeProcess, call_tool, start_configured
from tests.integration.test_children import children, vsmcpd_pids
from tests.polling import wait_for

pytestmark = pytest.mark.integration

TOKEN = "scale-test-token-0123456789"
SCALE_TIMEOUT_S = 90.0
LOAD_THREADS = 4
ROUNDS = 300_000  # some tens of ms of CPU per call
CONFIG = f"""
[mesh]
preset = "local"
[tools]
entry_points = false
[[tools.plugins]]
name = "burn"
target = "tests.integration.plugin_tools:burn"
limits = {{ max_concurrency = 1, max_queue = 64 }}
scale = {{ children = "auto", max = 1, quiet_s = 8.0, samples = 2, settle_s = 5.0, cpu = 0.25 }}
[[mcp.tokens]]
name = "client"
token = "{TOKEN}"
zone = "restricted"
"""


@pytest.fixture
def parent(tmp_path: Path) -> Iterator[NodeProcess]:
    nodes: list[NodeProcess] = []
    try:
        node = start_configured(tmp_path, nodes, CONFIG, "parent")
        node.wait_ready()
        yield node
    finally:
        for started in nodes:
            started.stop()
        for pid in vsmcpd_pids(tmp_path):  # what a failed test left of the tree
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class Load:
    """Threads calling `burn` until stopped; the pids that served each call."""

    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self.stop = threading.Event()
        self.served: dict[int, int] = {}
        self.errors: list[Any] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            for i in range(LOAD_THREADS)
        ]

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                reply = call_tool(self.node, TOKEN, "burn", {"rounds": ROUNDS})
            except OSError as e:
                self.errors.append(repr(e))
                continue
            content = reply.get("result", {}).get("structuredContent")
            with self._lock:
                if isinstance(content, dict) and "pid" in content:
                    self.served[content["pid"]] = self.served.get(content["pid"], 0) + 1
                else:
                    self.errors.append(reply)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def pids(self) -> dict[int, int]:
        with self._lock:
            return dict(self.served)


def scale_events(node: NodeProcess) -> list[dict[str, Any]]:
    events = node.get_json("/api/events")["events"]
    return [e for e in events if e.get("kind") == "scale" or e.get("type") == "scale"]


def serving_child(node: NodeProcess) -> dict[str, Any] | None:
    """The running child whose `burn` is mesh-visible at the parent, if any."""
    running = [c for c in children(node).values() if c["state"] == "running"]
    return next((c for c in running if "burn" in c["tools"]), None)


def test_saturated_tool_gets_a_child_calls_spread_and_the_idle_child_is_retired(
    parent: NodeProcess,
) -> None:
    with Load(parent) as load:
        # Read while it is recent: /api/events keeps the last events of every kind, and
        # each call under load adds one.
        spawn = wait_for(
            lambda: next((e for e in scale_events(parent) if e["action"] == "spawn"), None),
            timeout_s=SCALE_TIMEOUT_S,
            what="a spawn event",
        )
        spawned = wait_for(
            lambda: serving_child(parent),
            timeout_s=SCALE_TIMEOUT_S,
            what="a running child serving burn",
        )
        child_pid = spawned["pid"]
        assert spawned["name"].startswith("scale-burn-")
        # Calls spread: some are served by the parent, some by the child.
        wait_for(
            lambda: load.pids().get(child_pid, 0) >= 3 and load.pids().get(parent.pid, 0) >= 3,
            timeout_s=SCALE_TIMEOUT_S,
            what=f"calls served by both the parent and the child: {load.pids()}",
        )
    assert not load.errors, load.errors[:3]
    assert spawn["tool"] == "burn" and spawn["child"] == spawned["name"]
    assert spawn["cpu"] >= 0.25 and spawn["slots"] == 1
    assert spawn["running"] + spawn["waiting"] >= 1
    # Idle: the child is retired after its quiet time, and its process ends.
    wait_for(lambda: not children(parent), timeout_s=SCALE_TIMEOUT_S, what="child retired")
    retire = wait_for(
        lambda: next((e for e in scale_events(parent) if e["action"] == "retire"), None),
        timeout_s=SCALE_TIMEOUT_S,
        what="a retire event",
    )
    assert retire["child"] == spawned["name"] and retire["idle_s"] >= 8.0
    assert retire["children"] == 0
    # A retired scale child leaves nothing behind: neither its data dir nor its config.
    assert not (parent.data_dir / "children" / spawned["name"]).exists()
    assert not (parent.data_dir / "scale" / f"{spawned['name']}.toml").exists()
    wait_for(
        lambda: child_pid not in vsmcpd_pids(parent.data_dir.parent),
        timeout_s=SCALE_TIMEOUT_S,
        what="the retired child's process ended",
    )
