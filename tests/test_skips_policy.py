"""The skip rule holds: a test skips only through `tests/skips.py`, so that
`VSMCP_REQUIRE_SERVICES=1` turns every skip into a failure (a green CI run never hides
a test that did not run)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import skips

TESTS = Path(__file__).resolve().parent
HELPER = TESTS / "skips.py"
# Spelled as patterns, so this file does not match itself.
FORBIDDEN = re.compile(r"pytest\.skip\(|importorskip\(|skipif\(|mark\.skip\b|unittest\.skip")


def test_no_skip_outside_the_skip_helper() -> None:
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if path == HELPER:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if FORBIDDEN.search(line):
                offenders.append(f"{path.relative_to(TESTS.parent)}:{number}: {line.strip()}")
    assert offenders == [], "skip through tests/skips.py instead:\n" + "\n".join(offenders)


def test_the_policy_sees_every_spelling(tmp_path: Path) -> None:
    # Split in two so that this file does not match itself.
    spellings = [
        "pytest." + "skip('x')",
        "pytest.importor" + "skip('x')",
        "@pytest.mark.skipi" + "f(True, reason='x')",
        "@pytest.mark." + "skip",
        "pytestmark = pytest.mark." + "skip(reason='x')",
    ]
    assert all(FORBIDDEN.search(s) for s in spellings)
    assert not FORBIDDEN.search("skip_or_fail('x')")


def test_the_helper_skips_or_fails_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(skips, "REQUIRE_SERVICES", False)
    with pytest.raises(pytest.skip.Exception, match="no widget"):
        skips.skip_or_fail("no widget")
    monkeypatch.setattr(skips, "REQUIRE_SERVICES", True)
    with pytest.raises(pytest.fail.Exception, match="no widget"):
        skips.skip_or_fail("no widget")
    with pytest.raises(pytest.fail.Exception, match="no_such_module_for_vsmcp"):
        skips.require_module("no_such_module_for_vsmcp")
