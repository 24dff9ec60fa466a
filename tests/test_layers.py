"""The layering rules hold: import-linter's contracts in pyproject.toml (crdt <- mesh <- node;
the VSM systems and the S1 units never import the HTTP layer or the MCP gateway)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.skips import require_module

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = require_module("importlinter.cli")
    monkeypatch.chdir(REPO_ROOT)
    exit_code = cli.lint_imports(config_filename=str(REPO_ROOT / "pyproject.toml"), no_cache=True)
    out = capsys.readouterr().out
    assert exit_code == 0, out
    assert "0 broken" in out
