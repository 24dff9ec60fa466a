"""Fixtures of the deployment tests: a cached Debian root, a wheelhouse of this checkout."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.rootfs import cached_root, copy_root, require_root_tools, wheelhouse_of_checkout

# Started nodes are stopped, and their logs printed on failure, as in tests/integration.
from tests.integration.conftest import nodes, pytest_runtest_makereport  # noqa: F401


@pytest.fixture(scope="session")
def base_root() -> Path:
    """The debootstrapped root, built once and cached across sessions (never modified)."""
    require_root_tools()
    return cached_root()


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vsmcp's wheel built from this checkout and the wheels of its dependencies."""
    require_root_tools()
    house = tmp_path_factory.mktemp("wheelhouse")
    wheelhouse_of_checkout(house)
    return house


@pytest.fixture
def throwaway_root(base_root: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of the base root for one test, removed after it."""
    root = copy_root(base_root, tmp_path / "root")
    yield root
    shutil.rmtree(root, ignore_errors=True)
