from __future__ import annotations

from pathlib import Path

import pytest

from vsmcp.node.app.config import DEFAULT_HTTP_PORT, load_config
from vsmcp.node.errors import ConfigError


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
        ({"edge.publish_zone": "nowhere"}, "edge.publish_zone", "not in trust.zones"),
        ({"envelope.max_bytes": 10}, "envelope.max_bytes", "out of range"),
        (
            {"replication.max_policies_per_issuer": 0},
            "replication.max_policies_per_issuer",
            "range",
        ),
        (
            {"replication.max_policies_per_issuer": 10**7},
            "replication.max_policies_per_issuer",
            "out of range",
        ),
        ({"envelope.max_future_skew_s": 0}, "envelope.max_future_skew_s", "out of range"),
        ({"mesh.dead_reap_after_s": -1}, "mesh.dead_reap_after_s", "out of range"),
        ({"mesh.left_reap_after_s": 10**9}, "mesh.left_reap_after_s", "out of range"),
        ({"http.max_connections": 0}, "http.max_connections", "out of range"),
        ({"http.max_connections_per_client": 0}, "http.max_connections_per_client", "range"),
        ({"http.head_timeout_s": 0}, "http.head_timeout_s", "out of range"),
        ({"http.body_idle_timeout_s": -1}, "http.body_idle_timeout_s", "out of range"),
        ({"node.dev": True, "mesh.host": "0.0.0.0"}, "mesh.host", "loopback only"),
        ({"node.dev": True, "mesh.host": "10.1.2.3"}, "mesh.host", "loopback only"),
        ({"node.dev": True, "mesh.host": "::"}, "mesh.host", "loopback only"),
        ({"http.host": "not a host!"}, "http.host", "not an IP address or a host name"),
        ({"http.host": ""}, "http.host", "not an IP address or a host name"),
        ({"http.host": "[::1]"}, "http.host", "not an IP address or a host name"),
        ({"mesh.host": "-bad-.example"}, "mesh.host", "not an IP address or a host name"),
        ({"mesh.host": "a" * 254}, "mesh.host", "not an IP address or a host name"),
        ({"node.name": "n" * 65}, "node.name", "at most 64 bytes"),
        ({"node.name": "\u00fc" * 33}, "node.name", "at most 64 bytes"),
        ({"node.name": "two\nlines"}, "node.name", "no control characters"),
        ({"mcp.max_listed_tools": 1}, "mcp.max_listed_tools", "0 (off) or 2.."),
        ({"mcp.max_listed_tools": -5}, "mcp.max_listed_tools", "out of range"),
    ],
)
def test_bad_values_name_the_key(overrides: dict[str, object], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(environ={}, overrides=overrides)
    assert err.value.key == key
    assert fragment.lower() in str(err.value).lower()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_dev_runs_on_any_loopback_mesh_host(host: str) -> None:
    config = load_config(environ={}, overrides={"node.dev": True, "mesh.host": host})
    assert config.mesh.host == host


def test_a_certified_node_may_listen_anywhere() -> None:
    assert load_config(environ={}, overrides={"mesh.host": "0.0.0.0"}).mesh.host == "0.0.0.0"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "0.0.0.0", "localhost", "node-1.lan.", "lo"])
def test_host_names_and_addresses_are_accepted(host: str) -> None:
    config = load_config(environ={}, overrides={"http.host": host, "mesh.host": host})
    assert config.http.host == config.mesh.host == host


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


def _token(name: str, token: str, zone: str) -> dict[str, str]:
    return {"name": name, "token": token, "zone": zone}


@pytest.mark.parametrize(
    ("tokens", "key", "fragment"),
    [
        # The same secret twice: the last (higher) zone used to win silently.
        (
            [_token("ci", "s" * 20, "public"), _token("admin", "s" * 20, "restricted")],
            "mcp.tokens[1].token",
            "same token as mcp.tokens[0]",
        ),
        (
            [_token("ci", "a" * 20, "public"), _token("ci", "b" * 20, "ops")],
            "mcp.tokens[1].name",
            "already the name of mcp.tokens[0]",
        ),
        ([_token("stdio", "a" * 20, "ops")], "mcp.tokens[0].name", "reserved"),
        ([_token("ci", "a" * 10 + " " + "a" * 10, "ops")], "mcp.tokens[0].token", "whitespace"),
    ],
)
def test_ambiguous_tokens_are_refused(
    tokens: list[dict[str, str]], key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(environ={}, overrides={"mcp.tokens": tokens})
    assert err.value.key == key
    assert fragment in err.value.reason
    assert "s" * 20 not in str(err.value)  # the secret is never echoed


def test_distinct_tokens_are_accepted() -> None:
    tokens = [_token("ci", "a" * 20, "public"), _token("admin", "b" * 20, "restricted")]
    config = load_config(environ={}, overrides={"mcp.tokens": tokens})
    assert [t.zone for t in config.mcp.tokens] == ["public", "restricted"]


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


@pytest.mark.parametrize(
    ("line", "key", "fragment"),
    [
        ("block_ttl_s = 0", "vsm.immune.block_ttl_s", "out of range"),
        ("quarantine_ttl_s = 1e9", "vsm.immune.quarantine_ttl_s", "out of range"),
        ("denial_count = 0", "vsm.immune.denial_count", "out of range"),
        ("storm_window_s = -1", "vsm.immune.storm_window_s", "out of range"),
        ("max_blocks_per_minute = 0", "vsm.immune.max_blocks_per_minute", "out of range"),
        ("enabled = 3", "vsm.immune.enabled", "expected bool"),
        ("bogus = 1", "vsm.immune.bogus", "unknown key"),
    ],
)
def test_bad_immune_values_name_the_key(tmp_path: Path, line: str, key: str, fragment: str) -> None:
    path = tmp_path / "vsmcp.toml"
    path.write_text(f"[vsm.immune]\n{line}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert err.value.key == key
    assert fragment in str(err.value).lower()


@pytest.mark.parametrize(
    ("manifest", "edge", "fragment"),
    [
        ('name = "t"\n[grants]\nclock = true\n', "", "edge.allow_clock"),
        ('name = "t"\nzone = "nowhere"\n', "", "zone 'nowhere' is not in trust.zones"),
        ('name = "t"\n[limits]\nmemory_mb = 0\n', "", "memory_mb"),
        ('name = "t"\n[probe]\nexpect = { type = 7 }\n', "", "probe.expect: not a JSON schema"),
        ('name = "t"\n[probe]\nexpect = { required = ["x"] }\n', "", None),
        ('name = "t"\n[grants]\nclock = true\n', "[edge]\nallow_clock = true\n", None),
    ],
)
def test_wasm_manifests_are_checked_naming_the_key(
    tmp_path: Path, manifest: str, edge: str, fragment: str | None
) -> None:
    (tmp_path / "t.wat").write_text('(module (func (export "_start")))')
    (tmp_path / "t.toml").write_text(manifest)
    path = tmp_path / "vsmcp.toml"
    path.write_text(f'{edge}[[tools.wasm]]\nmanifest = "{tmp_path / "t.toml"}"\n')
    if fragment is None:
        assert load_config(path, environ={}).tools.wasm[0].manifest.endswith("t.toml")
        return
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert err.value.key == "tools.wasm[0].manifest"
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('[[tools.plugins]]\nname = "p"\ntarget = "m:f"\n', "tools.plugins"),
        ('[[tools.mounts]]\nname = "m"\ncommand = "srv"\n', "tools.mounts"),
        ("[tools]\nentry_points = true\n", "tools.entry_points"),
    ],
)
def test_the_edge_profile_refuses_plugins_and_mounts_naming_the_key(
    tmp_path: Path, table: str, key: str
) -> None:
    path = tmp_path / "vsmcp.toml"
    path.write_text(f'[node]\nprofile = "edge"\n{table}')
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert err.value.key == key
    assert "edge profile" in str(err.value)


def test_the_edge_profile_sets_smaller_defaults_under_what_is_configured(tmp_path: Path) -> None:
    path = tmp_path / "vsmcp.toml"
    path.write_text("[audit]\nqueue_size = 100\n")
    edge = load_config(path, environ={}, overrides={"node.profile": "edge"})
    default = load_config(path, environ={})
    assert edge.audit.queue_size == default.audit.queue_size == 100  # set: kept
    assert edge.tools.entry_points is False and default.tools.entry_points is True
    assert edge.vsm.event_buffer < default.vsm.event_buffer
    assert edge.http.max_connections < default.http.max_connections
    assert edge.edge.threads == 1
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={}, overrides={"node.profile": "tiny"})
    assert err.value.key == "node.profile"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"vsm.concurrency": {"min_limit": 0}}, "vsm.concurrency.min_limit"),
        ({"vsm.concurrency": {"initial_limit": 500}}, "vsm.concurrency.max_limit"),
        ({"vsm.concurrency": {"smoothing": 1.5}}, "vsm.concurrency.smoothing"),
        ({"vsm.concurrency": {"share_low": 0.9}}, "vsm.concurrency.share_low"),
        ({"vsm.concurrency": {"tolerance": 0.5}}, "vsm.concurrency.tolerance"),
        ({"vsm.concurrency": {"s3_lag_low_ms": 300}}, "vsm.concurrency.s3_lag_low_ms"),
        ({"vsm.concurrency": {"s3_step_down": 1.0}}, "vsm.concurrency.s3_step_down"),
        ({"vsm.concurrency": {"s3_min_share": 0}}, "vsm.concurrency.s3_min_share"),
        ({"mcp.loopback_max_priority": "urgent"}, "mcp.loopback_max_priority"),
    ],
)
def test_bad_regulation_config_names_the_key(overrides: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(environ={}, overrides=overrides)
    assert err.value.key == key


def test_regulation_is_off_unless_configured() -> None:
    assert load_config(environ={}).vsm.concurrency is None
    config = load_config(environ={}, overrides={"vsm.concurrency": {"max_limit": 64}})
    assert config.vsm.concurrency is not None
    assert config.vsm.concurrency.settings().max_limit == 64


def test_a_probe_whose_expect_is_not_a_json_schema_names_its_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[[tools.plugins]]\nname = "add"\ntarget = "tests.integration.plugin_tools:add"\n'
        'probe = { arguments = { a = 1, b = 2 }, expect = { type = "no-such-type" } }\n'
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert err.value.key == "tools.plugins[0].probe.expect"
    assert "not a json schema" in str(err.value).lower()


@pytest.mark.parametrize(
    ("toml", "key", "fragment"),
    [
        ("[vsm.gray]\nobjective_s = 0\n", "vsm.gray.objective_s", "expected"),
        ("[vsm.gray]\nbad_ratio = 1.5\n", "vsm.gray.bad_ratio", "expected"),
        (
            "[vsm.audits]\nmin_interval_s = 10\nmax_interval_s = 5\n",
            "vsm.audits.max_interval_s",
            "at least min_interval_s",
        ),
    ],
)
def test_bad_gray_and_audit_settings_name_the_key(
    tmp_path: Path, toml: str, key: str, fragment: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert err.value.key == key
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('[bridges.amqp]\nurl = "http://broker"\n', "bridges.amqp.url"),
        (
            '[bridges.mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'
            '[bridges.mqtt.call_topics]\n"vsmcp/ops" = "admins"\n',
            "bridges.mqtt.call_topics.vsmcp/ops",
        ),
        (
            '[bridges.telegram]\ntoken_env = "T"\n[bridges.telegram.chats]\n"42" = "admins"\n',
            "bridges.telegram.chats",
        ),
        (
            '[bridges.telegram]\ntoken_env = "T"\nalert_chat = "ops-room"\n',
            "bridges.telegram.alert_chat",
        ),
    ],
)
def test_a_bad_bridge_table_is_refused_at_load_naming_the_key(
    tmp_path: Path, table: str, key: str
) -> None:
    # At load, not when the bridge starts after the node is up.
    path = tmp_path / "node.toml"
    path.write_text(table)
    with pytest.raises(ConfigError) as bad:
        load_config(path, environ={})
    assert bad.value.key == key
