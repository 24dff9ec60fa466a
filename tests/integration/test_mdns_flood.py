"""A flood of fake mDNS services must not exhaust a node (issue 9, finding 2).

Everything runs inside a network namespace of the test's own (its loopback carries the
multicast), so the flood reaches no other node on the machine: the node, the flooder
(tests/integration/mdns_flood.py) and, after the flood, a genuine node that must join
as it always does, while the node's open descriptors (/proc/PID/fd) stay bounded.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import REPO_ROOT, NodeProcess
from tests.polling import wait_for
from tests.skips import skip_or_fail

pytestmark = pytest.mark.integration

FAKE_SERVICES = 1500
FLOOD_START_TIMEOUT_S = 60.0
# The node must have tried (and timed out on) this many HELLOs to fakes before the
# flood ends: before the fix, each fake tried left a connection (a descriptor or two)
# open for good.
HELLOS_TO_FAKES = 160
HELLO_TIMEOUT_S = 120.0
# Above the node's own descriptors at rest: its candidate links (at most 32, one or two
# descriptors each), HTTP and mDNS sockets fit within this.
MAX_EXTRA_DESCRIPTORS = 80
JOIN_TIMEOUT_S = 30.0  # as in test_mesh.py: how long two nodes usually take
CLONE_NEWNET = 0x40000000


def _enter_netns(netns: str) -> None:
    """Move the calling thread (only) into the namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            skip_or_fail(f"setns into {netns}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


class NamespacedNode(NodeProcess):
    """A vsmcpd inside a network namespace; its HTTP is reached from a thread in there."""

    def __init__(self, data_dir: Path, netns: str, http: ThreadPoolExecutor, *args: str):
        super().__init__(data_dir, *args)
        self.netns = netns
        self._http = http

    def command(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *super().command()]

    def get(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        return self._http.submit(super().get, path).result()


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def metric(node: NodeProcess, name: str) -> float:
    text = node.get("/metrics")[1].decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


@pytest.fixture
def netns_http(netns_pair: tuple[str, str, str, str]) -> Iterator[tuple[str, ThreadPoolExecutor]]:
    ns_a = netns_pair[0]
    with ThreadPoolExecutor(1, initializer=_enter_netns, initargs=(ns_a,)) as pool:
        pool.submit(lambda: None).result()  # enter now: a failure skips here
        yield ns_a, pool


@pytest.fixture
def flooder(netns_http: tuple[str, ThreadPoolExecutor]) -> Iterator[subprocess.Popen[str]]:
    ns, _ = netns_http
    argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.integration.mdns_flood"]
    proc = subprocess.Popen(
        [*argv, str(FAKE_SERVICES), "127.0.0.1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def _stop_flood(proc: subprocess.Popen[Any]) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    assert proc.stdout.readline().strip() == "withdrawn"
    proc.wait(timeout=30)


def test_a_flood_of_fake_services_leaves_descriptors_bounded_and_a_real_node_joins(
    tmp_path: Path,
    nodes: list[NodeProcess],
    netns_http: tuple[str, ThreadPoolExecutor],
    flooder: subprocess.Popen[str],
) -> None:
    ns, http = netns_http
    config = tmp_path / "mesh.toml"
    config.write_text('[mesh]\npreset = "local"\n')
    node = NamespacedNode(tmp_path / "a", ns, http, "--config", str(config))
    nodes.append(node)
    node.start()
    at_rest = open_descriptors(node.pid)
    bound = at_rest + MAX_EXTRA_DESCRIPTORS
    highest = at_rest

    def descriptors_bounded() -> None:
        nonlocal highest
        highest = max(highest, open_descriptors(node.pid))
        assert highest <= bound, f"{highest} descriptors open (at rest {at_rest})"

    assert flooder.stdout is not None
    assert flooder.stdout.readline().strip() == f"registered {FAKE_SERVICES}"

    def tried_many_fakes() -> bool:
        descriptors_bounded()
        timeouts = metric(node, 'vsmcp_transport_frames_total{direction="timeouts"}')
        return timeouts >= HELLOS_TO_FAKES

    wait_for(tried_many_fakes, timeout_s=HELLO_TIMEOUT_S, what=f"{HELLOS_TO_FAKES} HELLOs failed")
    assert node.get_json("/healthz")["status"] == "ok"
    _stop_flood(flooder)
    descriptors_bounded()

    genuine = NamespacedNode(tmp_path / "b", ns, http, "--config", str(config))
    nodes.append(genuine)
    genuine.start()

    def joined() -> bool:
        descriptors_bounded()
        states = [node.peer_states().get(genuine.node_id), genuine.peer_states().get(node.node_id)]
        return states == ["alive", "alive"]

    wait_for(joined, timeout_s=JOIN_TIMEOUT_S, what="the genuine node alive on both sides")
    # What was opened for the fakes is closed again.
    wait_for(
        lambda: metric(node, 'vsmcp_transport_links{budget="candidate"}') == 0,
        timeout_s=HELLO_TIMEOUT_S,
        what="no candidate link left open",
    )
    assert metric(node, 'vsmcp_transport_links{budget="peer"}') == 1
    descriptors_bounded()
