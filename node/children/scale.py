"""Variety-driven spawning (System 3): children serving a `scale` tool while its unit is
saturated, retired when they stay idle.

A plugin tool declared `scale = { children = "auto", max = N }` is watched once a
second. Its unit is *saturated* when the node's CPU (measured: process CPU time over
wall time, in cores) is at or above `scale.cpu` while its calls fill every slot of the
unit or queue for one, and every child already serving it has calls in flight. After
`scale.samples` saturated samples in a row (hysteresis: a burst does not spawn), and
at least `scale.settle_s` after the last spawn (the child needs time to start and its
tool to reach the registry), a child is spawned through the node's `ChildManager`,
with a config serving the same tool (same name and schema: a replica the mesh catalog
routes to; calls spill to it while the unit is full). The unit's slots are its
`max_concurrency` (as System 5 tightens it), not its adaptive limit: System 3 lowers
that limit's bound when the event loop runs late, and a late loop must not read as
saturation (spawning a child onto the starved CPU). A child that was sent no call for
`scale.quiet_s` (counted from when the catalog first routes to it) is retired: taken
out of the spill (its provider is avoided), stopped once its calls in flight are done
(at most `DRAIN_S`), its config and data dir deleted. Every decision is a `scale`
event carrying the measurement behind it.

`ScaleDecider` is the decision alone (pure, time passed in); `ToolScaler` measures,
acts and publishes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import msgspec

from vsmcp.mesh.loops import LoopSupervisor
from vsmcp.node.children.errors import ChildError
from vsmcp.node.children.manager import ChildManager
from vsmcp.node.toml_text import toml_value
from vsmcp.node.tools.config import PluginToolConfig, ScaleConfig
from vsmcp.node.tools.supervisor import Supervisor, Unit, UnitState
from vsmcp.node.vsm.events import EventSink, ScaleDecision
from vsmcp.node.vsm.loop_service import LoopService

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S: Final = 1.0
LOOP_NAME: Final = "s3-scale"
SCALE_CONFIG_DIR: Final = "scale"
# How long a retired child's calls in flight may take to finish before it is stopped.
DRAIN_S: Final = 10.0
DRAIN_POLL_S: Final = 0.1
_NOT_IN_NAME: Final = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class ScaleSample:
    """One measurement of a scaled tool's unit and of the node."""

    now: float  # monotonic seconds
    cpu: float  # the node's CPU use since the last sample, in cores
    running: int  # calls running in the unit
    waiting: int  # calls queued for a slot of the unit
    slots: int  # calls the unit may run at once now (max_concurrency, or lower)
    # Each child serving the tool: a call was in flight to it or sent to it since the
    # last sample; None while the catalog does not route to it yet (not busy, not idle).
    busy: Mapping[str, bool | None]


@dataclass(frozen=True, slots=True)
class ScaleAction:
    action: Literal["spawn", "retire"]
    child: str  # "" for a spawn: the scaler names it
    reason: str
    idle_s: float = 0.0


class ScaleDecider:
    """When to spawn or retire a child for one tool. Pure: fed samples, answers at
    most one action per sample."""

    def __init__(self, config: ScaleConfig) -> None:
        self.config = config
        self._saturated_run = 0
        self._last_spawn: float | None = None
        self._last_busy: dict[str, float] = {}

    def saturated(self, sample: ScaleSample) -> bool:
        full = sample.waiting > 0 or sample.running >= sample.slots
        children_full = all(busy is True for busy in sample.busy.values())
        return sample.cpu >= self.config.cpu and full and children_full

    def observe(self, sample: ScaleSample) -> ScaleAction | None:
        now = sample.now
        for child in list(self._last_busy):
            if child not in sample.busy:
                del self._last_busy[child]  # stopped by someone else
        for child, busy in sample.busy.items():
            if busy is not False or child not in self._last_busy:
                self._last_busy[child] = now
        saturated = self.saturated(sample)
        self._saturated_run = self._saturated_run + 1 if saturated else 0
        if not saturated:
            idle = [(self._last_busy[c], c) for c in sample.busy]
            if idle:
                since, child = min(idle)
                if now - since >= self.config.quiet_s:
                    return ScaleAction(
                        "retire", child, f"no call for {now - since:.0f} s", now - since
                    )
            return None
        if self._saturated_run < self.config.samples:
            return None
        if len(sample.busy) >= self.config.max:
            return None
        if self._last_spawn is not None and now - self._last_spawn < self.config.settle_s:
            return None
        return ScaleAction(
            "spawn",
            "",
            f"saturated for {self._saturated_run} samples: CPU {sample.cpu:.2f} cores, "
            f"{sample.running}/{sample.slots} running, {sample.waiting} queued",
        )

    def spawned(self, now: float) -> None:
        """A spawn was tried (done or refused): wait `settle_s` before the next."""
        self._last_spawn = now
        self._saturated_run = 0


class CpuMeter:
    """The process's CPU use (all its threads) between two readings, in cores."""

    def __init__(
        self,
        cpu_clock: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cpu_clock = cpu_clock
        self._clock = clock
        self._last = (clock(), cpu_clock())

    def read(self) -> float:
        now, cpu = self._clock(), self._cpu_clock()
        wall = now - self._last[0]
        used = cpu - self._last[1]
        self._last = (now, cpu)
        return used / wall if wall > 0 else 0.0


def child_config(tool: PluginToolConfig) -> str:
    """A child's config serving `tool` alone (no `scale` of its own: one level)."""
    entry = msgspec.to_builtins(msgspec.structs.replace(tool, scale=None))
    lines = ["[tools]", "entry_points = false", "", "[[tools.plugins]]"]
    lines += [f"{key} = {toml_value(v)}" for key, v in entry.items() if v is not None]
    return "\n".join(lines) + "\n"


def _slots(unit: Unit) -> int:
    """Calls the unit may run at once: its `max_concurrency`, lower while System 5
    tightens limits. Not its adaptive limit (see the module's docstring): calls above
    that are refused at once (they spill), they do not queue."""
    return unit.effective_concurrency


class ScaleRouting(Protocol):
    """What the scaler needs of the mesh catalog."""

    def activity(self, node_id: str) -> tuple[int, int]:
        """(calls in flight to the node now, calls sent to it so far)."""
        ...

    def routable(self, tool: str, node_id: str) -> bool:
        """Whether the catalog routes `tool` to the node."""
        ...

    def drain(self, tool: str, node_id: str, for_s: float) -> None:
        """Send no new call of `tool` to the node for `for_s`."""
        ...


class ToolScaler(LoopService):
    """The `s3-scale` loop over the node's `scale` tools."""

    loop_name = LOOP_NAME

    def __init__(
        self,
        loops: LoopSupervisor,
        *,
        tools: Sequence[PluginToolConfig],
        supervisor: Supervisor,
        children: Callable[[], ChildManager | None],
        routing: ScaleRouting,
        events: EventSink,
        data_dir: Path,
        meter: CpuMeter | None = None,
    ) -> None:
        super().__init__(loops)
        self._tools = {t.name: t for t in tools if t.scale is not None}
        self._deciders = {
            name: ScaleDecider(t.scale) for name, t in self._tools.items() if t.scale is not None
        }
        self._supervisor = supervisor
        self._children = children
        self._routing = routing
        self._started: dict[str, int] = {}  # child node id -> calls sent, at the last sample
        self._events = events
        self._config_dir = data_dir / SCALE_CONFIG_DIR
        self._meter = meter or CpuMeter()
        # tool -> the children serving it, in spawn order
        self.serving: dict[str, list[str]] = {name: [] for name in self._tools}
        self._next = dict.fromkeys(self._tools, 1)

    @property
    def tools(self) -> frozenset[str]:
        return frozenset(self._tools)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL_S)
            await self.tick()

    async def tick(self) -> None:
        cpu = self._meter.read()
        manager = self._children()
        if manager is None:
            return
        for name in self._tools:
            await self._tick_tool(name, cpu, manager)
        live = {c.get("node_id") for c in manager.view()}
        for node_id in [n for n in self._started if n not in live]:
            del self._started[node_id]  # a child stopped by someone else

    async def _tick_tool(self, name: str, cpu: float, manager: ChildManager) -> None:
        unit = self._supervisor.units.get(f"plugin:{name}")
        if unit is None or unit.state is not UnitState.RUNNING:
            return
        views = {c["name"]: c for c in manager.view()}
        serving = self.serving[name] = [c for c in self.serving[name] if c in views]
        busy = {c: self._busy(name, views[c].get("node_id") or "") for c in serving}
        sample = ScaleSample(
            time.monotonic(), cpu, unit.running_calls, unit.waiting_calls, _slots(unit), busy
        )
        decision = self._deciders[name].observe(sample)
        if decision is None:
            return
        if decision.action == "spawn":
            self._deciders[name].spawned(sample.now)
            await self._spawn(name, sample, decision, manager)
        else:
            await self._retire(name, sample, decision, manager)

    def _busy(self, tool: str, node_id: str) -> bool | None:
        """Whether the child `node_id` serving `tool` had a call since the last sample
        (calls sent are counted: a child serving short calls is rarely seen with one in
        flight); None while the catalog does not route to it yet."""
        if not node_id or not self._routing.routable(tool, node_id):
            return None
        inflight, started = self._routing.activity(node_id)
        before = self._started.get(node_id)
        self._started[node_id] = started
        return inflight > 0 or (before is not None and started != before)

    async def _spawn(
        self, name: str, sample: ScaleSample, decision: ScaleAction, manager: ChildManager
    ) -> None:
        child = self._child_name(name)
        path = self._config_dir / f"{child}.toml"
        self._config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_text(child_config(self._tools[name]), encoding="utf-8")
        try:
            manager.spawn(child, config=str(path), caller=f"scale:{name}")
        except ChildError as e:
            self._publish(name, "refused", child, f"{decision.reason}; spawn refused: {e}", sample)
            return
        self.serving[name].append(child)
        log.info("scale: spawned child %s for tool %s (%s)", child, name, decision.reason)
        self._publish(name, "spawn", child, decision.reason, sample)

    async def _retire(
        self, name: str, sample: ScaleSample, decision: ScaleAction, manager: ChildManager
    ) -> None:
        child = decision.child
        if child in self.serving[name]:
            self.serving[name].remove(child)
        node_id = next((c.get("node_id") for c in manager.view() if c["name"] == child), None)
        if node_id:
            await self._drain(name, node_id)
            self._started.pop(node_id, None)
        try:
            await manager.stop_child(child, caller=f"scale:{name}", remove_data=True)
        except ChildError as e:
            log.warning("scale: could not retire child %s: %s", child, e)
        (self._config_dir / f"{child}.toml").unlink(missing_ok=True)
        log.info("scale: retired child %s of tool %s (%s)", child, name, decision.reason)
        self._publish(name, "retire", child, decision.reason, sample, decision.idle_s)

    async def _drain(self, tool: str, node_id: str) -> None:
        """No new call to the child; wait (at most DRAIN_S) for those in flight."""
        self._routing.drain(tool, node_id, DRAIN_S)
        for _ in range(math.ceil(DRAIN_S / DRAIN_POLL_S)):
            if self._routing.activity(node_id)[0] == 0:
                return
            await asyncio.sleep(DRAIN_POLL_S)  # the catalog signals no call's end

    def _child_name(self, tool: str) -> str:
        n = self._next[tool]
        self._next[tool] = n + 1
        return f"scale-{_NOT_IN_NAME.sub('-', tool)[:40]}-{n}"

    def _publish(
        self,
        tool: str,
        action: str,
        child: str,
        reason: str,
        sample: ScaleSample,
        idle_s: float = 0.0,
    ) -> None:
        self._events.publish(
            ScaleDecision(
                ts=time.time(),
                tool=tool,
                action=action,
                child=child,
                reason=reason,
                cpu=round(sample.cpu, 3),
                running=sample.running,
                waiting=sample.waiting,
                slots=sample.slots,
                children=len(self.serving[tool]),
                idle_s=round(idle_s, 1),
            )
        )

    def view(self) -> dict[str, Any]:
        return {"tools": {name: list(children) for name, children in self.serving.items()}}
