"""The pattern engine in a real `vsmcpd`: a pattern from `vsm.patterns_dir` matches on
real traffic, `GET /api/patterns` shows its count, and a bad file written while the
node runs is refused with its name while the running set keeps matching."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import NodeProcess, call_tool, counters, run_daemon
from tests.polling import wait_for

pytestmark = pytest.mark.integration

TOKENS = {"attacker": "attacker-token-0123456789", "good": "good-token-0123456789abc"}

PROBE = """
[[patterns]]
name = "probe"
kind = "denial"
where = {field = "limit", op = "eq", value = "zone"}
group_by = "origin"
window = {count = 3, within_s = 10}
actions = [{type = "emit", label = "zone-probe"}]

[[patterns]]
name = "probe-seen"
kind = "pattern_matched"
where = {field = "label", op = "eq", value = "zone-probe"}
"""

BAD = """
[[patterns]]
name = "broken"
kind = "denial"
where = {field = "limit", op = "like", value = "zone"}
"""


def _config(patterns_dir: Path) -> str:
    tokens = "".join(
        f'[[mcp.tokens]]\nname = "{name}"\ntoken = "{token}"\nzone = "public"\n'
        for name, token in TOKENS.items()
    )
    return f"""
[node]
debug_api = true
[tools]
entry_points = false
[vsm]
patterns_dir = "{patterns_dir}"
patterns_poll_s = 0.2
{tokens}
"""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    patterns_dir = tmp_path / "patterns"
    patterns_dir.mkdir()
    (patterns_dir / "probe.toml").write_text(PROBE)
    config = tmp_path / "node.toml"
    config.write_text(_config(patterns_dir))
    process = NodeProcess(tmp_path / "data", "--config", str(config)).start()
    try:
        assert process.post("/api/debug/tools?name=secret.echo&zone=restricted") == 200
        yield process
    finally:
        process.stop()


def _call(
    node: NodeProcess, who: str, tool: str, arguments: dict[str, Any] | None = None
) -> dict[str, Any]:
    return call_tool(node, TOKENS[who], tool, arguments)


def _patterns(node: NodeProcess) -> dict[str, dict[str, Any]]:
    """The node's patterns apart from the immune system's built-in ones."""
    patterns = node.get_json("/api/patterns")["patterns"]
    return {p["name"]: p for p in patterns if p["source"] != "vsm.immune"}


def test_three_zone_denials_of_one_origin_match_and_show_in_api_patterns(
    node: NodeProcess, tmp_path: Path
) -> None:
    listed = _patterns(node)
    assert set(listed) == {"probe", "probe-seen"}
    assert listed["probe"]["matches"] == 0
    assert listed["probe"]["kinds"] == ["denial"]
    assert listed["probe"]["source"] == f"dir:{tmp_path / 'patterns'}"
    # Two denials of the good caller and three of the attacker, interleaved: only the
    # attacker's group reaches three.
    for who in ("good", "attacker", "good", "attacker", "attacker"):
        assert "error" in _call(node, who, "secret.echo")
    assert "result" in _call(node, "good", "echo", {"text": "hi"})

    def matched() -> dict[str, dict[str, Any]] | None:
        patterns = _patterns(node)
        return patterns if patterns["probe-seen"]["matches"] >= 1 else None

    patterns = wait_for(matched, timeout_s=20, what="the probe pattern and its emitted event")
    assert patterns["probe"]["matches"] == 1
    assert patterns["probe"]["window"]["groups"] >= 1
    assert patterns["probe-seen"]["matches"] == 1
    events = counters(node, "vsmcp_events")
    assert events["denial"] == 5
    assert events["pattern_matched"] == 1
    assert counters(node, "vsmcp_pattern_matches")["probe"] == 1

    # A bad file while running: refused with its name, the running set keeps matching.
    (tmp_path / "patterns" / "zz.toml").write_text(BAD)

    def refused() -> str | None:
        error = node.get_json("/api/patterns")["last_error"]
        return error if error else None

    error = wait_for(refused, timeout_s=20, what="the bad file refused")
    assert "zz.toml" in error and "broken" in error and "like" in error
    assert "zz.toml" in node.log_text()
    assert set(_patterns(node)) == {"probe", "probe-seen"}
    for _ in range(3):
        _call(node, "attacker", "secret.echo")
    wait_for(
        lambda: _patterns(node)["probe"]["matches"] == 2,
        timeout_s=20,
        what="the kept pattern matching again",
    )


def test_a_bad_pattern_file_at_start_stops_the_node_naming_the_key_and_the_file(
    tmp_path: Path,
) -> None:
    patterns_dir = tmp_path / "patterns"
    patterns_dir.mkdir()
    (patterns_dir / "bad.toml").write_text(BAD)
    config = tmp_path / "node.toml"
    config.write_text(f'[vsm]\npatterns_dir = "{patterns_dir}"\n')
    result = run_daemon(
        "--dev",
        "--no-mdns",
        "--data-dir",
        str(tmp_path / "data"),
        "--http-port",
        "0",
        "--mesh-port",
        "0",
        "--config",
        str(config),
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("vsmcpd: config key 'vsm.patterns_dir': "), line
    assert "bad.toml" in line and "broken" in line and "like" in line, line
