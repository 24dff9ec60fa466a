"""The WASM runtime of a node: one wasmtime engine, its epoch clock, the compiled-module
cache and a bounded pool of worker threads that run calls.

wasmtime calls block, so they run off the event loop in the pool (`threads` workers);
the epoch deadline, not the caller, ends a runaway call, so a thread is never held past
the tool's time limit. Imported only when a WASM tool is configured: `wasmtime` is an
optional dependency.

The hop to a worker thread and back costs ≈65 µs, more than a short call itself, so a
module with no side effects outside the host's buffers (no directory granted: env and
clock are read-only) is first run on the event loop under a budget of `inline_budget_s`
(an epoch deadline). Most calls end within it; one that does not is abandoned (its
output dropped: it has changed nothing) and run again in the pool under the tool's full
limits, and that tool is then not tried inline for its next `INLINE_BACKOFF_CALLS`
calls (twice as many after each further overrun in a row). The loop is thus held at
most the budget plus two epoch ticks (a deadline set between ticks) plus the epoch
thread's late wake-up on a busy machine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib.metadata
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from vsmcp.edge import stdio
from vsmcp.edge.cache import ModuleCache, module_bytes
from vsmcp.edge.clock import EpochClock
from vsmcp.edge.engine import missing_pooling_internals, new_engine
from vsmcp.edge.errors import WasmBudgetSpent, WasmBusy, WasmLoadError, WasmUnavailable
from vsmcp.edge.manifest import Manifest
from vsmcp.edge.sandbox import WasmOutcome, missing_start_internals, own_stdio, run_call

if TYPE_CHECKING:
    import wasmtime

log = logging.getLogger(__name__)

DEFAULT_THREADS: Final = 2
# A call tried on the event loop gets this long before it moves to a worker.
DEFAULT_INLINE_BUDGET_S: Final = 0.001
# After a tool ran past the budget, its next calls go straight to the pool: this many
# after one overrun (a busy machine can preempt a short call past 1 ms), twice as many
# after each further overrun in a row, up to the maximum (a tool that always takes
# longer wastes the budget once in that many calls).
INLINE_BACKOFF_CALLS: Final = 8
INLINE_BACKOFF_MAX_CALLS: Final = 1024
WASI: Final = "wasi_snapshot_preview1"
# WASI preview 1's "not capable": what a module gets for a call it was not granted.
ERRNO_NOTCAPABLE: Final = 76


class InlineGate:
    """Whether a tool's next call is tried on the event loop (only the loop touches it)."""

    def __init__(self) -> None:
        self.skip = 0
        self.backoff = INLINE_BACKOFF_CALLS
        # Calls answered on the loop; calls that ran past the budget (run again).
        self.answers = 0
        self.overruns = 0

    def admit(self) -> bool:
        if self.skip > 0:
            self.skip -= 1
            return False
        return True

    def overran(self) -> None:
        self.overruns += 1
        self.skip = self.backoff
        self.backoff = min(self.backoff * 2, INLINE_BACKOFF_MAX_CALLS)

    def answered(self) -> None:
        self.answers += 1
        self.backoff = INLINE_BACKOFF_CALLS


@dataclass(frozen=True, slots=True)
class LoadedTool:
    """A manifest with its compiled, linked module (instantiated once per call);
    `inline`: None when its calls always run in the pool (it may have side effects)."""

    manifest: Manifest
    digest: str
    pre: wasmtime.InstancePre
    inline: InlineGate | None
    # Its stdio is served by the host (`edge.stdio`), not by wasmtime's WASI.
    host_stdio: bool = False


def _import_wasmtime() -> None:
    try:
        import wasmtime  # noqa: F401
    except ImportError as exc:
        raise WasmUnavailable(
            f"WASM tools need wasmtime (pip install 'vsmcp[wasm]'): {exc}"
        ) from exc


def _deny(linker: wasmtime.Linker, name: str, params: int, *, i64_at: int | None = None) -> None:
    """Shadow a WASI function with one that answers ENOTCAPABLE."""
    import wasmtime

    kinds = [wasmtime.ValType.i32()] * params
    if i64_at is not None:
        kinds[i64_at] = wasmtime.ValType.i64()
    fn_type = wasmtime.FuncType(kinds, [wasmtime.ValType.i32()])
    linker.define_func(WASI, name, fn_type, lambda *_: ERRNO_NOTCAPABLE)


def _linker(
    engine: wasmtime.Engine, *, clock: bool, host_stdio: stdio.HostStdio | None
) -> wasmtime.Linker:
    import wasmtime

    linker = wasmtime.Linker(engine)
    linker.allow_shadowing = True
    linker.define_wasi()
    if host_stdio is not None:
        # `fd_read`/`fd_write` by the host, for modules with only stdio (`edge.stdio`).
        i32 = wasmtime.ValType.i32()
        host_stdio.define(linker, WASI, wasmtime.FuncType([i32] * 4, [i32]))
    # A WASI sleep blocks the thread where no epoch deadline can reach it: never granted.
    _deny(linker, "poll_oneoff", 4)
    if not clock:
        _deny(linker, "clock_time_get", 3, i64_at=1)
        _deny(linker, "clock_res_get", 2)
    return linker


class WasmRuntime:
    def __init__(
        self,
        cache_dir: Path | None = None,
        threads: int = DEFAULT_THREADS,
        inline_budget_s: float = DEFAULT_INLINE_BUDGET_S,
        *,
        pooling: bool = True,
    ) -> None:
        """`pooling`: False for wasmtime's on-demand allocator, which it also falls back
        to when the pooling bindings or the pool's address space are missing (`pooled`
        says which it uses: a module with two memories is then refused when it is called,
        not when it is loaded)."""
        _import_wasmtime()
        missing_pooling = missing_pooling_internals()
        self.engine, self.pooled = new_engine(threads, pooling=pooling and not missing_pooling)
        self.clock = EpochClock(self.engine)
        self.cache = ModuleCache(self.engine, cache_dir)
        missing = stdio.missing_internals()
        self._host_stdio = None if missing else stdio.HostStdio()
        missing += [name for name in missing_start_internals() if name not in missing]
        missing += missing_pooling
        if missing:
            log.warning(
                "wasmtime %s lacks internals the WASM host uses (%s): it uses wasmtime-py's "
                "public API instead, ≈30 µs or more slower per call (tested: wasmtime>=40,<52)",
                importlib.metadata.version("wasmtime"),
                ", ".join(missing),
            )
        self._linkers = {
            (clock, host_stdio): _linker(
                self.engine, clock=clock, host_stdio=self._host_stdio if host_stdio else None
            )
            for clock in (False, True)
            for host_stdio in (False, True)
            if self._host_stdio is not None or not host_stdio
        }
        self._threads = threads
        self.inline_budget_s = inline_budget_s
        # Calls answered on the event loop; calls that ran past its budget (run again).
        self.inline_calls = 0
        self.inline_overruns = 0
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._users = 0
        self._lock = threading.Lock()

    def load(self, manifest: Manifest) -> LoadedTool:
        """Compile (or take from the cache) and link the manifest's module."""
        import wasmtime

        digest, module = self.cache.module(module_bytes(manifest.module))
        start = next((e for e in module.exports if e.name == "_start"), None)
        if start is None or not isinstance(start.type, wasmtime.FuncType):
            raise WasmLoadError(
                f"{str(manifest.module)!r} exports no '_start' function: not a WASI command"
            )
        try:
            host_stdio = own_stdio(manifest) and self._host_stdio is not None
            linker = self._linkers[manifest.grants.clock, host_stdio]
            pre = linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise WasmLoadError(f"{str(manifest.module)!r} cannot be linked: {exc}") from exc
        # Without a directory it can only read its stdin, env and clock: rerunnable.
        inline = InlineGate() if own_stdio(manifest) and self.inline_budget_s > 0 else None
        return LoadedTool(
            manifest=manifest, digest=digest, pre=pre, inline=inline, host_stdio=host_stdio
        )

    def acquire(self) -> None:
        """A unit starts using the runtime. The worker pool is made at the first acquire
        and kept for the runtime's lifetime (its idle workers only wait; they end with
        it): a release does not replace it, so calls still running to their deadlines
        after one hold its workers, not a new pool's, and the instances alive at once
        stay within its workers plus the event loop's call, which the engine's slots are
        sized for (`vsmcp.edge.engine`), however often units stop and start."""
        with self._lock:
            self._users += 1
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self._threads, thread_name_prefix="wasm"
                )
            if self._users == 1:
                self.clock.open()

    def release(self) -> None:
        """A unit stops using it: when none does, the epoch clock ends once the calls in
        flight have (each at its deadline at the latest)."""
        with self._lock:
            self._users -= 1
            if self._users > 0:
                return
        self.clock.close()

    async def call(self, tool: LoadedTool, stdin: bytes, timeout_s: float) -> WasmOutcome:
        """Run one call in the pool; `timeout_s` counts from when it starts running
        (the caller's own deadline bounds the wait for a worker)."""
        pool = self._pool
        if pool is None or self._users == 0:
            raise WasmLoadError("the WASM runtime is not started")
        loop = asyncio.get_running_loop()
        queued_at = loop.time()
        if tool.inline is not None and timeout_s > self.inline_budget_s and tool.inline.admit():
            try:
                outcome = self._run(tool, stdin, self.inline_budget_s, budget=True)
            except WasmBudgetSpent:
                self.inline_overruns += 1
                tool.inline.overran()
            else:
                self.inline_calls += 1
                tool.inline.answered()
                return outcome

        def run() -> WasmOutcome:
            # A call that waited for a worker has less of its time left.
            left = timeout_s - (loop.time() - queued_at)
            if left <= 0:
                # Not the module's fault: the workers were taken (by other calls).
                raise WasmBusy(
                    "the WASM runtime is busy: the call's time ran out while it waited "
                    "for a worker; retry later"
                )
            return self._run(tool, stdin, left, limit_s=timeout_s)

        return await loop.run_in_executor(pool, functools.partial(run))

    def _run(
        self,
        tool: LoadedTool,
        stdin: bytes,
        timeout_s: float,
        *,
        limit_s: float | None = None,
        budget: bool = False,
    ) -> WasmOutcome:
        return run_call(
            manifest=tool.manifest,
            pre=tool.pre,
            engine=self.engine,
            clock=self.clock,
            stdin=stdin,
            timeout_s=timeout_s,
            limit_s=limit_s,
            budget=budget,
            host_stdio=tool.host_stdio,
        )
