"""`vsmcp patterns test`: a dry run of patterns over a recorded JSONL stream."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vsmcp.node.app.cli import main
from vsmcp.node.errors import EXIT_BAD_CONFIG
from vsmcp.node.vsm.events import Denial, EnvelopeRejected, Event, ToolCallFinished, encode_event

PATTERNS = """
[[patterns]]
name = "deny-burst"
kind = "denial"
group_by = "origin"
window = {count = 3, within_s = 10}
actions = [{type = "algedonic", valence = "pain", intensity = 0.8}]

[[patterns]]
name = "slow"
kind = "tool_call"
where = {field = "latency_ms", op = "gt", value = 1000}
"""


def record(path: Path, events: list[Event]) -> Path:
    path.write_bytes(b"".join(encode_event(e) + b"\n" for e in events))
    return path


def denial(ts: float, origin: str) -> Denial:
    return Denial(ts=ts, origin=origin, zone="ops", limit="rate", blocked="t")


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    patterns = tmp_path / "p.toml"
    patterns.write_text(PATTERNS)
    events: list[Event] = [denial(float(i), "mallory") for i in range(7)]
    events += [
        denial(8.0, "alice"),
        ToolCallFinished(ts=9, tool="t", provider="p", origin="o", zone="z", latency_ms=5000),
        EnvelopeRejected(ts=10, reason="bad_signature"),
    ]
    return patterns, record(tmp_path / "rec.jsonl", events)


def test_prints_each_match_and_the_counts(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    patterns, events = files
    assert main(["patterns", "test", str(patterns), "--events", str(events)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [
        "2.000000 deny-burst group='mallory' count=3 kind=denial actions=algedonic",
        "5.000000 deny-burst group='mallory' count=3 kind=denial actions=algedonic",
        "9.000000 slow count=1 kind=tool_call actions=-",
    ]
    assert out[3] == "-- 10 events, 2 patterns"
    assert out[4].split() == ["2", "deny-burst", "(groups", "2,", "evictions", "0)"]
    assert out[5].split() == ["1", "slow"]


def test_json_output(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    patterns, events = files
    assert main(["patterns", "test", str(patterns.parent), "--events", str(events), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line.get("pattern") for line in lines[:3]] == ["deny-burst", "deny-burst", "slow"]
    assert lines[0]["event"]["kind"] == "denial" and lines[0]["group"] == "mallory"
    assert lines[-1]["summary"]["matches"] == {"deny-burst": 2, "slow": 1}


def test_a_bad_pattern_exits_2_naming_file_and_pattern(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    patterns, events = files
    patterns.write_text(PATTERNS.replace("within_s = 10", "within_s = 0"))
    assert main(["patterns", "test", str(patterns), "--events", str(events)]) == EXIT_BAD_CONFIG
    err = capsys.readouterr().err
    assert f"{patterns}: pattern 'deny-burst': window: 'within_s' must be in (0" in err


def test_a_bad_event_line_exits_2_naming_the_line(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    patterns, events = files
    events.write_bytes(events.read_bytes() + b'{"kind":"denial","ts":"late"}\n')
    assert main(["patterns", "test", str(patterns), "--events", str(events)]) == EXIT_BAD_CONFIG
    assert f"{events}:11: " in capsys.readouterr().err


def test_runs_as_the_vsmcp_command(files: tuple[Path, Path]) -> None:
    patterns, _ = files
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vsmcp.node.app.cli",
            "patterns",
            "test",
            str(patterns),
            "--events",
            "/nope",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == EXIT_BAD_CONFIG
    assert "/nope" in result.stderr and "cannot read" in result.stderr
