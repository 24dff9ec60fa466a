"""site.yml applied inside a throwaway root: the root is both control node and host."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.deploy.rootfs import ROOT_ANSIBLE, in_root
from tests.integration.harness import REPO_ROOT, mesh_name_for, run_cli

PLAY_TIMEOUT_S = 900
DEPLOY_DIR = "srv/deploy"  # the repo's ansible/ and systemd/ as the control node has them
WHEELS_DIR = "srv/wheels"
ISSUER_KEY = "root/authority.key"  # control node only
INVENTORY = """\
vsmcp:
  hosts:
    localhost:
      ansible_connection: local
      ansible_python_interpreter: /usr/bin/python3
"""


class Play:
    """site.yml run inside a root: its control node and its one host."""

    def __init__(self, root: Path, wheelhouse: Path) -> None:
        self.root = root
        deploy = root / DEPLOY_DIR
        shutil.copytree(REPO_ROOT / "ansible", deploy / "ansible")
        shutil.copytree(REPO_ROOT / "systemd", deploy / "systemd")
        (deploy / "inventory.yml").write_text(INVENTORY)
        shutil.copytree(wheelhouse, root / WHEELS_DIR)
        out = run_cli("keys", "init-authority", "--out", str(root / ISSUER_KEY))
        assert out.returncode == 0, out.stderr
        self.authority_public_key = re.search(r"authority public key: (\w+)", out.stdout)[1]  # type: ignore[index]
        self.vars: dict[str, Any] = {
            "vsmcp_authority_public_key": self.authority_public_key,
            "vsmcp_certificate_issuer_key": f"/{ISSUER_KEY}",
            "vsmcp_certificate_zone": "ops",
            "vsmcp_wheelhouse_src": f"/{WHEELS_DIR}",
            # The control node is this same root: its vsmcp is the one the role installs.
            "vsmcp_control_cli": "/opt/vsmcp/venv/bin/vsmcp",
            "vsmcp_http_port": 0,
            "vsmcp_mesh_host": "127.0.0.1",
            "vsmcp_mesh_port": 0,
            "vsmcp_mesh_name": mesh_name_for(root / "var/lib/vsmcp"),
        }

    def run(self, **overrides: Any) -> subprocess.CompletedProcess[str]:
        variables = {**self.vars, **overrides}
        variables = {k: v for k, v in variables.items() if v is not None}
        (self.root / DEPLOY_DIR / "vars.json").write_text(json.dumps(variables))
        argv = [f"{ROOT_ANSIBLE}/bin/ansible-playbook", "-i", f"/{DEPLOY_DIR}/inventory.yml",
                f"/{DEPLOY_DIR}/ansible/site.yml", "-e", f"@/{DEPLOY_DIR}/vars.json"]  # fmt: skip
        env = {"ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
        return subprocess.run(
            in_root(self.root, argv, env=env),
            capture_output=True,
            text=True,
            timeout=PLAY_TIMEOUT_S,
        )


def recap(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """The PLAY RECAP counters of the host: {'ok': 25, 'changed': 0, 'failed': 0, ...}."""
    line = re.search(r"^localhost\s+:\s+(.*)$", result.stdout, re.M)
    assert line, f"no PLAY RECAP in:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line[1])}
