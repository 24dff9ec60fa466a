"""Child VSMs as real `vsmcpd` processes: a tree of three generations, the recursion
guard, no orphans after kill -9 of the parent, a crash-looping child, bad input."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import NodeProcess, call_tool, counters, run_cli
from tests.polling import wait_for

pytestmark = pytest.mark.integration

TOKEN = "children-test-token-0123456789"
ADMIN_TOKEN = "children-admin-token-0123456789"
TREE_TIMEOUT_S = 60.0
PLUGIN = '[[tools.plugins]]\nname = "add"\ntarget = "tests.integration.plugin_tools:add"\n'
BASE = '[mesh]\npreset = "local"\n[tools]\nentry_points = false\n'


def vsmcpd_pids(root: Path) -> dict[int, str]:
    """{pid: data dir} of every running vsmcpd whose data dir is below `root`."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z" or "vsmcp.node" not in args or "--data-dir" not in args:
            continue
        data_dir = args[args.index("--data-dir") + 1]
        if data_dir.startswith(str(root)):
            found[int(entry.name)] = data_dir
    return found


@pytest.fixture
def no_leftovers(tmp_path: Path) -> Iterator[None]:
    """Whatever a failed test leaves of a tree below tmp_path is killed."""
    yield
    for pid in vsmcpd_pids(tmp_path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def children(node: NodeProcess) -> dict[str, dict[str, Any]]:
    try:
        return {c["name"]: c for c in node.get_json("/api/children")["children"]}
    except (OSError, ValueError):
        return {}


def wait_running(node: NodeProcess, *names: str) -> dict[str, dict[str, Any]]:
    def running() -> dict[str, dict[str, Any]] | None:
        now = children(node)
        ok = all(now.get(n, {}).get("state") == "running" for n in names)
        return now if ok else None

    return wait_for(running, timeout_s=TREE_TIMEOUT_S, what=f"children {names} running")


def child_node(data_dir: Path) -> NodeProcess:
    """A view of a running child (its runtime.json) for HTTP requests."""
    node = NodeProcess(data_dir)
    node.info = json.loads((data_dir / "runtime.json").read_text())
    return node


def post_child(node: NodeProcess, body: dict[str, Any], token: str | None) -> tuple[int, Any]:
    return post_json(node, "/api/children", body, token)


def post_json(
    node: NodeProcess, path: str, body: dict[str, Any], token: str | None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        node.url + path, data=json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def owner_token(data_dir: Path) -> str:
    return (data_dir / "stdio.token").read_text().strip()


def certify(tmp_path: Path, authority: Path, name: str, zone: str) -> Path:
    data = tmp_path / name
    out = run_cli("keys", "node", "--data-dir", str(data), "--json").stdout
    node_id = json.loads(out)["node_id"]
    issued = run_cli(
        "keys", "issue", "--authority-key", str(authority), "--node", node_id,
        "--zone", zone, "--out", str(data / "node.cert"),
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    return data


def test_three_generations_serve_a_grandchild_tool_to_an_unrelated_node(
    tmp_path: Path, nodes: list[NodeProcess], no_leftovers: None
) -> None:
    authority = tmp_path / "authority.key"
    out = run_cli("keys", "init-authority", "--out", str(authority))
    match = re.search(r"authority public key: ([0-9a-f]{64})", out.stdout)
    assert match, out.stdout + out.stderr
    trust = f'[trust]\nauthority_public_key = "{match.group(1)}"\n'
    grand = tmp_path / "grand.toml"
    grand.write_text(BASE + PLUGIN)
    child = tmp_path / "child.toml"
    child.write_text(f'{BASE}[[children]]\nname = "g"\nconfig = "{grand}"\n')
    parent_cfg = tmp_path / "parent.toml"
    parent_cfg.write_text(
        f'{BASE}{trust}[recursion]\nmax_depth = 2\n[[children]]\nname = "c"\nconfig = "{child}"\n'
    )
    parent = NodeProcess(
        certify(tmp_path, authority, "p", "restricted"), "--config", str(parent_cfg), dev=False
    )
    nodes.append(parent.start())
    c = wait_running(parent, "c")["c"]
    assert c["depth"] == 1
    c_node = child_node(Path(c["data_dir"]))
    g = wait_running(c_node, "g")["g"]
    assert g["depth"] == 2

    third_cfg = tmp_path / "third.toml"
    third_cfg.write_text(
        f'{BASE}{trust}[[mcp.tokens]]\nname = "client"\ntoken = "{TOKEN}"\nzone = "public"\n'
    )
    third = NodeProcess(
        certify(tmp_path, authority, "t", "ops"),
        "--config", str(third_cfg), "--seed", f"127.0.0.1:{parent.mesh_port}",
        dev=False,
    )  # fmt: skip
    nodes.append(third.start())

    def add_offered_by_grandchild() -> bool:
        tools = third.get_json("/api/tools")["tools"]
        return any(t["name"] == "add" and t["provider"] == g["node_id"] for t in tools)

    wait_for(add_offered_by_grandchild, timeout_s=TREE_TIMEOUT_S, what="grandchild's add")
    reply = call_tool(third, TOKEN, "add", {"a": 2, "b": 40})
    assert reply["result"]["structuredContent"] == {"sum": 42}, reply
    # The tree as the third node sees it: the grandchild's parent is the child.
    peers = {p["id"]: p for p in third.get_json("/api/peers")["peers"]}
    assert peers[g["node_id"]]["parent"] == c["node_id"]
    assert peers[c["node_id"]]["parent"] == parent.node_id
    tools = third.get_json("/api/tools")["tools"]
    assert {t["provider_parent"] for t in tools if t["provider"] == g["node_id"]} == {c["node_id"]}
    assert parent.get_json("/api/status")["children"] == {"c": "running"}
    assert c_node.get_json("/api/status")["parent"] == parent.node_id

    # Depth 3 is refused by the grandchild, clearly, and counted as an event.
    g_node = child_node(Path(g["data_dir"]))
    status, answer = post_child(g_node, {"name": "deeper"}, owner_token(g_node.data_dir))
    assert status == 409 and "max_depth = 2" in answer["error"], answer
    wait_for(
        lambda: counters(g_node, "vsmcp_events").get("child_refused", 0) >= 1,
        what="child_refused event",
    )


def test_limits_and_bad_input_are_refused_clearly(
    tmp_path: Path, nodes: list[NodeProcess], no_leftovers: None
) -> None:
    config = tmp_path / "p.toml"
    config.write_text(
        f'{BASE}[trust]\ndev_zone = "ops"\n[recursion]\nmax_children = 1\n'
        f'[[mcp.tokens]]\nname = "client"\ntoken = "{TOKEN}"\nzone = "public"\n'
        f'[[mcp.tokens]]\nname = "admin"\ntoken = "{ADMIN_TOKEN}"\nzone = "ops"\n'
        '[vsm]\nsignal_zone = "ops"\n'
    )
    parent = NodeProcess(tmp_path / "p", "--config", str(config))
    nodes.append(parent.start())
    owner = owner_token(parent.data_dir)

    status, answer = post_child(parent, {"name": "up", "zone": "restricted"}, owner)
    assert status == 409 and "above this node's zone 'ops'" in answer["error"], answer
    status, answer = post_child(parent, {"name": "../outside"}, owner)
    assert status == 409 and "bad child name" in answer["error"], answer
    assert not (tmp_path / "outside").exists()
    # A caller below recursion.spawn_zone (restricted): HTTP and MCP alike.
    status, answer = post_child(parent, {"name": "a"}, TOKEN)
    assert status == 403 and "spawn_zone" in answer["error"], answer
    reply = call_tool(parent, TOKEN, "vsm.spawn_child", {"name": "a"})
    assert "error" in reply and "zone" in json.dumps(reply["error"]).lower(), reply
    assert children(parent) == {}

    spawned = run_cli("spawn", "--data-dir", str(parent.data_dir), "--name", "a")
    assert spawned.returncode == 0, spawned.stderr
    assert json.loads(spawned.stdout)["state"] == "running"
    status, answer = post_child(parent, {"name": "b"}, owner)
    assert status == 409 and "max_children 1" in answer["error"], answer
    listed = run_cli("children", "--data-dir", str(parent.data_dir), "--json")
    assert [c["name"] for c in json.loads(listed.stdout)["children"]] == ["a"]
    # Events are counted by the stream's subscriber, after the refusal was answered.
    wait_for(
        lambda: counters(parent, "vsmcp_events").get("child_refused", 0) >= 3,
        timeout_s=30,
        what="three child_refused events counted",
    )

    stopped = run_cli("stop-child", "a", "--data-dir", str(parent.data_dir))
    assert stopped.returncode == 0, stopped.stderr
    wait_for(lambda: not vsmcpd_pids(parent.data_dir / "children"), what="child a gone")
    assert children(parent) == {}

    # Short of capacity (strong pain: System 5 tightens limits to 50 %), one child is
    # already too many.
    signal_body = {"valence": "pain", "intensity": 1.0, "reason": "test", "source": "test"}
    assert post_json(parent, "/api/algedonic", signal_body, ADMIN_TOKEN)[0] == 202

    def tightened() -> bool:
        active = parent.get_json("/api/vsm")["s5"]["active"]
        return any(a["action"] == "tighten_limit" for a in active)

    wait_for(tightened, what="System 5 tightening limits")
    status, answer = post_child(parent, {"name": "c"}, owner)
    assert status == 409 and "while the node is short of capacity" in answer["error"], answer


def test_kill_9_of_the_parent_leaves_no_process_and_a_restart_has_no_duplicates(
    tmp_path: Path, nodes: list[NodeProcess], no_leftovers: None
) -> None:
    child = tmp_path / "child.toml"
    child.write_text(f'{BASE}[[children]]\nname = "g"\n')
    config = tmp_path / "p.toml"
    config.write_text(
        f'{BASE}[[children]]\nname = "a"\nconfig = "{child}"\n[[children]]\nname = "b"\n'
    )
    parent = NodeProcess(tmp_path / "p", "--config", str(config))
    nodes.append(parent.start())
    a = wait_running(parent, "a", "b")["a"]
    wait_running(child_node(Path(a["data_dir"])), "g")
    tree = vsmcpd_pids(tmp_path)
    assert len(tree) == 4, tree  # parent, a, b, g

    parent.kill()
    parent.wait_exit()
    wait_for(lambda: not vsmcpd_pids(tmp_path), timeout_s=15, what="the whole tree gone")

    restarted = NodeProcess(tmp_path / "p", "--config", str(config))
    nodes.append(restarted.start())
    wait_running(restarted, "a", "b")
    a = children(restarted)["a"]
    wait_running(child_node(Path(a["data_dir"])), "g")
    dirs = sorted(vsmcpd_pids(tmp_path).values())
    assert len(dirs) == 4 and len(set(dirs)) == 4, dirs

    # A clean stop takes the children along (SIGTERM, then SIGKILL after a grace).
    restarted.terminate()
    assert restarted.wait_exit(timeout_s=15) == 0, restarted.log_text()[-3000:]
    wait_for(lambda: not vsmcpd_pids(tmp_path), timeout_s=15, what="children stopped with it")


def test_a_crash_looping_child_is_quarantined_and_the_parent_stays_healthy(
    tmp_path: Path, nodes: list[NodeProcess], no_leftovers: None
) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('[node]\nlog_level = "loud"\n')  # vsmcpd exits 2 at once
    config = tmp_path / "p.toml"
    config.write_text(f'{BASE}[[children]]\nname = "crashy"\nconfig = "{broken}"\n')
    parent = NodeProcess(tmp_path / "p", "--config", str(config))
    nodes.append(parent.start())

    def quarantined() -> dict[str, Any] | None:
        crashy = children(parent).get("crashy", {})
        return crashy if crashy.get("state") == "quarantined" else None

    crashy = wait_for(quarantined, timeout_s=TREE_TIMEOUT_S, what="crashy quarantined")
    assert crashy["restarts"] >= 2 and "exited with 2" in crashy["last_error"], crashy
    assert parent.get_json("/healthz")["status"] == "ok"
    assert not vsmcpd_pids(parent.data_dir / "children")


def test_a_restarted_parent_ends_a_child_that_survived_its_previous_life(
    tmp_path: Path, nodes: list[NodeProcess], no_leftovers: None
) -> None:
    config = tmp_path / "p.toml"
    config.write_text(f'{BASE}[[children]]\nname = "a"\n')
    parent = NodeProcess(tmp_path / "p", "--config", str(config))
    nodes.append(parent.start())
    survivor = wait_running(parent, "a")["a"]["pid"]
    # Stopped, it cannot act on its parent's death: it outlives the parent.
    os.kill(survivor, signal.SIGSTOP)
    parent.kill()
    parent.wait_exit()

    restarted = NodeProcess(tmp_path / "p", "--config", str(config))
    nodes.append(restarted.start())
    a = wait_running(restarted, "a")["a"]
    assert a["pid"] != survivor
    assert survivor not in vsmcpd_pids(tmp_path)
    assert sorted(vsmcpd_pids(tmp_path).values()).count(a["data_dir"]) == 1
