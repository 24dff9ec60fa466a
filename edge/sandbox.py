"""One call of a WASM tool: a fresh store and instance under the tool's limits.

ABI (WASI preview 1 command): the arguments as JSON on stdin, the result on stdout,
exit code 0 for success and any other for a tool error, stderr for the log. Each call
gets its own store (memory capped by a store limiter, an epoch deadline) and instance,
so nothing leaks from one call to the next. Runs in a worker thread: it blocks.
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from vsmcp.edge.errors import (
    WasmBudgetSpent,
    WasmBusy,
    WasmFault,
    WasmMemoryLimit,
    WasmOutputLimit,
    WasmTimeLimit,
    WasmTrap,
)
from vsmcp.edge.manifest import Manifest
from vsmcp.edge.stdio import CallStdio, Output, Stderr, bound

if TYPE_CHECKING:
    import wasmtime

    from vsmcp.edge.clock import EpochClock

WASM_PAGE_BYTES: Final = 64 << 10
# Memory within this much of the limit when a module traps or runs out of time: it
# was the limit (a failed `memory.grow` returns -1; most programs then abort).
MEMORY_NEAR_LIMIT_BYTES: Final = 1 << 20
TRAP_MESSAGE_CHARS: Final = 200
# How wasmtime's pooling allocator says every slot of a kind (core instances, memories,
# tables) is in use: "maximum concurrent limit of N for memories reached". The runtime is
# busy, the module did nothing wrong (and this is not its memory limit either).
POOL_EXHAUSTED_TEXT: Final = "maximum concurrent limit of"
MAX_MEMORIES: Final = 1
MAX_TABLES: Final = 4
# Elements of one table (8 to 16 bytes of host memory each): far above what compilers
# emit for indirect calls, far below what would hurt the node.
MAX_TABLE_ELEMENTS: Final = 100_000


@dataclass(frozen=True, slots=True)
class WasmOutcome:
    exit_code: int
    stdout: bytes
    stderr: bytes
    stderr_dropped_bytes: int
    elapsed_s: float


def own_stdio(manifest: Manifest) -> bool:
    """Whether the host serves the module's stdio (`vsmcp.edge.stdio`): when it has no
    file descriptors but 0, 1 and 2, i.e. no directory granted."""
    return not manifest.grants.dirs


def _wasi_config(
    manifest: Manifest, stdin: bytes, out: Output, err: Stderr, *, host_stdio: bool
) -> wasmtime.WasiConfig:
    import wasmtime

    wasi = wasmtime.WasiConfig()
    wasi.argv = [manifest.name]
    grants = manifest.grants
    if grants.env:
        wasi.env = [(name, os.environ[name]) for name in grants.env if name in os.environ]
    for grant in grants.dirs:
        host = str(manifest.path.parent / grant.host)
        wasi.preopen_dir(host, grant.guest, fs_mutable=grant.writable)
    if not (host_stdio and own_stdio(manifest)):
        _set_stdin(wasi, stdin)
        wasi.stdout_custom = out.write
        wasi.stderr_custom = err.write
    return wasi


def _set_stdin(wasi: wasmtime.WasiConfig, data: bytes) -> None:
    """stdin from bytes: through the C API's `wasi_config_set_stdin_bytes` (≈5 µs), which
    wasmtime-py does not wrap; if a version lacks it, an anonymous in-memory file (≈25 µs:
    no disk, no pipe to feed from a thread)."""
    import wasmtime

    _ffi = getattr(wasmtime, "_ffi", None)
    set_bytes = getattr(_ffi, "wasi_config_set_stdin_bytes", None)
    if _ffi is not None and set_bytes is not None and hasattr(_ffi, "wasm_byte_vec_new"):
        vec = _ffi.wasm_byte_vec_t()
        _ffi.wasm_byte_vec_new(
            ctypes.byref(vec), len(data), (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        )
        set_bytes(wasi.ptr(), ctypes.byref(vec))  # takes ownership of the copy
        return
    fd = os.memfd_create("wasm-stdin", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        wasi.stdin_file = f"/proc/self/fd/{fd}"  # wasmtime opens its own description
    finally:
        os.close(fd)


def _memory_bytes(instance: wasmtime.Instance, store: wasmtime.Store) -> int:
    import wasmtime

    memory = instance.exports(store).get("memory")
    if isinstance(memory, wasmtime.Memory):
        return int(memory.size(store)) * WASM_PAGE_BYTES
    return 0


def _fault(
    exc: wasmtime.Trap | wasmtime.WasmtimeError,
    manifest: Manifest,
    out: Output,
    memory_bytes: int,
    timeout_s: float,
) -> WasmFault:
    import wasmtime

    limits = manifest.limits
    memory_cap = limits.memory_mb << 20
    if out.overflowed:
        return WasmOutputLimit(
            f"stopped: its output passed the limit of {limits.output_bytes} bytes "
            "(limits.output_bytes)"
        )
    if memory_bytes + MEMORY_NEAR_LIMIT_BYTES > memory_cap:
        return WasmMemoryLimit(
            f"stopped: it reached its memory limit of {limits.memory_mb} MB (limits.memory_mb)"
        )
    code = exc.trap_code if isinstance(exc, wasmtime.Trap) else None
    if code is wasmtime.TrapCode.INTERRUPT:
        return WasmTimeLimit(
            f"stopped: it ran past its time limit of {timeout_s * 1000:.0f} ms (limits.timeout_ms "
            "or the caller's deadline)"
        )
    detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    what = code.name.lower() if code is not None else "error"
    return WasmTrap(f"trapped ({what}): {detail[:TRAP_MESSAGE_CHARS]}")


# wasmtime-py internals `_call_start` uses (besides `Store._context`, `Instance._instance`).
_START_FFI_NAMES: Final = (
    "wasmtime_extern_t",
    "wasmtime_instance_export_get",
    "WASMTIME_EXTERN_FUNC",
    "wasmtime_func_call",
)


@functools.cache
def missing_start_internals() -> tuple[str, ...]:
    """The wasmtime-py internals the direct `_start` call needs that this version lacks
    (empty when it can be used; otherwise `_start` is called through the public API).
    Looked up once, at the first call."""
    try:
        import wasmtime
        from wasmtime import _ffi, _func
    except ImportError:
        return ("wasmtime._ffi", "wasmtime._func")
    missing = [f"wasmtime._ffi.{name}" for name in _START_FFI_NAMES if not hasattr(_ffi, name)]
    if not hasattr(_func, "enter_wasm"):
        missing.append("wasmtime._func.enter_wasm")
    for owner, name in ((wasmtime.Store, "_context"), (wasmtime.WasmtimeError, "_from_ptr")):
        if not hasattr(owner, name):
            missing.append(f"wasmtime.{owner.__name__}.{name}")
    return tuple(missing)


def _call_start(store: wasmtime.Store, instance: wasmtime.Instance) -> None:
    """Call the instance's `_start` (checked at load: a function, no parameters).

    Straight through the C API when this wasmtime-py has the internals it uses (≈15 µs
    less than `instance.exports(store)["_start"](store)`, which wraps every export and
    reads the function's type on each call); through its public API otherwise."""
    import wasmtime

    raw_instance = getattr(instance, "_instance", None)
    if raw_instance is None or missing_start_internals():
        start = instance.exports(store)["_start"]
        assert isinstance(start, wasmtime.Func)
        start(store)
        return
    from wasmtime import _ffi
    from wasmtime._func import enter_wasm

    context = store._context()
    item: Any = _ffi.wasmtime_extern_t()
    name = b"_start"
    found = _ffi.wasmtime_instance_export_get(
        context, ctypes.byref(raw_instance), name, len(name), ctypes.byref(item)
    )
    if not found or item.kind != _ffi.WASMTIME_EXTERN_FUNC.value:
        raise wasmtime.WasmtimeError("the module exports no '_start' function")
    with enter_wasm(store) as trap:
        error = _ffi.wasmtime_func_call(context, ctypes.byref(item.of.func), None, 0, None, 0, trap)
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)


def run_call(
    *,
    manifest: Manifest,
    pre: wasmtime.InstancePre,
    engine: wasmtime.Engine,
    clock: EpochClock,
    stdin: bytes,
    timeout_s: float,
    limit_s: float | None = None,
    budget: bool = False,
    host_stdio: bool = True,
) -> WasmOutcome:
    """Run the module once within `timeout_s`; raises a `WasmFault` subclass when it is
    stopped (`limit_s`, the time limit its error names: `timeout_s` unless given), and
    `WasmBusy` when the engine has no instance slot free for it. With `budget`,
    `timeout_s` is a trial's budget, not a limit: running past it raises
    `WasmBudgetSpent` (whatever its memory), for the caller to run it again.
    `host_stdio`: its linker has the host's stdio (`vsmcp.edge.stdio`), used when it
    has no directory granted; otherwise wasmtime's WASI serves it."""
    import time

    import wasmtime

    started = time.perf_counter()
    out, err = Output(manifest.limits.output_bytes), Stderr()
    store = wasmtime.Store(engine)
    # One memory (several would each get the whole limit) and bounded tables: a table's
    # elements are host memory too, which the memory limit does not count.
    store.set_limits(
        memory_size=manifest.limits.memory_mb << 20,
        memories=MAX_MEMORIES,
        tables=MAX_TABLES,
        table_elements=MAX_TABLE_ELEMENTS,
    )
    store.set_wasi(_wasi_config(manifest, stdin, out, err, host_stdio=host_stdio))
    instance: wasmtime.Instance | None = None
    exit_code = 0
    clock.enter()
    try:
        store.set_epoch_deadline(clock.ticks_for(timeout_s))
        with bound(CallStdio(stdin, out, err)):
            try:
                instance = pre.instantiate(store)
                _call_start(store, instance)
            except wasmtime.ExitTrap as exc:
                exit_code = exc.code
            except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                if instance is None and POOL_EXHAUSTED_TEXT in str(exc):
                    raise WasmBusy(
                        f"the WASM runtime is busy ({str(exc).strip()[:TRAP_MESSAGE_CHARS]}: "
                        "calls still running to their deadlines hold the instance slots); "
                        "retry later"
                    ) from None
                interrupted = isinstance(exc, wasmtime.Trap) and (
                    exc.trap_code is wasmtime.TrapCode.INTERRUPT
                )
                if budget and interrupted:
                    raise WasmBudgetSpent(f"ran past its {timeout_s * 1000:.1f} ms") from None
                if instance is None and "memory" in str(exc) and "limit" in str(exc):
                    used = manifest.limits.memory_mb << 20  # its initial memory is over the cap
                else:
                    used = 0 if instance is None else _memory_bytes(instance, store)
                raise _fault(exc, manifest, out, used, limit_s or timeout_s) from None
    finally:
        clock.leave()
        # Dropped now, not when the last reference goes: a stopped call's frame is kept
        # by its error (a reference cycle, until a garbage collection), and the engine
        # has a bounded number of instance slots (`vsmcp.edge.engine`).
        store.close()
    if out.overflowed:
        # It ignored the failed write and exited: the answer is cut, so it is no answer.
        raise _fault(wasmtime.WasmtimeError("output cut"), manifest, out, 0, timeout_s)
    return WasmOutcome(
        exit_code=exit_code,
        stdout=b"".join(out.parts),
        stderr=b"".join(err.parts),
        stderr_dropped_bytes=err.dropped,
        elapsed_s=time.perf_counter() - started,
    )
