"""The node's stdio secret: private, kept across restarts, replaced when unusable."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from vsmcp.node.mcp.stdio_auth import (
    STDIO_TOKEN_FILE_NAME,
    ensure_stdio_token,
    read_stdio_token,
)


def test_created_private_and_kept_across_restarts(tmp_path: Path) -> None:
    token = ensure_stdio_token(tmp_path)
    path = tmp_path / STDIO_TOKEN_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 32
    assert ensure_stdio_token(tmp_path) == token  # a running bridge survives a restart
    assert read_stdio_token(tmp_path) == token
    assert [p.name for p in tmp_path.iterdir()] == [STDIO_TOKEN_FILE_NAME]  # no temp left


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda p: p.chmod(0o644), "readable by others"),
        (lambda p: p.write_text("short\n"), "not a token"),
    ],
)
def test_an_unusable_secret_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: object, problem: str
) -> None:
    old = ensure_stdio_token(tmp_path)
    path = tmp_path / STDIO_TOKEN_FILE_NAME
    damage(path)  # type: ignore[operator]
    with caplog.at_level(logging.WARNING):
        new = ensure_stdio_token(tmp_path)
    assert new != old
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert problem in caplog.text


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("x" * 40 + "\n")
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(elsewhere, data / STDIO_TOKEN_FILE_NAME)
    token = ensure_stdio_token(data)
    assert token != "x" * 40
    assert not (data / STDIO_TOKEN_FILE_NAME).is_symlink()
    assert elsewhere.read_text() == "x" * 40 + "\n"


def test_the_bridge_reads_nothing_when_there_is_no_secret(tmp_path: Path) -> None:
    assert read_stdio_token(tmp_path) is None
    (tmp_path / STDIO_TOKEN_FILE_NAME).write_text("not a token at all!\n")
    assert read_stdio_token(tmp_path) is None
