"""A child VSM's delegated certificate with real processes: the parent renews it while
the child runs and the child takes it without a restart (it outlives its first
certificate: a node that meets it after that expiry admits it), and a certificate its
parent did not issue is refused by the child with a clear error."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import NodeProcess, call_tool
from tests.integration.test_children import (  # noqa: F401 (no_leftovers: a fixture, used)
    BASE,
    PLUGIN,
    child_node,
    no_leftovers,
    wait_running,
)
from tests.polling import wait_for
from vsmcp.mesh.certs import certificate_from_pem, certificate_to_pem, issue_certificate
from vsmcp.mesh.identity import load_or_create_key_file

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftovers")]

TOKEN = "child-cert-test-token-0123456789"
LIFETIME_S = 30  # renewal at 15 s: a loaded box has time to renew before it expires
TIMEOUT_S = 90.0
TOKENS = f'[[mcp.tokens]]\nname = "client"\ntoken = "{TOKEN}"\nzone = "restricted"\n'


def status(node: NodeProcess) -> dict[str, Any]:
    data: dict[str, Any] = node.get_json("/api/status")
    return data


def peer_expiry(node: NodeProcess, peer_id: str) -> int | None:
    for peer in node.get_json("/api/peers")["peers"]:
        if peer["id"] == peer_id and peer["admitted"]:
            expires: int | None = peer.get("certificate_expires_at_s")
            return expires
    return None


def test_the_parent_renews_a_running_childs_certificate_and_the_child_outlives_the_first(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    child_cfg = tmp_path / "child.toml"
    child_cfg.write_text(BASE + PLUGIN)
    config = tmp_path / "p.toml"
    config.write_text(
        f"{BASE}{TOKENS}[recursion]\nchild_certificate_s = {LIFETIME_S}\n"
        f'[[children]]\nname = "c"\nconfig = "{child_cfg}"\n'
    )
    parent = NodeProcess(tmp_path / "p", "--config", str(config))
    nodes.append(parent.start())
    first = wait_running(parent, "c")["c"]
    child = child_node(Path(first["data_dir"]))
    first_expiry = status(child)["certificate_expires_at_s"]
    assert first_expiry <= time.time() + LIFETIME_S + 1  # short-lived, as configured

    # Past the first certificate's expiry, the same child process holds a newer one.
    def renewed_and_first_expired() -> dict[str, Any] | None:
        now = status(child)
        expired = time.time() > first_expiry + 1
        return now if expired and now["certificate_expires_at_s"] > time.time() else None

    now = wait_for(renewed_and_first_expired, timeout_s=TIMEOUT_S, what="renewed certificate")
    assert now["certificate_renewal"]["renewed"] >= 1
    assert now["certificate_renewal"]["refused"] == 0
    assert now["depth"] == 1 and now["parent"] == status(parent)["node_id"]
    c = wait_running(parent, "c")["c"]
    assert (c["pid"], c["restarts"]) == (first["pid"], 0)  # not restarted
    # The parent holds the renewed certificate too (the child said HELLO with it)...
    wait_for(
        lambda: (peer_expiry(parent, c["node_id"]) or 0) > first_expiry,
        timeout_s=TIMEOUT_S,
        what="the parent sees the renewed certificate",
    )
    # ... and a node meeting the child only now admits it: its first one has expired.
    late = NodeProcess(tmp_path / "late", "--seed", f"127.0.0.1:{parent.info['mesh_port']}")
    nodes.append(late.start())
    wait_for(
        lambda: (peer_expiry(late, c["node_id"]) or 0) > time.time(),
        timeout_s=TIMEOUT_S,
        what="a late node admits the child",
    )
    reply = wait_for(
        lambda: (r := call_tool(parent, TOKEN, "add", {"a": 2, "b": 3})).get("result") and r,
        timeout_s=TIMEOUT_S,
        what="the child's tool answers through the parent",
    )
    assert reply["result"]["structuredContent"] == {"sum": 5}


def test_a_child_refuses_a_certificate_its_parent_did_not_issue(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    config = tmp_path / "p.toml"
    config.write_text(f'{BASE}[[children]]\nname = "a"\n[[children]]\nname = "b"\n')
    parent = NodeProcess(tmp_path / "p", "--config", str(config))
    nodes.append(parent.start())
    views = wait_running(parent, "a", "b")
    a_dir, b_dir = Path(views["a"]["data_dir"]), Path(views["b"]["data_dir"])
    a = child_node(a_dir)
    before = status(a)
    # Its sibling b (certified by the same parent, so the chain reaches the same
    # authority) delegates a certificate to a's key: not the parent's.
    a_key, _ = load_or_create_key_file(a_dir / "node.key")
    b_key, _ = load_or_create_key_file(b_dir / "node.key")
    b_cert = certificate_from_pem((b_dir / "node.cert").read_text())
    foreign = issue_certificate(
        b_key, a_key.public_key, before["zone"], before["roles"], 3600, parent=b_cert
    )
    (a_dir / "node.cert").write_text(certificate_to_pem(foreign))

    refused = wait_for(
        lambda: (s := status(a))["certificate_renewal"]["refused"] >= 1 and s,
        timeout_s=TIMEOUT_S,
        what="the child refuses the foreign certificate",
    )
    error = refused["certificate_renewal"]["last_error"]
    assert f"issued by {b_key.node_id}, not by this node's parent" in error, error
    assert status(parent)["node_id"] in error
    # It keeps the certificate its parent issued, and runs on.
    assert refused["certificate_fingerprint"] == before["certificate_fingerprint"]
    assert refused["certificate_renewal"]["renewed"] == 0
    assert wait_running(parent, "a")["a"]["restarts"] == 0
