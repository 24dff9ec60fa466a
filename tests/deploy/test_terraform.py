"""terraform/: every file parses (python-hcl2), the module's templates take exactly what
main.tf passes, and the rendered user-data is valid cloud-config (`cloud-init schema`).
No Terraform binary can be installed here; checkov runs in CI (.ci/run)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.terraform_render import (
    CONFIG_TEMPLATE,
    MODULE,
    USER_DATA_TEMPLATE,
    ModuleInputs,
    config_values,
    user_data,
    user_data_values,
)
from tests.integration.harness import REPO_ROOT
from tests.skips import require_module, skip_or_fail

TERRAFORM = REPO_ROOT / "terraform"
ROLE_VALIDATION = REPO_ROOT / "ansible/roles/vsmcp/tasks/validate.yml"
NODE_ID = "12D3KooWEQaqFft5KnBkAXg3vDss9SJf9KJ4Q6Nu1Ec1J2XFNtEi"
AUTHORITY = "40caf3f58bf69a7cec51a6c82a3b197a07b1ac43d4e64cd026112778b486bee6"


def load_hcl(path: Path) -> dict[str, Any]:
    hcl2 = require_module("hcl2")
    with path.open() as f:
        parsed: dict[str, Any] = hcl2.load(f)
    return parsed


@pytest.mark.parametrize(
    "path", sorted(TERRAFORM.rglob("*.tf")), ids=lambda p: str(p.relative_to(TERRAFORM))
)
def test_every_terraform_file_parses(path: Path) -> None:
    assert load_hcl(path)


def test_every_variable_and_output_is_typed_and_described() -> None:
    for path in TERRAFORM.rglob("variables.tf"):
        for block in load_hcl(path)["variable"]:
            ((name, body),) = block.items()
            assert body.get("description"), f"{path}: variable {name}"
            assert body.get("type"), f"{path}: variable {name}"
    for path in TERRAFORM.rglob("outputs.tf"):
        for block in load_hcl(path)["output"]:
            ((name, body),) = block.items()
            assert body.get("description"), f"{path}: output {name}"


def templatefile_arguments(main_tf: str, template: Path) -> set[str]:
    """The names main.tf passes to templatefile(<template>, { name = ... })."""
    name = re.escape(template.name)
    call = re.search(rf"/templates/{name}\", \{{(.*?)\n\s*\}}\)", main_tf, re.S)
    assert call, f"main.tf does not call templatefile on {template.name}"
    return set(re.findall(r"^\s*(\w+)\s*=", call[1], re.M))


@pytest.mark.parametrize(
    ("template", "renderer_values"),
    [(CONFIG_TEMPLATE, config_values), (USER_DATA_TEMPLATE, user_data_values)],
    ids=["vsmcp.toml", "user-data"],
)
def test_main_tf_passes_what_the_template_uses(template: Path, renderer_values: Any) -> None:
    main_tf = (MODULE / "main.tf").read_text()
    assert load_hcl(MODULE / "main.tf")
    inputs = ModuleInputs("node-a", NODE_ID, "{}", "cert", AUTHORITY)
    assert templatefile_arguments(main_tf, template) == set(renderer_values(inputs))


def cloud_init_schema(path: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("cloud-init") is None:
        skip_or_fail("cloud-init is not installed (apt-get install cloud-init)")
    return subprocess.run(
        ["cloud-init", "schema", "--config-file", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("os_packages", [["python3-venv"], []], ids=["packages", "no-packages"])
def test_rendered_user_data_is_valid_cloud_config(tmp_path: Path, os_packages: list[str]) -> None:
    inputs = ModuleInputs(
        "node-a",
        NODE_ID,
        '{"type": "ed25519"}',
        "-----BEGIN VSMCP NODE CERTIFICATE-----\nxx\n-----END VSMCP NODE CERTIFICATE-----\n",
        AUTHORITY,
        seeds=["10.0.0.11:7701"],
        pip_args=["--no-index", "--find-links", "/opt/vsmcp/wheels"],
        os_packages=os_packages,
    )
    path = tmp_path / "user-data"
    path.write_text(user_data(inputs))
    result = cloud_init_schema(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


def test_cloud_init_schema_rejects_a_broken_user_data(tmp_path: Path) -> None:
    # The check above could fail: a write_files entry with a bad encoding is refused.
    path = tmp_path / "user-data"
    path.write_text("#cloud-config\nwrite_files:\n  - path: /x\n    encoding: rot13\n")
    assert cloud_init_schema(path).returncode != 0


def test_the_module_and_the_role_accept_the_same_public_keys() -> None:
    (variable,) = (
        body
        for block in load_hcl(MODULE / "variables.tf")["variable"]
        for name, body in block.items()
        if name.strip('"') == "authority_public_key"
    )
    module_regex = re.search(r'regex\("(.*?)", var\.', variable["validation"][0]["condition"])
    role_regex = re.search(r"match\('(.*?)'\)", ROLE_VALIDATION.read_text())
    assert module_regex and role_regex
    pattern = module_regex[1].replace("\\\\", "\\")
    assert pattern == role_regex[1]
    assert re.fullmatch(pattern, AUTHORITY)
    assert re.fullmatch(pattern, NODE_ID)
    assert not re.fullmatch(pattern, "/root/authority.key")
    assert not re.fullmatch(pattern, AUTHORITY[:-1])
