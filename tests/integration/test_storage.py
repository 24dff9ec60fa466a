"""A real `vsmcpd` on a damaged, emptied or rolled-back data dir, and what it promises
about an answered call's audit entry."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.harness import REPO_ROOT, NodeProcess, run_cli, run_daemon
from tests.polling import wait_for
from vsmcp.node.store.audit_anchor import KV_SEEN_HEADS, AnchoredHead, decode_seen

pytestmark = pytest.mark.integration

CLI = (sys.executable, "-m", "vsmcp.node.app.cli")
PAGE_BYTES = 4096  # SQLite's default page size, which the store keeps


def _db(data_dir: Path) -> Path:
    return data_dir / "vsmcp.db"


def _run_and_stop(data_dir: Path, nodes: list[NodeProcess], *args: str) -> NodeProcess:
    """One clean run (start, then SIGTERM): a node.start and a node.stop entry more."""
    node = NodeProcess(data_dir, *args)
    nodes.append(node)
    node.start()
    node.terminate()
    assert node.wait_exit(timeout_s=30) == 0, node.log_text()
    return node


def _start_refused(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return run_daemon(
        "--data-dir",
        str(data_dir),
        "--dev",
        "--no-mdns",
        "--http-port",
        "0",
        "--mesh-port",
        "0",
    )


def _assert_refused(refused: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr
    assert "vsmcpd ready" not in refused.stdout
    reason = [line for line in refused.stderr.splitlines() if line.startswith("vsmcpd: ")]
    assert len(reason) == 1, refused.stderr
    for text in expected:
        assert text in reason[0], reason[0]


def _entry_kinds(data_dir: Path) -> list[str]:
    conn = sqlite3.connect(_db(data_dir))
    try:
        return [row[0] for row in conn.execute("SELECT kind FROM audit_entries ORDER BY seq")]
    finally:
        conn.close()


def test_a_corrupted_database_is_refused_and_verify_says_broken(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    data = tmp_path / "n"
    _run_and_stop(data, nodes)
    db = _db(data)
    conn = sqlite3.connect(db)
    try:
        root = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'audit_entries'"
        ).fetchone()[0]
    finally:
        conn.close()
    damaged = bytearray(db.read_bytes())
    # 40 bytes over the cell pointers of the audit table's page (after its 8-byte header).
    start = (root - 1) * PAGE_BYTES + 8
    for i in range(start, start + 40):
        damaged[i] ^= 0xFF
    db.write_bytes(bytes(damaged))

    _assert_refused(_start_refused(data), str(db), "fails SQLite's integrity check")
    verify = run_cli("audit", "verify", "--data-dir", str(data))
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert verify.stdout.startswith("audit log BROKEN"), verify.stdout
    assert "Traceback" not in verify.stderr


def test_a_truncated_database_is_refused(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    data = tmp_path / "n"
    _run_and_stop(data, nodes)
    _db(data).write_bytes(b"")

    _assert_refused(
        _start_refused(data), str(data / "audit.head"), "went backwards", "records entry 2"
    )
    verify = run_cli("audit", "verify", "--data-dir", str(data))
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert "BROKEN" in verify.stdout and "Traceback" not in verify.stderr


def test_a_rolled_back_database_is_refused_until_the_operator_accepts_it(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    data = tmp_path / "n"
    _run_and_stop(data, nodes)
    backup = tmp_path / "backup.db"
    backup.write_bytes(_db(data).read_bytes())
    _run_and_stop(data, nodes)  # entries 3 and 4
    _db(data).write_bytes(backup.read_bytes())  # an older copy restored

    _assert_refused(
        _start_refused(data),
        "went backwards",
        "records entry 4",
        "log ends at entry 2",
        "--accept-audit-rollback",
    )
    verify = run_cli("audit", "verify", "--data-dir", str(data))
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert "BROKEN at entry 3" in verify.stdout and "went backwards" in verify.stdout

    _run_and_stop(data, nodes, "--accept-audit-rollback")
    assert _entry_kinds(data) == [
        "node.start",
        "node.stop",
        "audit.rollback_accepted",
        "node.start",
        "node.stop",
    ]
    verify = run_cli("audit", "verify", "--data-dir", str(data))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    _run_and_stop(data, nodes)  # accepted once: a plain start works again


@pytest.mark.parametrize("commit_before_answer", [True, False])
def test_commit_before_answer_puts_the_entry_on_disk_before_the_answer(
    tmp_path: Path, nodes: list[NodeProcess], commit_before_answer: bool
) -> None:
    env = {
        "VSMCP_AUDIT_COMMIT_BEFORE_ANSWER": "true" if commit_before_answer else "false",
        # A batch waits a minute for company: only commit_before_answer commits sooner.
        "VSMCP_AUDIT_LINGER_MS": "60000",
    }
    data = tmp_path / "n"
    node = NodeProcess(data, env=env)
    nodes.append(node)
    node.start()
    called = run_cli("call", "echo", "--arg", "text=hi", "--url", node.url)
    assert called.returncode == 0, called.stdout + called.stderr
    assert "hi" in called.stdout

    # Read the file as another process would after a kill -9 now.
    assert ("tool.call" in _entry_kinds(data)) is commit_before_answer
    _, metrics, _ = node.get("/metrics")
    uncommitted = re.search(rb"^vsmcp_audit_uncommitted_entries (\S+)$", metrics, re.M)
    assert uncommitted is not None
    assert (float(uncommitted.group(1)) == 0) is commit_before_answer
    node.terminate()
    assert node.wait_exit(timeout_s=30) == 0
    assert "tool.call" in _entry_kinds(data)  # a clean stop commits the rest


def _metric(node: NodeProcess, pattern: str) -> float:
    _, body, _ = node.get("/metrics")
    match = re.search(rf"^{pattern} (\S+)$", body.decode(), re.M)
    assert match is not None, f"no {pattern} in /metrics"
    return float(match.group(1))


def test_an_audit_writer_faulted_mid_batch_keeps_its_entry_and_stops_cleanly(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """The debug API cancels the writer while it holds the call's entry (lingering a
    minute for company): the restarted writer still has it, and a clean stop commits it."""
    config = tmp_path / "debug.toml"
    config.write_text("[node]\ndebug_api = true\n")
    env = {"VSMCP_AUDIT_COMMIT_BEFORE_ANSWER": "false", "VSMCP_AUDIT_LINGER_MS": "60000"}
    data = tmp_path / "n"
    node = NodeProcess(data, "--config", str(config), env=env)
    nodes.append(node)
    node.start()
    called = run_cli("call", "echo", "--arg", "text=hi", "--url", node.url)
    assert called.returncode == 0, called.stdout + called.stderr
    held = _metric(node, "vsmcp_audit_uncommitted_entries")
    assert held >= 1  # the call's entry, and any other the call wrote

    restarts = r'vsmcp_loop_restarts_total\{loop="audit-writer"\}'
    assert _metric(node, restarts) == 0
    assert node.post("/api/debug/loop-fault?name=audit-writer") == 200
    wait_for(lambda: _metric(node, restarts) == 1, what="audit-writer restarted")
    assert _metric(node, "vsmcp_audit_uncommitted_entries") == held  # still held, not lost
    assert node.get_json("/healthz")["status"] == "ok"

    node.terminate()
    assert node.wait_exit(timeout_s=30) == 0, node.log_text()
    assert _entry_kinds(data).count("tool.call") == 1
    verify = run_cli("audit", "verify", "--data-dir", str(data))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _head_seen_by(observer: NodeProcess, node_id: str) -> AnchoredHead | None:
    """The audit head of `node_id` that `observer` persisted (it saves every few s)."""
    conn = sqlite3.connect(_db(observer.data_dir))
    try:
        row = conn.execute("SELECT value FROM kv WHERE key = ?", (KV_SEEN_HEADS,)).fetchone()
    finally:
        conn.close()
    return None if row is None else decode_seen(bytes(row[0])).get(node_id)


def _seen_at_least(observer: NodeProcess, node_id: str, seq: int) -> bool:
    head = _head_seen_by(observer, node_id)
    return head is not None and head.seq >= seq


@dataclass
class RolledBack:
    """A node's data dir restored to an older copy after `peer` saw a newer head of it."""

    data: Path
    peer: NodeProcess
    common: tuple[str, ...]  # the daemon arguments every node of the test takes
    seed: tuple[str, ...]  # the peer as a seed


def _roll_back_behind_peer(tmp_path: Path, nodes: list[NodeProcess], config: str) -> RolledBack:
    config_path = tmp_path / "mesh.toml"
    config_path.write_text(config)
    common = ("--config", str(config_path), "--no-mdns")
    peer = NodeProcess(tmp_path / "b", *common)
    nodes.append(peer)
    peer.start()
    seed = ("--seed", f"{peer.node_id}@127.0.0.1:{peer.mesh_port}")
    data = tmp_path / "a"

    first = _run_until_seen(data, nodes, peer, (*common, *seed), at_least=1)
    backup = {name: (data / name).read_bytes() for name in ("vsmcp.db", "audit.head")}
    backed_up_seq = len(_entry_kinds(data))
    _run_until_seen(data, nodes, peer, (*common, *seed), at_least=backed_up_seq + 1)
    assert first.node_id  # same identity on every run (same data dir)
    # The database and its audit.head restored together: the local check cannot tell.
    for name, content in backup.items():
        (data / name).write_bytes(content)
    return RolledBack(data, peer, common, seed)


def test_a_node_behind_the_head_its_peer_saw_stops_until_the_operator_accepts(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    rolled = _roll_back_behind_peer(tmp_path, nodes, '[mesh]\npreset = "local"\n')
    data, common, seed = rolled.data, rolled.common, rolled.seed

    behind = NodeProcess(data, *common, *seed)
    nodes.append(behind)
    behind.start(wait=False)
    assert behind.wait_exit(timeout_s=120) == 2, behind.log_text()
    log_text = behind.log_text()
    assert "the mesh saw entry" in log_text and "--accept-audit-rollback" in log_text

    accepted = NodeProcess(data, *common, *seed, "--accept-audit-rollback")
    nodes.append(accepted)
    accepted.start()
    wait_for(
        lambda: "audit.rollback_accepted" in _entry_kinds(data),
        timeout_s=120,
        what="the accepted rollback recorded",
    )
    accepted.terminate()
    assert accepted.wait_exit(timeout_s=30) == 0
    verify = run_cli("audit", "verify", "--data-dir", str(data))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_node_that_gives_up_exits_2_although_a_call_blocks_its_thread(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # Before: the node stopped, but nothing bounded the exit: asyncio.run waited for the
    # blocked thread for ever and the process never exited.
    block_plugin = """
[mesh]
preset = "local"
[[tools.plugins]]
name = "block"
target = "tests.integration.plugin_tools:block"
"""
    rolled = _roll_back_behind_peer(tmp_path, nodes, block_plugin)
    rolled.peer.terminate()
    assert rolled.peer.wait_exit(timeout_s=30) == 0, rolled.peer.log_text()
    # Without its peer the restored node has no one to tell it: it serves.
    behind = NodeProcess(rolled.data, *rolled.common)
    nodes.append(behind)
    behind.start()
    marker = tmp_path / "blocked"
    call = subprocess.Popen(
        [*CLI, "call", "block", "--arg", f"marker={marker}", "--url", behind.url],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(marker.exists, timeout_s=60, what="the call blocking its thread")
        # The peer comes back and joins the restored node: it tells it the head it saw.
        peer = NodeProcess(
            rolled.peer.data_dir,
            *rolled.common,
            "--seed",
            f"{behind.node_id}@127.0.0.1:{behind.mesh_port}",
        )
        nodes.append(peer)
        peer.start()
        assert behind.wait_exit(timeout_s=120) == 2, behind.log_text()
    finally:
        call.kill()
        call.wait()
    log_text = behind.log_text()
    assert "the mesh saw entry" in log_text
    assert "threads of tool calls still run" in log_text  # ended by the watchdog


def _run_until_seen(
    data: Path, nodes: list[NodeProcess], peer: NodeProcess, args: tuple[str, ...], at_least: int
) -> NodeProcess:
    node = NodeProcess(data, *args)
    nodes.append(node)
    node.start()
    wait_for(
        lambda: _seen_at_least(peer, node.node_id, at_least),
        timeout_s=120,
        what=f"the peer holding entry {at_least} of the node's audit head",
    )
    node.terminate()
    assert node.wait_exit(timeout_s=30) == 0, node.log_text()
    return node
