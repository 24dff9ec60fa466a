"""Dev admission by the connection's real address: self-certified peers on loopback only.

`vsmcpd --dev` refuses a non-loopback mesh address (test_daemon.py), so the dev node
listening on a namespace's veth address here is a `MeshService` in its own process
(tests/integration/mesh_peer.py): the same admission code, bound where the daemon will
not go, which is what a check of the real address has to withstand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import REPO_ROOT
from tests.polling import wait_for

pytestmark = pytest.mark.integration

ADMISSION_TIMEOUT_S = 30.0


class MeshPeer:
    """A `tests.integration.mesh_peer` process, optionally inside a network namespace."""

    def __init__(self, status_file: Path, *args: str, netns: str | None = None) -> None:
        argv = [sys.executable, "-m", "tests.integration.mesh_peer", str(status_file), *args]
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]
        self.status_file = status_file
        self.log = status_file.with_suffix(".log")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            )
        self.info: dict[str, Any] = wait_for(self.status, timeout_s=30, what="mesh peer ready")

    def status(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"mesh peer exited:\n{self.log.read_text(errors='replace')}")
        try:
            data: dict[str, Any] = json.loads(self.status_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data

    @property
    def node_id(self) -> str:
        return str(self.info["node_id"])

    def seed(self, host: str) -> str:
        return f"{self.node_id}@{host}:{self.info['port']}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def peers() -> Iterator[list[MeshPeer]]:
    started: list[MeshPeer] = []
    yield started
    for peer in started:
        peer.stop()


# What a dev node refuses a self-certified peer with when the connection is not on
# loopback: the authority check, which only loopback may skip. Another refusal (other
# mesh, malformed HELLO) would say nothing about the loopback rule.
NOT_OUR_AUTHORITY = "foreign_authority"


def _refused_as_foreign(peer: MeshPeer) -> int:
    status = peer.status() or {}
    return int(status.get("refused", {}).get(NOT_OUR_AUTHORITY, 0))


def test_a_dev_node_admits_a_self_certified_peer_on_loopback(
    tmp_path: Path, peers: list[MeshPeer]
) -> None:
    a = MeshPeer(tmp_path / "a.json", "--host", "127.0.0.1")
    peers.append(a)
    b = MeshPeer(tmp_path / "b.json", "--host", "127.0.0.1", "--seed", a.seed("127.0.0.1"))
    peers.append(b)

    def admitted_both_ways() -> bool:
        sa, sb = a.status() or {}, b.status() or {}
        return sa.get("peers") == {b.node_id: "restricted"} and sb.get("peers") == {
            a.node_id: "restricted"
        }

    wait_for(admitted_both_ways, timeout_s=ADMISSION_TIMEOUT_S, what="admitted both ways")


def test_a_remote_peer_claiming_loopback_is_not_admitted_by_a_dev_node(
    tmp_path: Path, peers: list[MeshPeer], netns_pair: tuple[str, str, str, str]
) -> None:
    ns_a, ip_a, ns_b, _ip_b = netns_pair
    a = MeshPeer(tmp_path / "a.json", "--host", ip_a, netns=ns_a)
    peers.append(a)
    # B is a dev node on its own loopback: its HELLO says 127.0.0.1, and it comes from B's
    # veth address.
    b = MeshPeer(tmp_path / "b.json", "--host", "127.0.0.1", "--seed", a.seed(ip_a), netns=ns_b)
    peers.append(b)
    wait_for(
        lambda: (a.status() or {}).get("hellos_answered", 0) >= 1 and _refused_as_foreign(a) >= 1,
        timeout_s=ADMISSION_TIMEOUT_S,
        what="A to answer B's HELLO with a refusal",
    )
    assert (a.status() or {})["peers"] == {}
    assert (b.status() or {})["peers"] == {}


def test_a_dev_node_does_not_admit_a_remote_peer_it_dialled_that_claims_loopback(
    tmp_path: Path, peers: list[MeshPeer], netns_pair: tuple[str, str, str, str]
) -> None:
    ns_a, ip_a, ns_b, ip_b = netns_pair
    # B listens on its veth address, says it is at 127.0.0.1 and admits anyone.
    b = MeshPeer(tmp_path / "b.json", "--host", ip_b, "--hostile", netns=ns_b)
    peers.append(b)
    a = MeshPeer(tmp_path / "a.json", "--host", ip_a, "--seed", b.seed(ip_b), netns=ns_a)
    peers.append(a)
    # B admits A (it admits anyone): so A got B's HELLO answer and had to decide.
    wait_for(
        lambda: a.node_id in (b.status() or {}).get("peers", {}) and _refused_as_foreign(a) >= 1,
        timeout_s=ADMISSION_TIMEOUT_S,
        what="A to receive B's answer and refuse it",
    )
    assert (a.status() or {})["peers"] == {}
