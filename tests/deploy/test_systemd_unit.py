"""systemd/vsmcpd.service checked by systemd's own tools (systemd-analyze verify, security)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.integration.harness import REPO_ROOT
from tests.skips import skip_or_fail

UNIT = REPO_ROOT / "systemd/vsmcpd.service"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")
# `systemd-analyze security` of the unit, as written down in docs/deploy.md (0 best, 10 worst).
DOCUMENTED_EXPOSURE = 1.5


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None or not SYSTEM_UNITS.is_dir():
        skip_or_fail("systemd-analyze is not installed (apt-get install systemd)")
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, timeout=120)


def verify_in_root(tmp_path: Path, unit_text: str, name: str) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` of a unit installed in a root holding systemd's own units
    and an executable at the unit's ExecStart= path (verify checks it exists)."""
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    exec_start = re.search(r"^ExecStart=(\S+)", unit_text, re.M)
    assert exec_start
    binary = root / exec_start[1].lstrip("/")
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system" / name).write_text(unit_text)
    return systemd_analyze("verify", f"--root={root}", f"/etc/systemd/system/{name}")


def test_the_unit_verifies(tmp_path: Path) -> None:
    result = verify_in_root(tmp_path, UNIT.read_text(), "vsmcpd.service")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_verify_reports_a_broken_unit(tmp_path: Path) -> None:
    # The check above could fail: a mistyped value is reported with its line.
    broken = UNIT.read_text().replace("NoNewPrivileges=yes", "NoNewPrivileges=maybe")
    result = verify_in_root(tmp_path, broken, "broken.service")
    assert "Failed to parse boolean value" in result.stderr


def test_security_exposure_is_no_worse_than_documented() -> None:
    result = systemd_analyze("security", "--offline=yes", str(UNIT))
    match = re.search(r"Overall exposure level for vsmcpd.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    exposure = float(match[1])
    assert exposure <= DOCUMENTED_EXPOSURE
    assert f"exposure {DOCUMENTED_EXPOSURE}" in (REPO_ROOT / "docs/deploy.md").read_text()
