"""python-zeroconf from its sources (mesh._zeroconf_sources), each case in a fresh
interpreter: which kind of module a process runs is decided at its first import."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

from tests.fresh_python import run_python
from tests.skips import skip_or_fail
from vsmcp.mesh._zeroconf_sources import _source_beside, installed_extensions

# Prints what the process ended up with: each zeroconf module's file, and what the
# module under test reports.
_REPORT = """
import json, sys
from vsmcp.mesh import _zeroconf_sources
print(json.dumps({
    "files": sorted(
        m.__file__ for n, m in sys.modules.items()
        if (n == "zeroconf" or n.startswith("zeroconf.")) and getattr(m, "__file__", None)
    ),
    "compiled": _zeroconf_sources.compiled(),
    "preferred": PREFERRED,
}))
"""


def _run(prologue: str, path: Path | None = None) -> dict[str, Any]:
    code = "PREFERRED = None\n" + prologue + _REPORT
    if path is not None:  # a zeroconf of the test's own, found before the installed one
        code = f"import sys; sys.path.insert(0, {str(path)!r})\n" + code
    report: dict[str, Any] = json.loads(run_python(code))
    return report


def _needs_extensions() -> None:
    if not installed_extensions():  # found without importing zeroconf into this process
        skip_or_fail("the installed zeroconf has no compiled extensions (built without Cython)")


def test_after_prefer_sources_every_zeroconf_module_is_its_python_source() -> None:
    _needs_extensions()
    report = _run(
        "from vsmcp.mesh._zeroconf_sources import prefer_sources\n"
        "PREFERRED = prefer_sources()\n"
        "import zeroconf, zeroconf.asyncio\n"
    )
    assert report["preferred"] is True
    assert report["compiled"] is False
    assert len(report["files"]) > 20
    assert [f for f in report["files"] if not f.endswith(".py")] == []


def test_without_it_zeroconf_imports_its_extensions() -> None:
    _needs_extensions()
    report = _run("import zeroconf, zeroconf.asyncio\n")
    assert report["compiled"] is True
    assert any(not f.endswith(".py") for f in report["files"])


def test_an_already_imported_zeroconf_is_left_compiled_never_mixed() -> None:
    _needs_extensions()
    report = _run(
        "import zeroconf\n"
        "from vsmcp.mesh._zeroconf_sources import prefer_sources\n"
        "PREFERRED = prefer_sources()\n"
        "import zeroconf.asyncio\n"
    )
    assert report["preferred"] is False
    assert report["compiled"] is True
    # The compiled modules check each other's C types: none of them may be a source.
    compiled_dirs = {str(Path(f).parent) for f in report["files"] if not f.endswith(".py")}
    sources_with_extension = [
        f for f in report["files"] if f.endswith(".py") and _has_extension_beside(f)
    ]
    assert compiled_dirs
    assert sources_with_extension == []


def test_an_extension_without_its_source_keeps_every_module_compiled(tmp_path: Path) -> None:
    _needs_extensions()
    # One compiled module among sources fails at import (their C types are checked).
    installed = installed_extensions()
    package = next(p for p in installed[0].parents if p.name == "zeroconf")
    copy = tmp_path / "site" / "zeroconf"
    shutil.copytree(package, copy)
    (copy / "_cache.py").unlink()
    report = _run(
        "from vsmcp.mesh._zeroconf_sources import prefer_sources\n"
        "PREFERRED = prefer_sources()\n"
        "import zeroconf, zeroconf.asyncio\n",
        path=tmp_path / "site",
    )
    assert report["preferred"] is False
    assert report["compiled"] is True
    assert all(f.startswith(str(copy)) for f in report["files"])
    assert [f for f in report["files"] if f.endswith(".py") and _has_extension_beside(f)] == []


def test_finding_the_extensions_does_not_import_zeroconf() -> None:
    report = _run(
        "from vsmcp.mesh._zeroconf_sources import installed_extensions\n"
        "PREFERRED = len(installed_extensions())\n"
    )
    assert report["files"] == []
    assert report["preferred"] == len(installed_extensions())


def test_before_zeroconf_is_imported_nothing_is_reported() -> None:
    report = _run("")
    assert report["compiled"] is None
    assert report["files"] == []


def test_a_source_is_found_beside_an_extension_only_if_it_exists(tmp_path: Path) -> None:
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (tmp_path / f"_dns{suffix}").write_bytes(b"")
    (tmp_path / "_dns.py").write_text("")
    (tmp_path / f"_cache{suffix}").write_bytes(b"")
    assert _source_beside(str(tmp_path / f"_dns{suffix}")) == str(tmp_path / "_dns.py")
    assert _source_beside(str(tmp_path / f"_cache{suffix}")) is None
    assert _source_beside(str(tmp_path / "_dns.txt")) is None


def _has_extension_beside(source: str) -> bool:
    stem = source[: -len(".py")]
    return any(Path(stem + s).exists() for s in importlib.machinery.EXTENSION_SUFFIXES)
