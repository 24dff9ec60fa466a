"""`[llm]` and `[vsm.s4]`: bad values are refused naming the key."""

from __future__ import annotations

import pytest

from vsmcp.node.app.config import load_config
from vsmcp.node.errors import ConfigError


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"llm.timeout_s": 0}, "llm.timeout_s"),
        ({"llm.max_steps": 0}, "llm.max_steps"),
        ({"llm.max_tokens": 10**9}, "llm.max_tokens"),
        ({"llm.base_url": "ftp://x"}, "llm.base_url"),
        ({"llm.api_key_env": "NOT A NAME"}, "llm.api_key_env"),
        ({"vsm.s4.confidence": 1.5}, "vsm.s4.confidence"),
        ({"vsm.s4.scan_interval_s": -1}, "vsm.s4.scan_interval_s"),
        ({"vsm.s4.max_proposals": 0}, "vsm.s4.max_proposals"),
    ],
)
def test_bad_values_name_their_key(overrides: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(environ={}, overrides=overrides)
    assert err.value.key == key


def test_defaults_are_offline_until_a_key_is_set() -> None:
    config = load_config(environ={})
    assert config.llm.api_key_env == "ANTHROPIC_API_KEY"
    assert config.vsm.s4.confidence == 0.4
