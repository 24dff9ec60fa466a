"""The WASM host: the ABI, each limit stopping a hostile module with a clear error (and the
others still answering), grants, and the compiled-module cache."""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.edge.conftest import EXAMPLES, MODULES, slots_held, write_manifest
from tests.polling import async_wait_for
from tests.skips import require_module
from vsmcp.edge.engine import pool_slots
from vsmcp.edge.errors import (
    WasmBusy,
    WasmFault,
    WasmLoadError,
    WasmMemoryLimit,
    WasmOutputLimit,
    WasmTimeLimit,
    WasmTrap,
)
from vsmcp.edge.grants import EdgePermissions
from vsmcp.edge.manifest import load_manifest
from vsmcp.edge.runtime import (
    DEFAULT_THREADS,
    INLINE_BACKOFF_CALLS,
    INLINE_BACKOFF_MAX_CALLS,
    InlineGate,
    WasmRuntime,
)

# Limits small enough that the hostile modules hit them at once.
HOSTILE_LIMITS = "timeout_ms = 300\nmemory_mb = 4\noutput_bytes = 65536"


def load(runtime: Any, tmp_path: Path, module: str, limits: str = HOSTILE_LIMITS) -> Any:
    manifest = write_manifest(tmp_path, module, MODULES / f"{module}.wat", limits=limits)
    return runtime.load(load_manifest(manifest))


def echo(runtime: Any) -> Any:
    return runtime.load(load_manifest(EXAMPLES / "echo.toml"))


async def test_echo_reads_stdin_and_answers_on_stdout(runtime: Any) -> None:
    outcome = await runtime.call(echo(runtime), b'{"a":[1,2]}', 1.0)
    assert outcome.exit_code == 0
    assert json.loads(outcome.stdout) == {"echo": {"a": [1, 2]}}


async def test_non_zero_exit_is_an_outcome_with_its_output(runtime: Any, tmp_path: Path) -> None:
    outcome = await runtime.call(load(runtime, tmp_path, "fail"), b"{}", 1.0)
    assert outcome.exit_code == 3
    assert outcome.stdout == b'{"error":"bad input"}'
    assert outcome.stderr == b"bad input\n\x1b[31mred"


@pytest.mark.parametrize(
    ("module", "error", "message"),
    [
        ("loop", WasmTimeLimit, "time limit of 300 ms"),
        ("bomb", WasmMemoryLimit, "memory limit of 4 MB"),
        ("flood", WasmOutputLimit, "limit of 65536 bytes"),
        ("trap", WasmTrap, "unreachable"),
    ],
)
async def test_a_hostile_module_is_stopped_at_its_limit_and_others_keep_answering(
    runtime: Any, tmp_path: Path, module: str, error: type[WasmFault], message: str
) -> None:
    hostile = load(runtime, tmp_path, module)
    good = echo(runtime)
    # The hostile call and a good one at the same time: the pool has two workers.
    bad_call = asyncio.ensure_future(runtime.call(hostile, b"{}", 0.3))
    answer = await runtime.call(good, b'{"n":1}', 5.0)  # generous: two busy cores
    assert json.loads(answer.stdout) == {"echo": {"n": 1}}
    with pytest.raises(error, match=message):
        await bad_call
    again = await runtime.call(good, b'{"n":2}', 5.0)
    assert json.loads(again.stdout) == {"echo": {"n": 2}}


async def test_stopped_calls_give_their_instance_slot_back_at_once(
    runtime: Any, tmp_path: Path
) -> None:
    # A stopped call's error keeps its frame (a reference cycle) until the collector
    # runs; the engine has a bounded number of instance slots. More stops in a row than
    # there are slots, the collector off: each store is dropped when its call ends.
    trap = load(runtime, tmp_path, "trap")
    gc.disable()
    try:
        for _ in range(pool_slots(DEFAULT_THREADS) + 4):
            with pytest.raises(WasmTrap, match="unreachable"):
                await runtime.call(trap, b"{}", 1.0)
        answer = await runtime.call(echo(runtime), b'{"n":1}', 5.0)
    finally:
        gc.enable()
    assert json.loads(answer.stdout) == {"echo": {"n": 1}}


# Each call adds 1 to a global, to a byte of its data segment ("0"), to a byte of its
# zeroed memory and to a byte of a page it grows, and writes the four as digits.
STATEFUL_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $g (mut i32) (i32.const 0))
  (data (i32.const 16) "0")
  (func $bump (param $at i32)
    (i32.store8 (local.get $at) (i32.add (i32.load8_u (local.get $at)) (i32.const 1))))
  (func (export "_start")
    (global.set $g (i32.add (global.get $g) (i32.const 1)))
    (call $bump (i32.const 16))
    (call $bump (i32.const 17))
    (drop (memory.grow (i32.const 1)))
    (call $bump (i32.const 65541))
    (i32.store8 (i32.const 17) (i32.add (i32.load8_u (i32.const 17)) (i32.const 48)))
    (i32.store8 (i32.const 18) (i32.add (global.get $g) (i32.const 48)))
    (i32.store8 (i32.const 19) (i32.add (i32.load8_u (i32.const 65541)) (i32.const 48)))
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 4))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


async def test_no_call_sees_what_an_earlier_one_left_in_its_instance(
    runtime: Any, tmp_path: Path
) -> None:
    # Instances come from the engine's pool of slots, reused: each must start as new.
    wat = tmp_path / "stateful.wat"
    wat.write_text(STATEFUL_WAT)
    tool = runtime.load(load_manifest(write_manifest(tmp_path, "stateful", wat)))
    answers = [(await runtime.call(tool, b"{}", 5.0)).stdout for _ in range(8)]
    assert answers == [b"1111"] * 8


async def test_the_callers_shorter_deadline_stops_a_runaway(runtime: Any, tmp_path: Path) -> None:
    hostile = load(runtime, tmp_path, "loop", "timeout_ms = 60000")
    with pytest.raises(WasmTimeLimit, match="time limit of 50 ms"):
        await runtime.call(hostile, b"{}", 0.05)


async def test_a_module_whose_memory_starts_over_the_limit_is_stopped(
    runtime: Any, tmp_path: Path
) -> None:
    big = tmp_path / "big.wat"
    big.write_text('(module (memory 256) (func (export "_start")))')  # 16 MB at start
    manifest = write_manifest(tmp_path, "big", big, limits="memory_mb = 4")
    with pytest.raises(WasmMemoryLimit, match="memory limit of 4 MB"):
        await runtime.call(runtime.load(load_manifest(manifest)), b"{}", 1.0)


@pytest.mark.parametrize(("granted", "errno"), [(False, "76"), (True, "00")])
async def test_the_clock_is_refused_unless_granted(
    runtime: Any, tmp_path: Path, granted: bool, errno: str
) -> None:
    extra = "[grants]\nclock = true" if granted else ""
    path = tmp_path / "clock.toml"
    path.write_text(f'name = "clock"\nmodule = "{MODULES / "clock.wat"}"\n{extra}\n')
    manifest = load_manifest(path, EdgePermissions(clock=True))
    outcome = await runtime.call(runtime.load(manifest), b"{}", 1.0)
    assert json.loads(outcome.stdout) == {"errno": errno}


def test_a_module_without_start_is_refused(runtime: Any, tmp_path: Path) -> None:
    lib = tmp_path / "lib.wat"
    lib.write_text('(module (func (export "add")))')
    with pytest.raises(WasmLoadError, match="_start"):
        runtime.load(load_manifest(write_manifest(tmp_path, "lib", lib)))


def test_invalid_wat_is_refused(runtime: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.wat"
    bad.write_text("(module (func")
    with pytest.raises(WasmLoadError, match="not valid WAT"):
        runtime.load(load_manifest(write_manifest(tmp_path, "bad", bad)))


def test_compiled_modules_are_cached_in_memory_and_on_disk(tmp_path: Path) -> None:
    from vsmcp.edge.runtime import WasmRuntime

    manifest = load_manifest(EXAMPLES / "echo.toml")
    first = WasmRuntime(cache_dir=tmp_path / "cache")
    first.load(manifest)
    first.load(manifest)
    assert (first.cache.compiled, first.cache.loaded_from_disk) == (1, 0)
    assert len(list((tmp_path / "cache").glob("*.cwasm"))) == 1
    second = WasmRuntime(cache_dir=tmp_path / "cache")
    second.load(manifest)
    assert (second.cache.compiled, second.cache.loaded_from_disk) == (0, 1)


def test_a_corrupt_cached_module_is_compiled_again(tmp_path: Path) -> None:
    from vsmcp.edge.runtime import WasmRuntime

    manifest = load_manifest(EXAMPLES / "echo.toml")
    WasmRuntime(cache_dir=tmp_path).load(manifest)
    (cached,) = tmp_path.glob("*.cwasm")
    cached.write_bytes(b"not a module")
    again = WasmRuntime(cache_dir=tmp_path)
    again.load(manifest)
    assert (again.cache.compiled, again.cache.loaded_from_disk) == (1, 0)


@pytest.mark.parametrize("module", ["echo", "flood", "fail"])
async def test_with_a_directory_granted_stdio_goes_through_wasi_with_the_same_limits(
    runtime: Any, tmp_path: Path, module: str
) -> None:
    # A granted directory means file descriptors beyond 0-2: wasmtime's WASI serves stdio.
    (tmp_path / "data").mkdir()
    wat = EXAMPLES / "echo.wat" if module == "echo" else MODULES / f"{module}.wat"
    manifest = write_manifest(
        tmp_path,
        module,
        wat,
        limits=HOSTILE_LIMITS,
        extra='[grants]\ndirs = [{ host = "data", guest = "/data" }]',
    )
    tool = runtime.load(load_manifest(manifest, EdgePermissions(dirs=(tmp_path,))))
    assert tool.inline is None  # it could write its files: never run twice
    if module == "flood":
        with pytest.raises(WasmOutputLimit, match="limit of 65536 bytes"):
            await runtime.call(tool, b"{}", 0.3)
        return
    outcome = await runtime.call(tool, b'{"d":1}', 1.0)
    assert runtime.inline_calls == 0
    if module == "fail":
        assert (outcome.exit_code, outcome.stderr) == (3, b"bad input\n\x1b[31mred")
    else:
        assert json.loads(outcome.stdout) == {"echo": {"d": 1}}


async def test_the_epoch_thread_outlives_a_release_until_the_last_call_ends(
    runtime: Any, tmp_path: Path
) -> None:
    async def alive() -> bool:
        return bool(runtime.clock.thread_alive())

    async def ended() -> bool:
        return not runtime.clock.thread_alive()

    hostile = load(runtime, tmp_path, "loop")
    call = asyncio.ensure_future(runtime.call(hostile, b"{}", 0.3))
    await async_wait_for(alive, what="the epoch thread started by the call")
    runtime.release()  # as at shutdown: the call in flight still gets its deadline
    with pytest.raises(WasmTimeLimit):
        await call
    await async_wait_for(ended, what="the epoch thread ended after the last call")
    runtime.acquire()  # the fixture releases it again


async def test_a_write_from_outside_its_memory_is_refused_not_a_crash(
    runtime: Any, tmp_path: Path
) -> None:
    # fd_write with an iovec pointing past the end of its 1-page memory: EFAULT (21),
    # which the module turns into its exit code.
    bad = tmp_path / "bad_ptr.wat"
    bad.write_text(
        '(module (import "wasi_snapshot_preview1" "fd_write"'
        " (func $w (param i32 i32 i32 i32) (result i32)))"
        ' (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))'
        ' (memory (export "memory") 1)'
        ' (func (export "_start")'
        " (i32.store (i32.const 0) (i32.const 65530)) (i32.store (i32.const 4) (i32.const 100))"
        " (call $exit (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"
    )
    outcome = await runtime.call(
        runtime.load(load_manifest(write_manifest(tmp_path, "b", bad))), b"{}", 1.0
    )
    assert (outcome.exit_code, outcome.stdout) == (21, b"")


async def test_a_second_memory_does_not_get_a_second_memory_limit(
    runtime: Any, tmp_path: Path
) -> None:
    # Two memories grown to 3 MB each under a 4 MB limit: 6 MB if each had the limit.
    wat = tmp_path / "two.wat"
    wat.write_text(
        "(module (memory $a 1) (memory $b 1)"
        ' (func (export "_start")'
        " (drop (memory.grow $a (i32.const 47))) (drop (memory.grow $b (i32.const 47)))))"
    )
    manifest = load_manifest(write_manifest(tmp_path, "two", wat, limits="memory_mb = 4"))
    if runtime.pooled:
        # The engine's instance pool has one memory per instance: refused when loaded.
        with pytest.raises(WasmLoadError, match="memories count of 2 exceeds"):
            runtime.load(manifest)
    else:  # the on-demand allocator (fallen back to): the store's limit stops it
        await _second_memory_stopped_at_its_call(runtime, manifest)


async def test_a_second_memory_is_stopped_at_its_call_with_the_on_demand_allocator(
    tmp_path: Path,
) -> None:
    require_module("wasmtime")
    runtime = WasmRuntime(pooling=False)
    assert not runtime.pooled
    runtime.acquire()
    try:
        wat = tmp_path / "two.wat"
        wat.write_text('(module (memory 1) (memory 1) (func (export "_start")))')
        manifest = write_manifest(tmp_path, "two", wat, limits="memory_mb = 4")
        await _second_memory_stopped_at_its_call(runtime, load_manifest(manifest))
    finally:
        runtime.release()


async def _second_memory_stopped_at_its_call(runtime: Any, manifest: Any) -> None:
    # The store allows one memory (`sandbox.MAX_MEMORIES`): the instance is not made.
    with pytest.raises(WasmMemoryLimit, match="memory limit of 4 MB"):
        await runtime.call(runtime.load(manifest), b"{}", 1.0)


async def test_a_module_with_40000_functions_in_its_table_loads_and_runs(
    runtime: Any, tmp_path: Path
) -> None:
    # 64 bytes of instance metadata per imported function in the table: 2.5 MB, over
    # wasmtime's default 1 MiB per pooled instance (refused at load before), well within
    # the 100,000 elements a table may have. Imports: no compiling 40,000 bodies.
    count = 40_000
    imports = "".join(
        f'(import "wasi_snapshot_preview1" "sched_yield" (func $f{i} (result i32)))'
        for i in range(count)
    )
    refs = " ".join(f"$f{i}" for i in range(count))
    wat = tmp_path / "wide.wat"
    wat.write_text(
        f"(module {imports} (table {count} funcref) (elem (i32.const 0) {refs})"
        ' (memory (export "memory") 1) (func (export "_start")))'
    )
    manifest = write_manifest(tmp_path, "wide", wat, limits="memory_mb = 4")
    outcome = await runtime.call(runtime.load(load_manifest(manifest)), b"{}", 5.0)
    assert (outcome.exit_code, outcome.stdout) == (0, b"")


async def test_a_table_does_not_grow_past_its_bound(runtime: Any, tmp_path: Path) -> None:
    # table.grow answers -1 when refused; a million elements (8 to 16 MB of the host's
    # memory, outside the memory limit) reach `unreachable` where it is not.
    wat = tmp_path / "table.wat"
    wat.write_text(
        "(module (table $t 0 funcref)"
        ' (func (export "_start")'
        " (if (i32.ne (table.grow $t (ref.null func) (i32.const 1000000)) (i32.const -1))"
        " (then unreachable))))"
    )
    manifest = write_manifest(tmp_path, "table", wat, limits="memory_mb = 4")
    outcome = await runtime.call(runtime.load(load_manifest(manifest)), b"{}", 1.0)
    assert outcome.exit_code == 0


async def test_a_call_within_the_budget_is_answered_on_the_event_loop() -> None:
    # A budget no busy machine can overrun on the echo: the test does not depend on timing.
    require_module("wasmtime")
    runtime = WasmRuntime(inline_budget_s=30.0)
    runtime.acquire()
    try:
        outcome = await runtime.call(echo(runtime), b'{"n":1}', 60.0)
    finally:
        runtime.release()
    assert json.loads(outcome.stdout) == {"echo": {"n": 1}}
    assert (runtime.inline_calls, runtime.inline_overruns) == (1, 0)


async def test_a_runaway_leaves_the_event_loop_at_its_budget_and_meets_its_full_limit(
    runtime: Any, tmp_path: Path
) -> None:
    hostile = load(runtime, tmp_path, "loop", "timeout_ms = 2000")
    call = asyncio.ensure_future(runtime.call(hostile, b"{}", 2.0))

    async def moved_to_a_worker() -> bool:
        return runtime.inline_overruns == 1

    # The loop runs this poll while the module still runs (in a worker, to its 2 s):
    # the inline run was given up at its budget, not held for the call's limit.
    await async_wait_for(moved_to_a_worker, what="the inline run given up")
    assert not call.done()
    with pytest.raises(WasmTimeLimit, match="time limit of 2000 ms"):
        await call
    assert runtime.inline_calls == 0
    assert hostile.inline.skip == INLINE_BACKOFF_CALLS  # its next calls go to the pool
    with pytest.raises(WasmTimeLimit, match="time limit of 50 ms"):
        await runtime.call(hostile, b"{}", 0.05)
    assert runtime.inline_overruns == 1


# Grows its memory to 3.5 of its 4 MB, then counts to 2^26 (tens of milliseconds) and exits.
BUSY_NEAR_ITS_MEMORY_LIMIT = """(module
  (memory (export "memory") 1)
  (func (export "_start") (local $i i32)
    (drop (memory.grow (i32.const 55)))
    (loop $l
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 67108864))))))"""


async def test_a_long_call_near_its_memory_limit_is_run_again_not_stopped(
    runtime: Any, tmp_path: Path
) -> None:
    # Stopped at the inline budget with its memory near the limit, it is not a memory stop.
    module = tmp_path / "busy.wat"
    module.write_text(BUSY_NEAR_ITS_MEMORY_LIMIT, encoding="utf-8")
    tool = runtime.load(
        load_manifest(write_manifest(tmp_path, "busy", module, limits=HOSTILE_LIMITS))
    )
    outcome = await runtime.call(tool, b"{}", 30.0)
    assert outcome.exit_code == 0
    assert (runtime.inline_calls, runtime.inline_overruns) == (0, 1)


def test_a_tool_that_keeps_overrunning_is_tried_inline_ever_more_rarely() -> None:
    gate = InlineGate()
    gate.overran()
    assert [gate.admit() for _ in range(INLINE_BACKOFF_CALLS + 1)] == [
        False
    ] * INLINE_BACKOFF_CALLS + [True]
    gate.overran()  # again, in a row: twice as long
    assert gate.skip == 2 * INLINE_BACKOFF_CALLS
    for _ in range(20):
        gate.overran()
    assert gate.skip == INLINE_BACKOFF_MAX_CALLS
    gate.answered()  # one answer within the budget: back to the short backoff
    gate.overran()
    assert gate.skip == INLINE_BACKOFF_CALLS


async def test_overlapping_iovecs_past_the_output_limit_are_an_output_limit(
    runtime: Any, tmp_path: Path
) -> None:
    # One fd_write of 1024 iovecs over all of its memory (64 MiB); the module exits after
    # the refused write: its cut answer is the output limit, not 64 MiB copied.
    with pytest.raises(WasmOutputLimit, match="limit of 65536 bytes"):
        await runtime.call(load(runtime, tmp_path, "overlap"), b"{}", 1.0)


def test_the_installed_wasmtime_has_the_internals_the_host_uses() -> None:
    # The fast paths are in use with the wasmtime pyproject allows (>=40,<52).
    require_module("wasmtime")
    from vsmcp.edge.engine import missing_pooling_internals
    from vsmcp.edge.sandbox import missing_start_internals
    from vsmcp.edge.stdio import missing_internals

    assert (missing_internals(), missing_start_internals(), missing_pooling_internals()) == (
        [],
        (),
        [],
    )


# Address space for a few on-demand instances (4 GiB reservations each), not for the
# engine's pool of slots.
ADDRESS_SPACE_LIMIT = 16 << 30
LIMITED_ECHO = f"""
import asyncio, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE_LIMIT}, {ADDRESS_SPACE_LIMIT}))
from vsmcp.edge.manifest import load_manifest
from vsmcp.edge.runtime import WasmRuntime
runtime = WasmRuntime()
assert not runtime.pooled
runtime.acquire()
tool = runtime.load(load_manifest(Path({str(EXAMPLES / "echo.toml")!r})))
sys.stdout.write(asyncio.run(runtime.call(tool, b'{{"n":1}}', 5.0)).stdout.decode())
runtime.release()
"""


def test_without_address_space_for_the_pool_instances_are_mapped_per_call() -> None:
    # wasmtime-py does not check for the null engine wasmtime answers then: used, or
    # only dropped, it crashes the process.
    require_module("wasmtime")
    done = subprocess.run(
        [sys.executable, "-c", LIMITED_ECHO],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"echo": {"n": 1}}
    assert "could not reserve the address space of" in done.stderr


@pytest.fixture
def wasmtime_without_from_ptr(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """wasmtime-py as a version without `WasmtimeError._from_ptr` (used by both fast paths)."""
    require_module("wasmtime")
    import wasmtime

    from vsmcp.edge.sandbox import missing_start_internals

    missing_start_internals.cache_clear()
    monkeypatch.delattr(wasmtime.WasmtimeError, "_from_ptr")
    yield
    monkeypatch.undo()
    missing_start_internals.cache_clear()


@pytest.mark.usefixtures("wasmtime_without_from_ptr")
async def test_a_wasmtime_without_the_internals_runs_tools_through_its_public_api(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = WasmRuntime(inline_budget_s=30.0)
    assert f"wasmtime {importlib.metadata.version('wasmtime')} lacks" in caplog.text
    assert "WasmtimeError._from_ptr" in caplog.text
    runtime.acquire()
    try:
        tool = echo(runtime)
        assert not tool.host_stdio  # wasmtime's WASI serves its stdio
        outcome = await runtime.call(tool, b'{"n":1}', 60.0)
        assert json.loads(outcome.stdout) == {"echo": {"n": 1}}
        with pytest.raises(WasmOutputLimit, match="limit of 65536 bytes"):
            await runtime.call(load(runtime, tmp_path, "flood"), b"{}", 0.5)
    finally:
        runtime.release()


async def test_a_call_finding_every_instance_slot_taken_is_busy_not_a_fault(
    runtime: Any,
) -> None:
    tool = echo(runtime)
    with (
        slots_held(runtime.engine, pool_slots(DEFAULT_THREADS)),
        pytest.raises(WasmBusy, match=r"busy \(maximum concurrent limit of"),
    ):
        await runtime.call(tool, b"{}", 1.0)
    outcome = await runtime.call(tool, b'{"n":1}', 1.0)  # the slots back: answered
    assert json.loads(outcome.stdout) == {"echo": {"n": 1}}


async def test_runaways_left_by_stopped_units_do_not_take_every_instance_slot(
    tmp_path: Path,
) -> None:
    # One worker: a pool of 20 slots. Before, each release/acquire (a unit stopping, then
    # one starting) made a new worker pool while the old one's runaway ran on: 20 of them
    # held every slot and the next call of another tool failed ("maximum concurrent
    # limit"). One pool for the runtime's lifetime: they wait for its one worker.
    require_module("wasmtime")
    runtime = WasmRuntime(threads=1)
    runtime.acquire()
    try:
        hostile = load(runtime, tmp_path, "loop", "timeout_ms = 3000")
        runaways = []
        for _ in range(pool_slots(1)):
            runaways.append(asyncio.ensure_future(runtime.call(hostile, b"{}", 3.0)))
            await asyncio.sleep(0)  # it starts (and goes to a worker)
            runtime.release()
            runtime.acquire()
        outcome = await runtime.call(echo(runtime), b'{"n":1}', 5.0)
        assert json.loads(outcome.stdout) == {"echo": {"n": 1}}
        for queued in runaways[1:]:
            queued.cancel()  # still waiting for the worker: dropped
        with pytest.raises(WasmTimeLimit):
            await runaways[0]
    finally:
        runtime.release()
