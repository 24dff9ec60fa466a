"""terraform/modules/vsmcp-node's user-data, rendered without Terraform.

No Terraform or OpenTofu binary can be installed here. The module keeps its templates to
plain `${name}` substitutions of values main.tf computes with jsonencode/base64encode, so
this file can render them exactly; `test_terraform.py` checks that main.tf passes the
same names as `template_values` and that the templates use nothing else.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.harness import REPO_ROOT

MODULE = REPO_ROOT / "terraform/modules/vsmcp-node"
USER_DATA_TEMPLATE = MODULE / "templates/user-data.yaml.tftpl"
CONFIG_TEMPLATE = MODULE / "templates/vsmcp.toml.tftpl"
UNIT = REPO_ROOT / "systemd/vsmcpd.service"
PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


@dataclass
class ModuleInputs:
    """The module's variables (defaults as in variables.tf) for one node."""

    name: str
    node_id: str
    node_key: str
    certificate: str
    authority_public_key: str
    zones: list[str] = field(default_factory=lambda: ["public", "ops", "restricted"])
    mesh_name: str = "default"
    mesh_host: str = "eth0"
    mesh_port: int = 7701
    http_port: int = 7700
    seeds: list[str] = field(default_factory=list)
    mdns: bool = False
    preset: str = "lan"
    package: str = "vsmcp==0.1.0"
    pip_args: list[str] = field(default_factory=list)
    os_packages: list[str] = field(default_factory=lambda: ["python3-venv"])


def render(template: Path, values: dict[str, str]) -> str:
    """templatefile() for templates made only of `${name}` substitutions."""
    text = template.read_text()
    assert "%{" not in text and "$${" not in text, f"{template} uses template directives"
    used = set(PLACEHOLDER.findall(text))
    assert used == set(values), f"{template} uses {sorted(used)}, given {sorted(values)}"
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def config_values(i: ModuleInputs) -> dict[str, str]:
    """main.tf's arguments of templatefile(vsmcp.toml.tftpl): every value jsonencode()d."""
    values = {
        "name": i.name, "http_port": i.http_port, "mesh_host": i.mesh_host,
        "mesh_port": i.mesh_port, "mesh_name": i.mesh_name, "preset": i.preset,
        "mdns": i.mdns, "seeds": i.seeds, "authority_public_key": i.authority_public_key,
        "zones": i.zones,
    }  # fmt: skip
    return {k: json.dumps(v) for k, v in values.items()}


def user_data_values(i: ModuleInputs) -> dict[str, str]:
    """main.tf's arguments of templatefile(user-data.yaml.tftpl)."""
    pip_install = ["/opt/vsmcp/venv/bin/pip", "install", "--quiet", *i.pip_args, i.package]
    return {
        "node_name": i.name,
        "node_id": i.node_id,
        "packages": f"packages: {json.dumps(i.os_packages)}" if i.os_packages else "",
        "unit_b64": _b64(UNIT.read_text()),
        "config_b64": _b64(render(CONFIG_TEMPLATE, config_values(i))),
        "node_key_b64": _b64(i.node_key),
        "certificate_b64": _b64(i.certificate),
        "pip_install": json.dumps(pip_install),
    }


def user_data(i: ModuleInputs) -> str:
    """The module's output user_data[name]."""
    return render(USER_DATA_TEMPLATE, user_data_values(i))
