"""WASM tools as System 1 units: each manifest (`[[tools.wasm]]`) is one unit `wasm:<name>`
serving one tool, run by `vsmcp.edge.runtime` under the manifest's limits.

A call's arguments go to the module as JSON on stdin; its stdout is the answer (text
content, and structured content when it is a JSON object); a non-zero exit is a tool
error (`isError`); stderr goes to the node's log, line by line, escaped like a mounted
server's. A module stopped at a limit or by a trap raises `ToolFault`: the caller gets
an error result naming the limit, the stop is counted (`vsmcp_wasm_stops`), and the
supervisor counts it as a fault of the tool, so a module that keeps breaking its
limits is quarantined like any other unit's failing tool.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from vsmcp.edge.errors import EdgeError, WasmBusy, WasmFault
from vsmcp.edge.grants import EdgePermissions
from vsmcp.edge.manifest import Manifest
from vsmcp.edge.runtime import LoadedTool, WasmRuntime
from vsmcp.edge.sandbox import WasmOutcome
from vsmcp.node.tools.config import EdgeConfig, ProbeConfig
from vsmcp.node.tools.errors import ToolFault, UnitFault, UnknownTool, WasmRuntimeBusy
from vsmcp.node.tools.model import CallContext, ToolResult, ToolSpec, text_result
from vsmcp.node.tools.stdio import escape_line

if TYPE_CHECKING:
    from vsmcp.node.tools.registry import LocalCatalog

log = logging.getLogger(__name__)

STDERR_LINES_PER_CALL: Final = 20
# What a caller refused for want of room in the runtime (`WasmRuntimeBusy`) is told to
# wait: a runaway call holds its slot and worker until its deadline, a second or more.
BUSY_RETRY_AFTER_S: Final = 1.0


def edge_permissions(cfg: EdgeConfig) -> EdgePermissions:
    """What `[edge]` allows manifests to be granted."""
    return EdgePermissions(
        dirs=tuple(Path(d).expanduser() for d in cfg.allow_dirs),
        env=frozenset(cfg.allow_env),
        clock=cfg.allow_clock,
    )


def shared_runtime(catalog: LocalCatalog, edge: EdgeConfig, cache_dir: Path | None) -> WasmRuntime:
    """The node's WASM runtime (`catalog.wasm_runtime`), made at the first call: one per
    node for configured tools and published modules alike, so one engine and one pool of
    instance slots (their address space, `vsmcp.edge.engine`), one set of workers, one
    epoch clock. `cache_dir`: where compiled modules are kept (`<data_dir>/wasm-cache`).
    Raises `EdgeError` when wasmtime is missing."""
    if catalog.wasm_runtime is None:
        catalog.wasm_runtime = WasmRuntime(cache_dir if edge.cache_compiled else None, edge.threads)
    return catalog.wasm_runtime


class WasmProvider:
    def __init__(self, manifest: Manifest, runtime: WasmRuntime) -> None:
        self._manifest = manifest
        self._runtime = runtime
        self._loaded: LoadedTool | None = None
        self._spec = ToolSpec(
            name=manifest.name,
            description=manifest.description,
            input_schema=manifest.input_schema,
            zone=manifest.zone,
            provider="wasm",
        )
        # Calls stopped, by limit (time, memory, output, trap); for the metrics.
        self.stops: Counter[str] = Counter()
        self.stderr_dropped_lines = 0

    @property
    def name(self) -> str:
        return f"wasm:{self._manifest.name}"

    @property
    def runtime(self) -> WasmRuntime:
        return self._runtime

    @property
    def declared_probe(self) -> ProbeConfig | None:
        """The manifest's `[probe]` (System 3*: node/vsm/audits.py), None: unaudited."""
        probe = self._manifest.probe
        if probe is None:
            return None
        return ProbeConfig(arguments=probe.arguments, expect=probe.expect)

    def inline_counts(self) -> dict[str, int]:
        """Calls tried on the event loop (`vsmcp.edge.runtime`), by outcome."""
        loaded = self._loaded
        gate = loaded.inline if loaded is not None else None
        if gate is None:
            return {}
        return {"answered": gate.answers, "overran": gate.overruns}

    def tools(self) -> Sequence[ToolSpec]:
        return (self._spec,)

    async def run(self, ready: Callable[[], None], stop: asyncio.Event) -> None:
        self._runtime.acquire()
        try:
            try:
                # Compiling takes milliseconds to seconds: not on the event loop.
                self._loaded = await asyncio.to_thread(self._runtime.load, self._manifest)
            except EdgeError as exc:
                raise UnitFault(f"wasm tool {self._manifest.name!r}: {exc}") from exc
            ready()
            await stop.wait()
        finally:
            self._loaded = None
            self._runtime.release()

    async def call(self, tool: str, arguments: Mapping[str, Any], ctx: CallContext) -> ToolResult:
        if tool != self._manifest.name:
            raise UnknownTool(tool)
        loaded = self._loaded
        if loaded is None:
            raise UnitFault(f"wasm tool {tool!r} is not loaded")
        timeout_s = self._manifest.limits.timeout_ms / 1000
        remaining = ctx.remaining_s()
        if remaining is not None:
            timeout_s = min(timeout_s, max(remaining, 0.0))
        stdin = json.dumps(dict(arguments), separators=(",", ":")).encode()
        try:
            outcome = await self._runtime.call(loaded, stdin, timeout_s)
        except WasmBusy as exc:
            # No room in the runtime: refused before it ran, not counted against the tool.
            raise WasmRuntimeBusy(tool, str(exc), BUSY_RETRY_AFTER_S) from exc
        except WasmFault as exc:
            self.stops[exc.limit] += 1
            # The unit turns it into an error result and counts it against the tool.
            raise ToolFault(str(exc)) from exc
        self._log_stderr(outcome)
        return self._result(outcome)

    def _result(self, outcome: WasmOutcome) -> ToolResult:
        text = outcome.stdout.decode(errors="replace")
        if outcome.exit_code != 0:
            why = text.strip() or self._last_stderr_line(outcome)
            return text_result(
                f"Tool {self._manifest.name!r} exited with code {outcome.exit_code}: {why}",
                is_error=True,
            )
        result = text_result(text)
        if text.lstrip().startswith("{"):
            try:
                value = json.loads(text)
            except ValueError:
                value = None
            if isinstance(value, dict):
                result["structuredContent"] = value
        return result

    @staticmethod
    def _last_stderr_line(outcome: WasmOutcome) -> str:
        lines = outcome.stderr.decode(errors="replace").strip().splitlines()
        return escape_line(lines[-1]) if lines else "(no output)"

    def _log_stderr(self, outcome: WasmOutcome) -> None:
        if not outcome.stderr:
            return
        name = self._manifest.name
        lines = outcome.stderr.decode(errors="replace").splitlines()
        for line in lines[:STDERR_LINES_PER_CALL]:
            text = escape_line(line.rstrip("\r"))
            log.info("wasm %s stderr: %s", name, text, extra={"wasm": name, "stderr": text})
        dropped = max(0, len(lines) - STDERR_LINES_PER_CALL)
        if dropped or outcome.stderr_dropped_bytes:
            self.stderr_dropped_lines += dropped
            log.warning(
                "wasm %s: dropped %d stderr lines and %d bytes of one call (over the "
                "per-call limits)",
                name,
                dropped,
                outcome.stderr_dropped_bytes,
                extra={"wasm": name},
            )
