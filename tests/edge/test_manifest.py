"""Manifests: fields, the module beside the manifest, and grants checked against the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.edge.conftest import EXAMPLES, MODULES
from vsmcp.edge.errors import ManifestError
from vsmcp.edge.grants import EdgePermissions
from vsmcp.edge.manifest import load_manifest


def test_example_manifest_reads_with_its_module_beside_it() -> None:
    manifest = load_manifest(EXAMPLES / "echo.toml")
    assert manifest.name == "wasm.echo"
    assert manifest.module == EXAMPLES / "echo.wat"
    assert manifest.limits.timeout_ms == 1000
    assert manifest.limits.memory_mb == 16
    assert manifest.grants.dirs == [] and not manifest.grants.clock
    assert manifest.probe is None  # unaudited unless it declares one


def test_a_manifest_declares_its_probe(tmp_path: Path) -> None:
    (tmp_path / "x.wat").write_text((MODULES / "trap.wat").read_text())
    path = tmp_path / "x.toml"
    path.write_text('name = "x"\n[probe]\narguments = { a = 1 }\nexpect = { required = ["a"] }\n')
    probe = load_manifest(path).probe
    assert probe is not None
    assert (probe.arguments, probe.expect) == ({"a": 1}, {"required": ["a"]})


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('description = "no name"', "name"),
        ('name = "x"\nmodule = "missing.wasm"', "missing.wasm"),
        ('name = "x"\nunknown = 1', "unknown"),
        ('name = "x"\n[limits]\ntimeout_ms = 0', "timeout_ms"),
        ('name = "x"\n[limits]\nmemory_mb = 100000', "memory_mb"),
        ('name = "x"\ninput_schema = { type = "string" }', "input_schema"),
        ('name = "x"\n[grants]\nnetwork = true', "grants.network"),
        ('name = "x"\n[grants]\nclock = true', "edge.allow_clock"),
        ('name = "x"\n[grants]\nenv = ["HOME"]', "edge.allow_env"),
        ('name = "x"\n[grants]\ndirs = [{ host = "/", guest = "/root" }]', "edge.allow_dirs"),
        ('name = "x"\nthis is not toml', "TOML"),
        ('name = "x"\n[probe]\nargs = {}', "probe"),
        ('name = "x"\n[probe]\nexpect = []', "probe.expect"),
    ],
)
def test_a_bad_manifest_is_refused_naming_the_field(
    tmp_path: Path, text: str, problem: str
) -> None:
    (tmp_path / "x.wat").write_text((MODULES / "trap.wat").read_text())
    path = tmp_path / "x.toml"
    path.write_text(text)
    with pytest.raises(ManifestError, match=problem.replace(".", r"\.")):
        load_manifest(path, EdgePermissions())


def test_grants_within_what_the_config_allows_are_accepted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "x.wat").write_text((MODULES / "trap.wat").read_text())
    path = tmp_path / "x.toml"
    path.write_text(
        'name = "x"\n[grants]\nclock = true\nenv = ["LANG"]\n'
        'dirs = [{ host = "data", guest = "/data" }]\n'
    )
    allowed = EdgePermissions(dirs=(tmp_path,), env=frozenset({"LANG"}), clock=True)
    manifest = load_manifest(path, allowed)
    assert manifest.grants.clock and manifest.grants.env == ["LANG"]
    assert manifest.grants.dirs[0].guest == "/data"
