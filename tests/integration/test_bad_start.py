"""A node that cannot start says why in one line and exits 2 (systemd does not restart
exit 2: RestartPreventExitStatus=2), never a traceback and exit 1 in a restart loop."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import REPO_ROOT, NodeProcess, run_daemon
from vsmcp.node.store.database import DB_FILENAME, Store

pytestmark = pytest.mark.integration

# TEST-NET-1 (RFC 5737): documentation only, never an address of this machine.
NOT_LOCAL_ADDRESS = "192.0.2.1"


def _refused_in_one_line(
    result: subprocess.CompletedProcess[str], key: str, *fragments: str
) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 2, (result.returncode, output)
    assert "Traceback" not in output, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith(f"vsmcpd: config key '{key}': "), line
    for fragment in fragments:
        assert fragment in line, line
    return line


def _daemon(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_daemon(
        "--dev", "--no-mdns", "--data-dir", str(tmp_path / "data"), "--http-port", "0",
        "--mesh-port", "0", *args,
    )  # fmt: skip


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "vsmcp.toml"
    path.write_text(text)
    return str(path)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback TCP port another process-like owner is listening on."""
    with socket.socket() as owner:
        owner.bind(("127.0.0.1", 0))
        owner.listen()
        yield owner.getsockname()[1]


def test_unparsable_http_host(tmp_path: Path) -> None:
    result = _daemon(tmp_path, "--http-host", "not a host!")
    _refused_in_one_line(result, "http.host", "not an IP address or a host name")


def test_http_host_that_is_not_an_address_of_this_machine(tmp_path: Path) -> None:
    result = _daemon(tmp_path, "--http-host", NOT_LOCAL_ADDRESS)
    _refused_in_one_line(result, "http.host", f"cannot listen on {NOT_LOCAL_ADDRESS}")


def test_http_port_in_use(tmp_path: Path, taken_port: int) -> None:
    result = _daemon(tmp_path, "--http-port", str(taken_port))
    _refused_in_one_line(result, "http.port", f"127.0.0.1:{taken_port}", "in use")


def test_mesh_port_in_use(tmp_path: Path, taken_port: int) -> None:
    result = _daemon(tmp_path, "--mesh-port", str(taken_port))
    _refused_in_one_line(result, "mesh.port", f"127.0.0.1:{taken_port}", "in use")


def test_unparsable_mesh_host(tmp_path: Path) -> None:
    result = _daemon(tmp_path, "--config", _config(tmp_path, '[mesh]\nhost = "no host!"\n'))
    _refused_in_one_line(result, "mesh.host", "not an IP address or a host name")


def test_mesh_host_that_is_not_an_address_of_this_machine(tmp_path: Path) -> None:
    config = _config(tmp_path, f'[mesh]\nhost = "{NOT_LOCAL_ADDRESS}"\n')
    # Which check refuses it first (--dev wants a loopback mesh address) may vary; the
    # key it names may not.
    _refused_in_one_line(_daemon(tmp_path, "--config", config), "mesh.host", NOT_LOCAL_ADDRESS)


def test_config_section_that_is_not_a_table(tmp_path: Path) -> None:
    result = _daemon(tmp_path, "--config", _config(tmp_path, "http = 5\n"))
    _refused_in_one_line(result, "http", "expected a table")


async def test_database_missing_a_table(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with Store.open(data):  # the real schema, migrated
        pass
    with sqlite3.connect(data / DB_FILENAME) as conn:
        conn.execute("DROP TABLE audit_entries")
    result = _daemon(tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vsmcpd: "), result.stderr
    assert "table audit_entries is missing" in lines[0]
    assert str(data / DB_FILENAME) in lines[0]


def test_the_unit_does_not_restart_exit_2() -> None:
    unit = (REPO_ROOT / "systemd" / "vsmcpd.service").read_text()
    assert "\nRestartPreventExitStatus=2\n" in unit


def test_the_same_token_twice_is_refused_naming_the_entry(tmp_path: Path) -> None:
    secret = "0123456789abcdef0123"
    config = _config(
        tmp_path,
        "".join(
            f'[[mcp.tokens]]\nname = "{name}"\ntoken = "{secret}"\nzone = "{zone}"\n'
            for name, zone in (("ci", "public"), ("admin", "restricted"))
        ),
    )
    line = _refused_in_one_line(
        _daemon(tmp_path, "--config", config), "mcp.tokens[1].token", "mcp.tokens[0]"
    )
    assert secret not in line


def _on_path(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """Make `directory` importable by the daemons this test runs (they inherit the env)."""
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(directory) + (os.pathsep + path if path else ""))


def test_a_plugin_module_that_fails_to_import_names_the_entry_and_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "needs_a_token.py").write_text(
        'import os\n\nTOKEN = os.environ["NEEDS_A_TOKEN_SECRET"]\n\n\ndef tool():\n    return 1\n'
    )
    _on_path(monkeypatch, plugins)
    config = _config(
        tmp_path,
        '[[tools.plugins]]\nname = "fine"\ntarget = "tests.integration.plugin_tools:add"\n'
        '[[tools.plugins]]\nname = "broken"\ntarget = "needs_a_token:tool"\n',
    )
    _refused_in_one_line(
        _daemon(tmp_path, "--config", config),
        "tools.plugins[1].target",
        "importing 'needs_a_token' failed",
        "KeyError: 'NEEDS_A_TOKEN_SECRET'",
        f"{plugins / 'needs_a_token.py'}:3",
    )


def test_an_installed_entry_point_that_fails_to_import_names_the_key_and_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nodes: list[NodeProcess]
) -> None:
    site = tmp_path / "site"
    dist = site / "broken_tools-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-tools\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[vsmcp.tools]\nbroken = broken_tools:TOOLS\n")
    (site / "broken_tools.py").write_text("TOOLS = []\n1 / 0\n")
    _on_path(monkeypatch, site)
    _refused_in_one_line(
        _daemon(tmp_path),
        "tools.entry_points",
        "entry point 'broken' (broken_tools:TOOLS)",
        "ZeroDivisionError: division by zero",
    )
    # The key it names is the way round it: with entry points off the same node starts.
    off = _config(tmp_path, "[tools]\nentry_points = false\n")
    node = NodeProcess(tmp_path / "off", "--config", off, "--no-mdns")
    nodes.append(node)
    node.start()
