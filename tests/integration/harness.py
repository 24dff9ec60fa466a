"""Real `vsmcpd` processes for integration tests: start, poll, signal, inspect.

Each node runs `python -m vsmcp.node` in its own data dir with HTTP (and mesh) on port 0;
its stdout and stderr go to `<data_dir>/vsmcpd.log`, which failures print.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.polling import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 5.0


class NodeProcess:
    def __init__(
        self,
        data_dir: Path,
        *args: str,
        dev: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.args = list(args)
        self.dev = dev
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    # -- process control ----------------------------------------------------------------

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "vsmcp.node", "--data-dir", str(self.data_dir)]
        if "--http-port" not in self.args:
            cmd += ["--http-port", "0"]
        if "--mesh-port" not in self.args:
            cmd += ["--mesh-port", "0"]
        if self.dev:
            cmd.append("--dev")
        return cmd + self.args

    def start(self, *, wait: bool = True) -> NodeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            # mDNS on loopback reaches every node on the machine: each test is its own mesh.
            "VSMCP_MESH_NAME": mesh_name_for(self.data_dir),
            **self.env,
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env
            )
        if wait:
            self.wait_ready()
        return self

    @property
    def log_path(self) -> Path:
        return self.data_dir / "vsmcpd.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _runtime(self) -> dict[str, Any] | None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"vsmcpd exited with {self.proc.returncode} while starting:\n{self.log_text()}"
            )
        try:
            info: dict[str, Any] = json.loads((self.data_dir / "runtime.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return info if info.get("pid") == self.pid else None

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> dict[str, Any]:
        self.info = wait_for(self._runtime, timeout_s=timeout_s, what="runtime.json")
        wait_for(self._healthy, timeout_s=timeout_s, what="/healthz")
        return self.info

    def _healthy(self) -> bool:
        try:
            return self.get_json("/healthz").get("status") == "ok"
        except OSError:
            return False

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def wait_exit(self, timeout_s: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def stop(self) -> None:
        """Best-effort cleanup for fixtures: resume if stopped, TERM, then KILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    # -- HTTP ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return str(self.info["http_url"])

    def get(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=HTTP_TIMEOUT_S) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    @property
    def node_id(self) -> str:
        return str(self.info["node_id"])

    @property
    def mesh_port(self) -> int:
        return int(self.info["mesh_port"])

    def peer_states(self) -> dict[str, str]:
        """{node id: state} of every member this node knows, or {} if it does not answer."""
        try:
            peers = self.get_json("/api/peers")["peers"]
        except (OSError, ValueError):
            return {}
        return {p["id"]: p["state"] for p in peers}

    def post(self, path: str, *, method: str = "POST") -> int:
        request = urllib.request.Request(self.url + path, method=method, data=b"")
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    def post_json(self, path: str, body: Any, *, token: str | None = None) -> tuple[int, Any]:
        """POST `body` as JSON (with a bearer token when given): (status, decoded answer)."""
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as r:
                return int(r.status), json.loads(r.read())
        except urllib.error.HTTPError as e:
            return int(e.code), json.loads(e.read() or b"null")

    def get_json(self, path: str) -> Any:
        status, body, _ = self.get(path)
        data = json.loads(body)
        if isinstance(data, dict):
            data.setdefault("_http_status", status)
        return data


def mesh_name_for(data_dir: Path) -> str:
    """One mesh per test: nodes whose data dirs share a parent directory."""
    digest = hashlib.sha256(str(data_dir.parent).encode()).hexdigest()[:16]
    return f"test-{digest}"


def wait_mesh_states(
    observers: list[NodeProcess],
    expected: dict[str, str],
    *,
    timeout_s: float = 30.0,
) -> None:
    """Wait until every observer sees each node of `expected` in the given state."""

    def agreed() -> bool:
        for observer in observers:
            states = observer.peer_states()
            for node_id, state in expected.items():
                if node_id != observer.node_id and states.get(node_id) != state:
                    return False
        return True

    def describe() -> str:
        return "; ".join(
            f"{o.node_id[-6:]} sees "
            + ", ".join(f"{k[-6:]}={v}" for k, v in sorted(o.peer_states().items()))
            for o in observers
        )

    try:
        wait_for(agreed, timeout_s=timeout_s, what=f"mesh states {expected}")
    except AssertionError as e:
        raise AssertionError(f"{e}\nnow: {describe()}") from None


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run `vsmcp ARGS` (as `python -m vsmcp.node.app.cli`) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "vsmcp.node.app.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        timeout=timeout_s,
    )


def run_daemon(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run `vsmcpd ARGS` to completion (for start-up refusals)."""
    return subprocess.run(
        [sys.executable, "-m", "vsmcp.node", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=timeout_s,
    )


def counters(node: NodeProcess, family: str) -> dict[str, int]:
    """A labelled counter family from the node's /metrics: {label value: count}."""
    text = node.get("/metrics")[1].decode()
    pattern = rf'^{re.escape(family)}_total\{{\w+="([^"]*)"\}} ([0-9.e+]+)$'
    return {m.group(1): int(float(m.group(2))) for m in re.finditer(pattern, text, re.MULTILINE)}


def start_configured(base: Path, nodes: list[NodeProcess], config: str, name: str) -> NodeProcess:
    """Start (without waiting) a node `name` in `base` with `config` (TOML text), added
    to `nodes` (the fixture that stops them)."""
    path = base / f"{name}.toml"
    path.write_text(config)
    node = NodeProcess(base / name, "--config", str(path))
    nodes.append(node)
    return node.start(wait=False)


def tool_call_message(
    token: str,
    tool: str,
    arguments: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The JSON body and headers of one stateless (2026-07-28) `tools/call` at /mcp as
    the bearer of `token` (`meta`: more `_meta` entries, e.g. `vsmcp/priority`)."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": tool,
            "arguments": arguments or {},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
                **(meta or {}),
            },
        },
    }
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": tool,
        "Authorization": f"Bearer {token}",
    }
    return body, headers


def call_tool(
    node: NodeProcess, token: str, tool: str, arguments: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One `tools/call` at the node's /mcp as the bearer of `token`: the JSON-RPC reply,
    error replies (4xx) included."""
    body, headers = tool_call_message(token, tool, arguments)
    request = urllib.request.Request(
        node.url + "/mcp", data=json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            reply: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as e:  # a refusal is a 4xx carrying the JSON-RPC error
        reply = json.loads(e.read())
    return reply


@contextmanager
def alive_mesh(base: Path, configs: dict[str, str]) -> Iterator[list[NodeProcess]]:
    """Nodes named by `configs` (name: TOML text) in `base`, as `running` runs them."""
    nodes = []
    for name, text in configs.items():
        path = base / f"{name}.toml"
        path.write_text(text)
        nodes.append(NodeProcess(base / name, "--config", str(path)))
    with running(nodes) as started:
        yield started


@contextmanager
def running(nodes: list[NodeProcess]) -> Iterator[list[NodeProcess]]:
    """`nodes` started together and alive to each other; their logs printed if anything
    fails; every one that started stopped at the end."""
    started: list[NodeProcess] = []
    try:
        for node in nodes:
            started.append(node.start(wait=False))
        for node in started:
            node.wait_ready()
        wait_mesh_states(started, {n.node_id: "alive" for n in started})
        yield started
    except BaseException:
        for node in started:
            print(f"--- log of {node.data_dir} ---\n{node.log_text()[-6000:]}", file=sys.stderr)
        raise
    finally:
        for node in started:
            node.stop()
