"""The module's rendered user-data executed by cloud-init (its NoCloud datasource, every
boot stage) in a throwaway Debian root; the node it leaves, started from that root as its
unit would, joins a mesh with a node the test starts, on certificates of the test's own
authority."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.deploy.root_files import assert_installed
from tests.deploy.root_node import RootNode
from tests.deploy.rootfs import in_root
from tests.deploy.terraform_render import ModuleInputs, user_data
from tests.integration.harness import (
    REPO_ROOT,
    NodeProcess,
    mesh_name_for,
    run_cli,
    wait_mesh_states,
)

pytestmark = pytest.mark.integration

STAGE_TIMEOUT_S = 600
# The image's wheelhouse: this root stands for an image with vsmcp's wheels baked in, so
# the boot installs offline (the module's pip_args say where).
IMAGE_WHEELS = "opt/vsmcp/wheels"
# The cloud and the image: a NoCloud seed; no network configuration (the root has no
# network of its own); the one locale a minbase root has (cloud-init's default, en_US,
# is not installable there).
IMAGE_CFG = "datasource_list: [NoCloud]\nnetwork: {config: disabled}\nlocale: C.UTF-8\n"
BOOT_STAGES = (
    ["cloud-init", "init", "--local"],
    ["cloud-init", "init"],
    ["cloud-init", "modules", "--mode=config"],
    ["cloud-init", "modules", "--mode=final"],
)


def keys_for(data_dir: Path, authority_key: Path, zone: str) -> tuple[str, Path]:
    """A node key made in `data_dir` and its certificate: (node id, certificate path)."""
    made = run_cli("keys", "node", "--data-dir", str(data_dir), "--json")
    assert made.returncode == 0, made.stderr
    node_id = str(json.loads(made.stdout)["node_id"])
    cert = data_dir / "node.cert"
    issued = run_cli("keys", "issue", "--authority-key", str(authority_key),
                     "--node", node_id, "--zone", zone, "--out", str(cert))  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    return node_id, cert


def boot(root: Path, user_data_text: str) -> None:
    """Every cloud-init stage of a first boot, the user-data coming from a NoCloud seed."""
    seed = root / "var/lib/cloud/seed/nocloud"
    seed.mkdir(parents=True)
    (seed / "user-data").write_text(user_data_text)
    (seed / "meta-data").write_text("instance-id: iid-vsmcp-test\nlocal-hostname: node-b\n")
    (root / "etc/cloud/cloud.cfg.d/90-test-image.cfg").write_text(IMAGE_CFG)
    for stage in BOOT_STAGES:
        result = subprocess.run(
            in_root(root, stage, as_a_machine=True),
            capture_output=True,
            text=True,
            timeout=STAGE_TIMEOUT_S,
        )
        assert result.returncode == 0, f"{stage}:\n{result.stdout[-4000:]}{result.stderr[-4000:]}"


def test_user_data_leaves_a_node_that_joins_the_mesh(
    throwaway_root: Path, wheelhouse: Path, nodes: list[NodeProcess], tmp_path: Path
) -> None:
    root = throwaway_root
    shutil.copytree(wheelhouse, root / IMAGE_WHEELS)
    (wheel,) = wheelhouse.glob("vsmcp-*.whl")
    version = wheel.name.split("-")[1]

    made = run_cli("keys", "init-authority", "--out", str(tmp_path / "authority.key"))
    assert made.returncode == 0, made.stderr
    authority = re.search(r"authority public key: (\w+)", made.stdout)[1]  # type: ignore[index]

    # The node the test starts, certified by the same authority.
    a_dir = tmp_path / "mesh" / "a"
    keys_for(a_dir, tmp_path / "authority.key", "ops")
    a = NodeProcess(
        a_dir, "--no-mdns", dev=False, env={"VSMCP_TRUST_AUTHORITY_PUBLIC_KEY": authority}
    )
    nodes.append(a)
    a.start()

    # The host's key and certificate, made where the operator keeps the authority.
    b_id, b_cert = keys_for(tmp_path / "keys" / "b", tmp_path / "authority.key", "ops")
    inputs = ModuleInputs(
        name="node-b",
        node_id=b_id,
        node_key=(tmp_path / "keys/b/node.key").read_text(),
        certificate=b_cert.read_text(),
        authority_public_key=authority,
        mesh_name=mesh_name_for(a_dir),
        mesh_host="127.0.0.1",
        mesh_port=0,
        http_port=0,
        seeds=[f"127.0.0.1:{a.mesh_port}"],
        package=f"vsmcp=={version}",
        pip_args=["--no-index", "--find-links", f"/{IMAGE_WHEELS}"],
        os_packages=[],
    )
    boot(root, user_data(inputs))

    status = subprocess.run(
        in_root(root, ["cloud-init", "status", "--long"]), capture_output=True, text=True
    )
    assert "status: done" in status.stdout, status.stdout + status.stderr
    assert_installed(root)
    assert (root / "var/lib/vsmcp/node.key").read_text() == inputs.node_key
    config = tomllib.loads((root / "etc/vsmcp/vsmcp.toml").read_text())
    assert config["mesh"]["seeds"] == inputs.seeds
    assert config["trust"]["authority_public_key"] == authority
    unit = (root / "etc/systemd/system/vsmcpd.service").read_bytes()
    assert unit == (REPO_ROOT / "systemd/vsmcpd.service").read_bytes()

    b = RootNode(root, tmp_path)
    nodes.append(b)
    b.start()
    assert b.node_id == b_id
    wait_mesh_states([a, b], {a.node_id: "alive", b.node_id: "alive"}, timeout_s=60)
