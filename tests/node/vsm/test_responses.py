"""System 5's response rules: matching, and the config keys refused naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vsmcp.node.app.config import load_config
from vsmcp.node.errors import ConfigError
from vsmcp.node.vsm.algedonic import Signal
from vsmcp.node.vsm.responses import ResponseRule, default_rules


def sig(source: str = "http:ops", valence: str = "pain", intensity: float = 0.9) -> Signal:
    return Signal(1, 0.0, source, valence, intensity, "")  # type: ignore[arg-type]


def test_rule_matches_on_intensity_valence_and_source_glob() -> None:
    rule = ResponseRule(name="r", do="alert", when=0.8, source="pattern:*")
    assert rule.matches(sig("pattern:storm", intensity=0.8))
    assert not rule.matches(sig("pattern:storm", intensity=0.79))
    assert not rule.matches(sig("http:ops"))
    assert not rule.matches(sig("pattern:storm", valence="pleasure"))
    anything = ResponseRule(name="a", do="alert", valence="any")
    assert anything.matches(sig(valence="pleasure", intensity=0.0))


def test_default_rule_tightens_to_half_for_a_minute() -> None:
    (rule,) = default_rules()
    assert (rule.do, rule.scale, rule.seconds, rule.valence) == ("tighten_limit", 0.5, 60.0, "pain")
    assert load_config(environ={}).vsm.response_rules == default_rules()
    assert load_config(environ={}, overrides={"vsm.responses": []}).vsm.response_rules == []


def _load(tmp_path: Path, toml: str) -> Any:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    return load_config(path, environ={})


@pytest.mark.parametrize(
    ("rule", "key"),
    [
        ('name = "a"\ndo = "explode"', "vsm.responses[0].do"),
        ('name = "a"\ndo = "alert"\nwhen = 1.5', "vsm.responses[0].when"),
        ('name = "a"\ndo = "alert"\nduration_s = 5', "vsm.responses[0].duration_s"),
        ('name = "a"\ndo = "shed"\nfactor = 0.5', "vsm.responses[0].factor"),
        ('name = "a"\ndo = "tighten_limit"\nfactor = 0', "vsm.responses[0].factor"),
        ('name = "a"\ndo = "tighten_limit"\npriority = "low"', "vsm.responses[0].priority"),
        ('name = "a"\ndo = "shed"\npriority = "critical"', "vsm.responses[0].priority"),
        ('name = "a"\ndo = "shed"\nduration_s = -1', "vsm.responses[0].duration_s"),
        ('name = "a"\ndo = "block_origin"\ntarget = ""', "vsm.responses[0].target"),
        ('name = "a"\ndo = "alert"\ntarget = "x"', "vsm.responses[0].target"),
        ('name = "a"\ndo = "alert"\ncolour = "red"', "vsm.responses[0].colour"),
        ('do = "alert"', "vsm.responses[0]"),
    ],
)
def test_bad_rules_are_refused_naming_the_key(tmp_path: Path, rule: str, key: str) -> None:
    with pytest.raises(ConfigError) as bad:
        _load(tmp_path, f"[[vsm.responses]]\n{rule}\n")
    assert bad.value.key == key, bad.value


def test_duplicate_rule_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as bad:
        _load(tmp_path, '[[vsm.responses]]\nname="a"\ndo="alert"\n' * 2)
    assert bad.value.key == "vsm.responses[1].name"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("vsm.algedonic_threshold", 1.2),
        ("vsm.algedonic_queue", 0),
        ("vsm.algedonic_window_s", 0),
        ("vsm.kpi_window_s", -1),
        ("vsm.s3_interval_s", 0.001),
        ("vsm.latency_objective_ms", 0),
        ("vsm.signal_zone", "nowhere"),
        ("vsm.alert_telegram_chat", "ops-room"),
    ],
)
def test_bad_channel_keys_are_refused(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as bad:
        load_config(environ={}, overrides={key: value})
    assert bad.value.key == key
