"""A real `vsmcpd` process: serve, report, stop cleanly, and refuse bad input at start."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.harness import NodeProcess, run_cli, run_daemon
from tests.polling import wait_for

pytestmark = pytest.mark.integration


def test_lifecycle_health_metrics_status_sigterm_and_audit(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    node = NodeProcess(tmp_path / "a")
    nodes.append(node)
    spawned_at = time.time()
    node.start()

    assert node.get_json("/healthz")["status"] == "ok"
    status = node.get_json("/api/status")
    # Uptime counts from the start of this process: no more than has passed since we
    # spawned it, and it keeps counting.
    assert 0 <= status["uptime_s"] <= time.time() - spawned_at
    wait_for(
        lambda: node.get_json("/api/status")["uptime_s"] > status["uptime_s"],
        what="uptime_s growing",
    )
    assert status["node_id"].startswith("12D3KooW")
    assert status["zone"] == "restricted"
    assert status["dev"] is True
    assert status["version"]
    assert status["node_id"] == node.info["node_id"]

    code, body, headers = node.get("/metrics")
    text = body.decode()
    assert code == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert 'vsmcp_envelopes_rejected_total{reason="replay"} 0.0' in text
    assert 'vsmcp_envelopes_rejected_total{reason="bad_signature"} 0.0' in text
    assert "process_resident_memory_bytes" in text
    assert "vsmcp_up 1.0" in text
    started = re.search(r"^vsmcp_start_time_seconds (\S+)$", text, re.MULTILINE)
    assert started is not None, text
    assert spawned_at <= float(started.group(1)) <= time.time()

    code, page, _ = node.get("/")
    # The status page (its data comes from /api/*, read by the page's script): the dev
    # banner is shown when /api/status says the node is a dev node.
    assert code == 200 and b'id="dev-banner"' in page and b"DEV MODE" in page
    assert status["dev"] is True

    key_mode = (tmp_path / "a" / "node.key").stat().st_mode & 0o777
    assert key_mode == 0o600

    node.terminate()
    # Exit 0: stopped by itself (the 5 s bound is the shutdown watchdog's, which would
    # exit 1 had the node not stopped); the wait is generous for a loaded machine.
    assert node.wait_exit(timeout_s=20) == 0
    assert not (tmp_path / "a" / "runtime.json").exists()

    verify = run_cli("audit", "verify", "--data-dir", str(tmp_path / "a"))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    kinds = [
        row[0]
        for row in sqlite3.connect(tmp_path / "a" / "vsmcp.db").execute(
            "SELECT kind FROM audit_entries ORDER BY seq"
        )
    ]
    assert kinds == ["node.start", "node.stop"]


def test_restart_keeps_identity_and_continues_the_audit_chain(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    first = NodeProcess(tmp_path / "n")
    nodes.append(first)
    first.start()
    node_id = first.info["node_id"]
    first.signal(signal.SIGINT)
    assert first.wait_exit() == 0

    second = NodeProcess(tmp_path / "n")
    nodes.append(second)
    second.start()
    assert second.info["node_id"] == node_id
    second.terminate()
    assert second.wait_exit() == 0
    verify = run_cli("audit", "verify", "--data-dir", str(tmp_path / "n"))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "4 entries" in verify.stdout


def test_second_daemon_on_the_same_data_dir_is_refused(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    node = NodeProcess(tmp_path / "d")
    nodes.append(node)
    node.start()
    result = run_daemon("--data-dir", str(tmp_path / "d"), "--http-port", "0", "--dev")
    assert result.returncode == 2
    assert "already running" in result.stderr


def test_environment_reaches_keys_of_deeper_tables(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # [vsm.concurrency] from the environment alone: the table is created, its key set.
    node = NodeProcess(
        tmp_path / "e",
        "--no-mdns",
        env={"VSMCP_VSM_CONCURRENCY_MAX_LIMIT": "77", "VSMCP_VSM__CONCURRENCY__INITIAL_LIMIT": "5"},
    )
    nodes.append(node)
    node.start()
    mcp = node.get_json("/api/vsm")["s3"]["concurrency"]["mcp"]
    # No call ran: the limit is still the initial one.
    assert (mcp["max_limit"], mcp["limit"]) == (77, 5), mcp


def test_an_environment_variable_naming_no_key_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VSMCP_VSM_CONCURRENCY_MAX_LIMT", "77")  # a typo
    result = run_daemon("--dev", "--data-dir", str(tmp_path), "--http-port", "0")
    _refused(result, "config key 'VSMCP_VSM_CONCURRENCY_MAX_LIMT': names no config key")


def test_json_logs_are_json_lines(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    node = NodeProcess(tmp_path / "j", "--log-format", "json")
    nodes.append(node)
    node.start()
    node.terminate()
    assert node.wait_exit() == 0
    lines = [ln for ln in node.log_text().splitlines() if ln.startswith("{")]
    records = [json.loads(ln) for ln in lines]
    assert any(r["msg"] == "serving" and r["node_id"] == node.info["node_id"] for r in records)
    assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)


# -- refusals at start: one clear line, exit code 2, never a traceback ---------------------


def _refused(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_dev_on_a_non_loopback_mesh_address_is_refused(tmp_path: Path) -> None:
    # Self-certified peers are admitted on loopback only: a dev node reachable from the
    # network would be one any neighbour could join.
    config = tmp_path / "dev.toml"
    config.write_text('[mesh]\nhost = "0.0.0.0"\n')
    data = tmp_path / "d"
    args = ("--config", str(config), "--data-dir", str(data), "--http-port", "0")
    _refused(run_daemon(*args, "--dev"), "mesh.host", "loopback only")
    assert not (data / "runtime.json").exists()


def test_corrupt_config_file_names_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[http]\nport = 'eighty'\n")
    _refused(run_daemon("--config", str(bad), "--data-dir", str(tmp_path)), "http.port")
    bad.write_text("[http\n")
    _refused(run_daemon("--config", str(bad), "--data-dir", str(tmp_path)), "not valid TOML")


def test_bad_flag_value_names_the_key(tmp_path: Path) -> None:
    _refused(run_daemon("--http-port", "99999", "--data-dir", str(tmp_path)), "http.port")


def test_world_readable_key_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "k"
    created = run_cli("keys", "node", "--data-dir", str(data))
    assert created.returncode == 0, created.stderr
    os.chmod(data / "node.key", 0o644)
    _refused(run_daemon("--dev", "--data-dir", str(data), "--http-port", "0"), "chmod 600")


def test_corrupt_key_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "k"
    data.mkdir()
    key = data / "node.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b'{"type": "ed25519", "seed": "garbage')
    os.close(fd)
    _refused(run_daemon("--dev", "--data-dir", str(data), "--http-port", "0"), str(key))


def test_missing_authority_in_production_mode(tmp_path: Path) -> None:
    _refused(
        run_daemon("--data-dir", str(tmp_path), "--http-port", "0"),
        "trust.authority_public_key",
    )


def _authority(directory: Path) -> tuple[Path, str]:
    """Create a mesh authority key; return its path and public key (hex)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "authority.key"
    out = run_cli("keys", "init-authority", "--out", str(path))
    assert out.returncode == 0, out.stderr
    match = re.search(r"authority public key: ([0-9a-f]{64})", out.stdout)
    assert match, out.stdout
    return path, match.group(1)


def _issue(authority: Path, node_id: str, *extra: str, lifetime: str = "30") -> Path:
    cert = authority.parent / f"{node_id[-8:]}.cert"
    out = run_cli(
        "keys",
        "issue",
        "--authority-key",
        str(authority),
        "--node",
        node_id,
        "--days",
        lifetime,
        "--out",
        str(cert),
        *extra,
    )
    assert out.returncode == 0, out.stderr
    return cert


def _node_id(data: Path) -> str:
    out = run_cli("keys", "node", "--data-dir", str(data), "--json")
    assert out.returncode == 0, out.stderr
    return str(json.loads(out.stdout)["node_id"])


def _config(tmp_path: Path, authority_pub: str, cert: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f'[trust]\nauthority_public_key = "{authority_pub}"\ncertificate_file = "{cert}"\n'
    )
    return path


def _start_refused(
    tmp_path: Path, data: Path, authority_pub: str, cert: Path, fragment: str
) -> None:
    config = _config(tmp_path, authority_pub, cert)
    _refused(
        run_daemon("--config", str(config), "--data-dir", str(data), "--http-port", "0"),
        fragment,
    )


def test_certified_node_takes_its_zone_from_the_certificate(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    data = tmp_path / "c"
    authority, pub = _authority(tmp_path / "auth")
    cert = _issue(authority, _node_id(data), "--zone", "ops", "--roles", "tools,audit")
    node = NodeProcess(data, "--config", str(_config(tmp_path, pub, cert)), dev=False)
    nodes.append(node)
    node.start()
    status = node.get_json("/api/status")
    assert status["zone"] == "ops"
    assert status["roles"] == ["tools", "audit"]
    assert status["dev"] is False


def test_foreign_certificate_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "f"
    foreign, _ = _authority(tmp_path / "foreign")
    cert = _issue(foreign, _node_id(data), "--zone", "ops")
    _, ours = _authority(tmp_path / "ours")
    _start_refused(tmp_path, data, ours, cert, "certificate rejected")


def test_certificate_for_another_node_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "g"
    _node_id(data)
    authority, pub = _authority(tmp_path / "auth")
    cert = _issue(authority, _node_id(tmp_path / "someone-else"), "--zone", "ops")
    _start_refused(tmp_path, data, pub, cert, "another key")


def test_expired_certificate_is_refused(tmp_path: Path) -> None:
    from vsmcp.mesh.certs import certificate_to_pem, issue_certificate
    from vsmcp.mesh.identity import load_key_file, public_key_from_node_id

    data = tmp_path / "e"
    node_pub = public_key_from_node_id(_node_id(data))
    authority_path, pub = _authority(tmp_path / "auth")
    authority = load_key_file(authority_path)
    signed = issue_certificate(authority, node_pub, "ops", [], 60, now_s=1_000_000)
    cert = tmp_path / "expired.cert"
    cert.write_text(certificate_to_pem(signed))
    _start_refused(tmp_path, data, pub, cert, "expired")
