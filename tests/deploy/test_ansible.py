"""The `vsmcp` role applied for real: ansible-playbook (connection local) inside a
throwaway Debian root, then the node started from that root as its unit would."""

from __future__ import annotations

import re
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.play import DEPLOY_DIR, ISSUER_KEY, Play, recap
from tests.deploy.root_files import assert_installed, passwd_entry
from tests.deploy.root_node import RootNode
from tests.deploy.rootfs import copy_root
from tests.integration.harness import REPO_ROOT, NodeProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def play(throwaway_root: Path, wheelhouse: Path) -> Play:
    return Play(throwaway_root, wheelhouse)


def test_the_role_installs_a_node_that_starts_and_a_second_run_changes_nothing(
    play: Play, nodes: list[NodeProcess], tmp_path: Path
) -> None:
    root = play.root
    first = play.run()
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
    assert recap(first)["failed"] == 0
    assert recap(first)["changed"] > 0

    assert_installed(root)
    config = tomllib.loads((root / "etc/vsmcp/vsmcp.toml").read_text())
    assert config["trust"]["authority_public_key"] == play.authority_public_key
    assert config["node"]["data_dir"] == "/var/lib/vsmcp"
    unit = (root / "etc/systemd/system/vsmcpd.service").read_bytes()
    assert unit == (REPO_ROOT / "systemd/vsmcpd.service").read_bytes()
    # The certificate the control node issued is the one in place; no authority key went
    # into the node's directories.
    (issued,) = (root / DEPLOY_DIR / "ansible/certificates").glob("localhost-*.cert")
    assert (root / "var/lib/vsmcp/node.cert").read_bytes() == issued.read_bytes()
    authority_key = (root / ISSUER_KEY).read_bytes()
    for path in [*(root / "var/lib/vsmcp").iterdir(), *(root / "etc/vsmcp").iterdir()]:
        assert authority_key not in path.read_bytes()

    second = play.run()
    assert second.returncode == 0, second.stdout[-6000:]
    assert recap(second)["changed"] == 0, second.stdout[-6000:]

    node = RootNode(root, tmp_path)
    nodes.append(node)
    node.start()
    assert node.get_json("/healthz")["status"] == "ok"
    assert issued.name == f"localhost-{node.node_id}.cert"
    # Running as the unit's user, not as root.
    status = Path(f"/proc/{node.pid}/status").read_text()
    uid = re.search(r"^Uid:\s+(\d+)", status, re.M)[1]  # type: ignore[index]
    assert uid == passwd_entry(root, "vsmcp")[2]


BAD_INPUT = [
    pytest.param(
        {"vsmcp_certificate_issuer_key": None}, "vsmcp_certificate_issuer_key", id="no-issuer-key"
    ),
    pytest.param(
        {"vsmcp_authority_public_key": f"/{ISSUER_KEY}"},
        "vsmcp_authority_public_key",
        id="authority-key-path-as-public-key",
    ),
    pytest.param(
        {"vsmcp_certificate_zone": "galaxy"}, "vsmcp_certificate_zone", id="zone-not-in-zones"
    ),
]


@pytest.fixture(scope="module")
def bad_input_play(
    base_root: Path, wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Play]:
    """One root for the bad-input cases: each must fail before changing anything."""
    root = copy_root(base_root, tmp_path_factory.mktemp("bad-input") / "root")
    yield Play(root, wheelhouse)
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize(("overrides", "variable"), BAD_INPUT)
def test_bad_variables_fail_the_play_early_naming_the_variable(
    bad_input_play: Play, overrides: dict[str, Any], variable: str
) -> None:
    result = bad_input_play.run(**overrides)
    assert result.returncode != 0
    failed = result.stdout[result.stdout.index("fatal:") :]
    assert variable in failed, failed
    assert recap(result)["changed"] == 0
    root = bad_input_play.root
    assert not (root / "opt/vsmcp").exists()
    assert "\nvsmcp:" not in (root / "etc/passwd").read_text()
    assert not (root / "etc/vsmcp").exists()
