"""The WASM runtime of a node: one wasmtime engine, its epoch clock, the compiled-module
cache and a bounded pool of worker threads that run calls.

wasmtime calls block, so they run off the event loop in the pool (`threads` workers);
the epoch deadline, not the caller, ends a runaway call, so a thread is never held past
the tool's time limit. Imported only when a WASM tool is configured: `wasmtime` is an
optional dependency.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from vsmcp.edge import stdio
from vsmcp.edge.cache import ModuleCache, module_bytes
from vsmcp.edge.clock import EpochClock
from vsmcp.edge.errors import WasmLoadError, WasmTimeLimit, WasmUnavailable
from vsmcp.edge.manifest import Manifest
from vsmcp.edge.sandbox import WasmOutcome, own_stdio, run_call

if TYPE_CHECKING:
    import wasmtime

DEFAULT_THREADS: Final = 2
WASI: Final = "wasi_snapshot_preview1"
# WASI preview 1's "not capable": what a module gets for a call it was not granted.
ERRNO_NOTCAPABLE: Final = 76


@dataclass(frozen=True, slots=True)
class LoadedTool:
    """A manifest with its compiled, linked module (instantiated once per call)."""

    manifest: Manifest
    digest: str
    pre: wasmtime.InstancePre


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


def _serve_stdio(linker: wasmtime.Linker) -> None:
    """`fd_read`/`fd_write` by the host, for modules with only stdio (`edge.stdio`)."""
    import wasmtime

    i32 = wasmtime.ValType.i32()
    fn_type = wasmtime.FuncType([i32] * 4, [i32])
    linker.define_func(WASI, "fd_read", fn_type, stdio.fd_read, access_caller=True)
    linker.define_func(WASI, "fd_write", fn_type, stdio.fd_write, access_caller=True)


def _linker(engine: wasmtime.Engine, *, clock: bool, host_stdio: bool) -> wasmtime.Linker:
    import wasmtime

    linker = wasmtime.Linker(engine)
    linker.allow_shadowing = True
    linker.define_wasi()
    if host_stdio:
        _serve_stdio(linker)
    # A WASI sleep blocks the thread where no epoch deadline can reach it: never granted.
    _deny(linker, "poll_oneoff", 4)
    if not clock:
        _deny(linker, "clock_time_get", 3, i64_at=1)
        _deny(linker, "clock_res_get", 2)
    return linker


class WasmRuntime:
    def __init__(self, cache_dir: Path | None = None, threads: int = DEFAULT_THREADS) -> None:
        _import_wasmtime()
        import wasmtime

        config = wasmtime.Config()
        config.epoch_interruption = True
        self.engine = wasmtime.Engine(config)
        self.clock = EpochClock(self.engine)
        self.cache = ModuleCache(self.engine, cache_dir)
        self._linkers = {
            (clock, host_stdio): _linker(self.engine, clock=clock, host_stdio=host_stdio)
            for clock in (False, True)
            for host_stdio in (False, True)
        }
        self._threads = threads
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
            linker = self._linkers[manifest.grants.clock, own_stdio(manifest)]
            pre = linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise WasmLoadError(f"{str(manifest.module)!r} cannot be linked: {exc}") from exc
        return LoadedTool(manifest=manifest, digest=digest, pre=pre)

    def acquire(self) -> None:
        """A unit starts using the runtime: the worker pool exists while any does."""
        with self._lock:
            self._users += 1
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self._threads, thread_name_prefix="wasm"
                )

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users > 0 or self._pool is None:
                return
            pool, self._pool = self._pool, None
        # Calls in flight finish at their deadlines; queued ones are dropped.
        pool.shutdown(wait=False, cancel_futures=True)
        self.clock.close()

    async def call(self, tool: LoadedTool, stdin: bytes, timeout_s: float) -> WasmOutcome:
        """Run one call in the pool; `timeout_s` counts from when it starts running
        (the caller's own deadline bounds the wait for a worker)."""
        pool = self._pool
        if pool is None:
            raise WasmLoadError("the WASM runtime is not started")
        loop = asyncio.get_running_loop()
        queued_at = loop.time()

        def run() -> WasmOutcome:
            # A call that waited for a worker has less of its time left.
            left = timeout_s - (loop.time() - queued_at)
            if left <= 0:
                raise WasmTimeLimit("stopped before it started: its time ran out in the queue")
            return run_call(
                manifest=tool.manifest,
                pre=tool.pre,
                engine=self.engine,
                clock=self.clock,
                stdin=stdin,
                timeout_s=left,
                limit_s=timeout_s,
            )

        return await loop.run_in_executor(pool, functools.partial(run))
