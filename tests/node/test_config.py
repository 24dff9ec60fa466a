from __future__ import annotations

from pathlib import Path

import pytest

from node.config import DEFAULT_HTTP_PORT, load_config
from node.errors import ConfigError


def test_defaults_without_file_env_or_flags() -> None:
    config = load_config(environ={})
    assert config.http.port == DEFAULT_HTTP_PORT
    assert config.http.host == "127.0.0.1"
    assert config.trust.zones == ["public", "ops", "restricted"]
    assert config.node.dev is False


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "vsmcp.toml"
    path.write_text('[http]\nport = 1111\nhost = "127.0.0.2"\n[node]\nname = "file"\n')
    config = load_config(
        path,
        environ={"VSMCP_HTTP_PORT": "2222", "VSMCP_NODE_NAME": "env"},
        overrides={"http.port": 3333},
    )
    assert config.http.port == 3333
    assert config.http.host == "127.0.0.2"
    assert config.node.name == "env"


def test_env_values_parse_as_toml_or_string() -> None:
    config = load_config(
        environ={
            "VSMCP_MESH_SEEDS": '["10.0.0.2:7701", "h:1"]',
            "VSMCP_MESH_MDNS": "false",
            "VSMCP_NODE_DATA_DIR": "/tmp/x y",
            "VSMCP_REQUIRE_SERVICES": "1",  # not a config key: ignored
        }
    )
    assert config.mesh.seeds == ["10.0.0.2:7701", "h:1"]
    assert config.mesh.mdns is False
    assert str(config.data_dir) == "/tmp/x y"


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    [
        ({"http.port": "eighty"}, "http.port", "expected int"),
        ({"http.port": 70000}, "http.port", "out of range"),
        ({"http.bogus": 1}, "http.bogus", "unknown key"),
        ({"bogus.x": 1}, "bogus", "unknown key"),
        ({"mesh.seeds": ["nohostport"]}, "mesh.seeds[0]", "HOST:PORT"),
        ({"node.log_format": "xml"}, "node.log_format", "text, json"),
        ({"node.event_loop": "trio"}, "node.event_loop", "auto, uvloop, asyncio"),
        ({"trust.zones": []}, "trust.zones", "at least one"),
        ({"trust.zones": ["a", "a"]}, "trust.zones", "unique"),
        ({"trust.dev_zone": "nowhere"}, "trust.dev_zone", "not in trust.zones"),
        ({"envelope.max_bytes": 10}, "envelope.max_bytes", "out of range"),
        ({"envelope.max_future_skew_s": 0}, "envelope.max_future_skew_s", "out of range"),
        ({"mesh.dead_reap_after_s": -1}, "mesh.dead_reap_after_s", "out of range"),
        ({"mesh.left_reap_after_s": 10**9}, "mesh.left_reap_after_s", "out of range"),
    ],
)
def test_bad_values_name_the_key(overrides: dict[str, object], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(environ={}, overrides=overrides)
    assert err.value.key == key
    assert fragment.lower() in str(err.value).lower()


def test_bad_env_value_names_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(environ={"VSMCP_HTTP_PORT": "not-a-port"})
    assert err.value.key == "http.port"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"[http\nport = 1", "not valid TOML"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"http = 5\n", "expected a table"),
    ],
)
def test_corrupt_file(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert fragment.lower() in str(err.value).lower()


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "absent.toml", environ={})
    assert err.value.key == "--config"


def test_mount_limits_are_checked_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "vsmcp.toml"
    mount = '[[tools.mounts]]\nname = "m"\ncommand = "srv"\nstop_grace_s = 5\n'
    path.write_text(mount)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert "tools.mounts[0].stop_grace_s" in str(err.value)
    path.write_text("[tools]\nmax_result_bytes = 10\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert "tools.max_result_bytes" in str(err.value)
    path.write_text("[tools]\nmax_result_bytes = 2048\n" + mount.replace("5", "0.5"))
    config = load_config(path, environ={})
    assert config.tools.max_result_bytes == 2048
    assert config.tools.mounts[0].stop_grace_s == 0.5
    assert config.tools.mounts[0].start_timeout_s == 30.0
