from __future__ import annotations

from pathlib import Path

from vsmcp.node.app.config import load_config
from vsmcp.node.children.process import PARENT_PID_ENV, child_environment


def test_a_child_gets_our_environment_but_systemds_and_what_the_parent_imposes() -> None:
    inherited = {
        "PATH": "/usr/bin",
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "10000000",
        "VSMCP_NODE_DEV": "true",
        PARENT_PID_ENV: "1",  # our own parent's: the child must get ours
    }
    env = child_environment(inherited, {"VSMCP_NODE_DEV": "false"}, 4242)
    assert env["PATH"] == "/usr/bin"
    assert "NOTIFY_SOCKET" not in env and "WATCHDOG_USEC" not in env
    assert env["VSMCP_NODE_DEV"] == "false"
    assert env[PARENT_PID_ENV] == "4242"


def test_an_imposed_key_replaces_the_inherited_one_in_any_spelling() -> None:
    # Two spellings of one key would stop the child (two variables setting one key).
    inherited = {"VSMCP_RECURSION__MAX_DEPTH": "9", "vsmcp_mesh__preset": "wan", "A__B": "1"}
    imposed = {"VSMCP_RECURSION_MAX_DEPTH": "2", "VSMCP_MESH_PRESET": "local"}
    env = child_environment(inherited, imposed, 4242)
    assert "VSMCP_RECURSION__MAX_DEPTH" not in env and "vsmcp_mesh__preset" not in env
    assert env["VSMCP_RECURSION_MAX_DEPTH"] == "2" and env["VSMCP_MESH_PRESET"] == "local"
    assert env["A__B"] == "1"


def test_a_child_inherits_none_of_our_config_variables(tmp_path: Path) -> None:
    # Our bridges, children and ports configured by the environment would beat the
    # child's own file: two Telegram pollers on one token, extra AMQP consumers.
    inherited = {
        "VSMCP_BRIDGES_TELEGRAM_TOKEN": "123:abc",
        "VSMCP_BRIDGES_TELEGRAM_ENABLED": "true",
        "VSMCP_BRIDGES__AMQP__URL": "amqp://broker/",
        "VSMCP_CHILDREN": '[{name = "grandchild"}]',
        "VSMCP_HTTP_PORT": "7700",
        "VSMCP_TOKEN": "secret",  # not config: the CLI's token passes
        "VSMCP_REQUIRE_SERVICES": "1",
        "PATH": "/usr/bin",
    }
    imposed = {"VSMCP_NODE_DEV": "false", "VSMCP_MESH_PRESET": "local"}
    env = child_environment(inherited, imposed, 4242)
    assert not any(k.startswith(("VSMCP_BRIDGES", "VSMCP_CHILDREN", "VSMCP_HTTP")) for k in env)
    assert env["VSMCP_TOKEN"] == "secret" and env["VSMCP_REQUIRE_SERVICES"] == "1"
    assert env["PATH"] == "/usr/bin"
    # What the child's config loader makes of it: its own file, what we impose.
    child_file = tmp_path / "child.toml"
    child_file.write_text("[http]\nport = 7811\n")
    config = load_config(child_file, environ=env)
    assert config.http.port == 7811
    assert config.bridges.telegram is None and config.bridges.amqp is None
    assert config.children == [] and config.node.dev is False
    assert config.mesh.preset == "local"
