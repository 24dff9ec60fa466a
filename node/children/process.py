"""One child VSM: a `vsmcpd` subprocess run as a supervised unit (`Provider`).

The supervisor of S1 units (`node/tools/supervisor.py`) restarts it with backoff and
quarantines it when it crash-loops; this class only starts the process, says when it is
ready (its runtime.json names its pid), and ends it: SIGTERM to its process group, then
SIGKILL after `STOP_GRACE_S`.

No orphans: the child runs in its own session (a signal to our group does not reach it,
and SIGKILL of its group ends its mounts too), and is told our pid (`PARENT_PID_ENV`):
at start it asks the kernel for SIGTERM when we die (PR_SET_PDEATHSIG) and watches its
parent pid (`node/app/parent_watch.py`). PDEATHSIG fires when the *thread* that forked
the child ends, so children must be spawned from the event loop's thread, which lives
as long as the node (asyncio and uvloop fork in the calling thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from vsmcp.node.app.config import Config
from vsmcp.node.app.config_env import env_spelling, is_config_variable
from vsmcp.node.children.config import PARENT_PID_ENV, PID_FILE_NAME
from vsmcp.node.children.errors import ChildError, ChildNotReady
from vsmcp.node.tools.errors import UnknownTool
from vsmcp.node.tools.model import CallContext, ToolResult, ToolSpec

RUNTIME_FILE_NAME: Final = "runtime.json"
LOG_FILE_NAME: Final = "vsmcpd.log"
READY_TIMEOUT_S: Final = 30.0
# SIGTERM, then SIGKILL: inside the parent's 5 s shutdown bound with room to spare.
STOP_GRACE_S: Final = 2.5
POLL_S: Final = 0.05
MAX_RUNTIME_BYTES: Final = 64 * 1024
# systemd's word to the parent (sd_notify, its watchdog, socket activation): a child
# speaking on the parent's notify socket would pass for it.
NOT_INHERITED: Final = frozenset(
    {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}
)


@dataclass(frozen=True, slots=True)
class ChildLaunch:
    """How to start one child: its name, data dir, own config, the parent's seed
    address and the `VSMCP_*` settings the parent imposes."""

    name: str
    data_dir: Path
    config: Path | None
    seed: str
    env: Mapping[str, str] = field(default_factory=dict)

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "vsmcp.node", "--data-dir", str(self.data_dir)]
        cmd += ["--http-port", "0", "--mesh-port", "0", "--no-mdns", "--seed", self.seed]
        cmd += ["--name", self.name]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        return cmd


class ChildProcess:
    """A child VSM as a `Provider` with no tools of its own (its tools are its own
    node's, reached over the mesh like any peer's)."""

    def __init__(self, launch: ChildLaunch, before_start: Callable[[], None]) -> None:
        self.launch = launch
        # Runs before each start: the parent issues a fresh certificate.
        self._before_start = before_start
        self.pid: int | None = None
        self.runtime: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return f"child:{self.launch.name}"

    def tools(self) -> Sequence[ToolSpec]:
        return ()

    async def call(self, tool: str, arguments: Mapping[str, Any], ctx: CallContext) -> ToolResult:
        raise UnknownTool(tool)  # its tools are its own node's, over the mesh

    @property
    def pid_file(self) -> Path:
        return self.launch.data_dir / PID_FILE_NAME

    async def run(self, ready: Callable[[], None], stop: asyncio.Event) -> None:
        self._before_start()
        proc = await self._spawn()
        self.pid = proc.pid
        self.pid_file.write_text(f"{proc.pid}\n")
        try:
            exited = asyncio.create_task(proc.wait(), name=f"{self.name}:wait")
            stopping = asyncio.create_task(stop.wait(), name=f"{self.name}:stop")
            try:
                await self._until_ready(proc.pid, exited, stopping)
                if not exited.done() and not stopping.done():
                    ready()
                await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if exited.done() and not stop.is_set():
                raise ChildError(f"child {self.launch.name} exited with {proc.returncode}")
        finally:
            await terminate(proc)
            self.pid = None
            self.runtime = None
            with contextlib.suppress(FileNotFoundError):
                self.pid_file.unlink()

    async def _spawn(self) -> asyncio.subprocess.Process:
        env = child_environment(os.environ, self.launch.env, os.getpid())
        with (self.launch.data_dir / LOG_FILE_NAME).open("ab") as log:
            return await asyncio.create_subprocess_exec(
                *self.launch.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    async def _until_ready(
        self, pid: int, exited: asyncio.Task[int], stopping: asyncio.Task[bool]
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        while not exited.done() and not stopping.done():
            runtime = read_runtime(self.launch.data_dir)
            if runtime is not None and runtime.get("pid") == pid:
                self.runtime = runtime
                return
            if loop.time() > deadline:
                raise ChildNotReady(
                    f"child {self.launch.name} not ready within {READY_TIMEOUT_S:.0f} s "
                    f"(see {self.launch.data_dir / LOG_FILE_NAME})"
                )
            await asyncio.wait({exited, stopping}, timeout=POLL_S)


def child_environment(
    inherited: Mapping[str, str], imposed: Mapping[str, str], parent_pid: int
) -> dict[str, str]:
    """The child's environment: ours but systemd's and our config variables, what the
    parent imposes, our pid. A child is configured by its own file and what the parent
    imposes: the parent's `VSMCP_<SECTION>_*` (its bridges, children, ports) would beat
    the child's file, so none is inherited; other `VSMCP_*` variables (`VSMCP_TOKEN`,
    `VSMCP_REQUIRE_SERVICES`) are not config and pass."""
    imposed_keys = {env_spelling(k) for k in imposed}
    env = {
        k: v
        for k, v in inherited.items()
        if k not in NOT_INHERITED
        and env_spelling(k) not in imposed_keys
        and not is_config_variable(k, Config)
    }
    env.update({"PYTHONUNBUFFERED": "1", **imposed, PARENT_PID_ENV: str(parent_pid)})
    return env


def read_runtime(data_dir: Path) -> dict[str, Any] | None:
    """A node's runtime.json (pid, node id, URLs), or None while there is none."""
    try:
        with (data_dir / RUNTIME_FILE_NAME).open("rb") as f:
            data: object = json.loads(f.read(MAX_RUNTIME_BYTES))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


async def terminate(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM to the child's process group, SIGKILL after `STOP_GRACE_S`."""
    if proc.returncode is not None:
        return
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(proc.wait()), STOP_GRACE_S)
    except TimeoutError:
        _signal_group(proc.pid, signal.SIGKILL)
        await proc.wait()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # The child leads its own session, so its group id is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
