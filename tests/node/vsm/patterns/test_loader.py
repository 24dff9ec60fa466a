"""A directory of pattern files reloaded into an engine, all or nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vsmcp.node.vsm.errors import PatternError
from vsmcp.node.vsm.events import NODE_CATALOG, Denial
from vsmcp.node.vsm.patterns import Match, PatternEngine
from vsmcp.node.vsm.patterns.loader import PatternDirectory

BURST = {
    "name": "burst",
    "kind": "denial",
    "group_by": "origin",
    "window": {"count": 3, "within_s": 100},
}


def denial(ts: float) -> Denial:
    return Denial(ts=ts, origin="o", zone="ops", limit="rate", blocked="t")


def write(path: Path, patterns: list[dict[str, object]]) -> None:
    path.write_text(json.dumps({"patterns": patterns}))


def test_reload_swaps_on_change_and_keeps_the_old_set_on_a_bad_file(tmp_path: Path) -> None:
    matches: list[Match] = []
    engine = PatternEngine(matches.append, NODE_CATALOG)
    directory = PatternDirectory(tmp_path, engine)
    write(tmp_path / "a.json", [BURST])
    report = directory.reload()
    assert report is not None and report.fresh == ["burst"]
    assert directory.reload() is None  # nothing changed
    engine.process_batch([denial(0), denial(1)])

    (tmp_path / "b.toml").write_text(
        '[[patterns]]\nname = "bad"\nkind = "denial"\n'
        'where = {field = "origin", op = "regex", value = "("}\n'
    )
    with pytest.raises(PatternError) as info:
        directory.reload()
    assert info.value.source.endswith("b.toml") and info.value.pattern == "bad"
    assert "bad regex" in info.value.reason
    assert directory.refused == 1 and directory.last_error is info.value
    assert [p.name for p in engine.patterns] == ["burst"]
    engine.process_batch([denial(2)])  # the old set ran on, its window intact
    assert [(m.pattern, m.count) for m in matches] == [("burst", 3)]

    (tmp_path / "b.toml").write_text('[[patterns]]\nname = "all"\nkind = "denial"\n')
    report = directory.reload()
    assert report is not None and report.kept == ["burst"]
    assert [p.name for p in engine.patterns] == ["burst", "all"]
    assert directory.last_error is None and directory.reloads == 2


def test_an_unreadable_directory_is_refused(tmp_path: Path) -> None:
    directory = PatternDirectory(tmp_path / "absent", PatternEngine(lambda m: None))
    with pytest.raises(PatternError, match="cannot list"):
        directory.reload()
