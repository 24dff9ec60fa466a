from __future__ import annotations

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
