"""The wasmtime engine of a node: epoch interruption, and instances allocated from a pool.

wasmtime's default (on-demand) allocator maps a fresh 4 GiB reservation, guard region
and copy-on-write image for each instance's memory and unmaps them when its store is
dropped: ≈25–30 µs of every call here, half of what a short tool call costs. The
pooling allocator reserves the slots once, when the engine is made, and hands them out
again (a freed slot is reset with `madvise`, so an instance never sees a previous one's
memory): the same isolation, none of the mapping per call.

The slots are address space, not memory: `slots` slots of `MAX_MEMORY_MB` (any manifest's
limit fits) plus wasmtime's guard regions, ≈4 GiB each, never touched until an instance
uses them and decommitted when it ends. They bound the instances alive at once: a call
runs in one of `threads` workers (the runtime's one pool, kept for its lifetime) or on
the event loop, so there are at least twice as many slots as could ever be in use; a
call that finds none free is refused as busy (`WasmBusy`), not counted as its fault.
wasmtime-py does not wrap the pooling settings; they are set through its C bindings, and
without them (another version), or when the address space is refused (a `ulimit -v`),
the engine keeps the on-demand allocator (slower, same limits).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from vsmcp.edge.errors import WasmUnavailable
from vsmcp.edge.manifest import MAX_MEMORY_MB
from vsmcp.edge.sandbox import MAX_MEMORIES, MAX_TABLE_ELEMENTS, MAX_TABLES

if TYPE_CHECKING:
    import wasmtime

log = logging.getLogger(__name__)

# Slots beyond twice the callers (workers + the event loop): a margin, since each call
# closes its store when it ends (`sandbox.run_call`), so at most one slot per caller.
SPARE_SLOTS: Final = 16

# An instance's own metadata (wasmtime's VMContext: 32 bytes per function, 32 more per
# imported one, plus globals and table headers), beside its memory and tables: host
# memory the memory limit does not count, allocated at its actual size per instance
# (no address space reserved for it: VmSize is the same). wasmtime's default of 1 MiB
# refused a module of ≈33,000 functions at load (16,000 imported), which the on-demand
# allocator ran; 16 MiB takes ≈520,000 (≈260,000 imported), and bounds what a call costs.
MAX_CORE_INSTANCE_BYTES: Final = 16 << 20

_POOLING_FFI: Final = (
    "wasmtime_pooling_allocation_config_new",
    "wasmtime_pooling_allocation_config_delete",
    "wasmtime_pooling_allocation_config_total_memories_set",
    "wasmtime_pooling_allocation_config_total_tables_set",
    "wasmtime_pooling_allocation_config_total_core_instances_set",
    "wasmtime_pooling_allocation_config_max_memory_size_set",
    "wasmtime_pooling_allocation_config_max_core_instance_size_set",
    "wasmtime_pooling_allocation_config_max_memories_per_module_set",
    "wasmtime_pooling_allocation_config_max_tables_per_module_set",
    "wasmtime_pooling_allocation_config_table_elements_set",
    "wasmtime_pooling_allocation_strategy_set",
)


def missing_pooling_internals() -> list[str]:
    """The wasmtime-py bindings the pooling allocator needs that this version lacks."""
    try:
        from wasmtime import _ffi
    except ImportError:
        return ["wasmtime._ffi"]
    return [f"wasmtime._ffi.{name}" for name in _POOLING_FFI if not hasattr(_ffi, name)]


def pool_slots(threads: int) -> int:
    """Instances (and memories) the pool holds for `threads` workers and the event loop."""
    return 2 * (threads + 1) + SPARE_SLOTS


def _use_pooling(config: wasmtime.Config, slots: int) -> None:
    from wasmtime import _ffi

    pooling = _ffi.wasmtime_pooling_allocation_config_new()
    try:
        _ffi.wasmtime_pooling_allocation_config_total_core_instances_set(pooling, slots)
        _ffi.wasmtime_pooling_allocation_config_total_memories_set(pooling, slots)
        _ffi.wasmtime_pooling_allocation_config_max_memories_per_module_set(pooling, MAX_MEMORIES)
        _ffi.wasmtime_pooling_allocation_config_max_core_instance_size_set(
            pooling, MAX_CORE_INSTANCE_BYTES
        )
        _ffi.wasmtime_pooling_allocation_config_max_memory_size_set(pooling, MAX_MEMORY_MB << 20)
        _ffi.wasmtime_pooling_allocation_config_total_tables_set(pooling, slots * MAX_TABLES)
        _ffi.wasmtime_pooling_allocation_config_max_tables_per_module_set(pooling, MAX_TABLES)
        _ffi.wasmtime_pooling_allocation_config_table_elements_set(pooling, MAX_TABLE_ELEMENTS)
        _ffi.wasmtime_pooling_allocation_strategy_set(config.ptr(), pooling)
    finally:
        _ffi.wasmtime_pooling_allocation_config_delete(pooling)


def new_engine(threads: int, *, pooling: bool) -> tuple[wasmtime.Engine, bool]:
    """An engine with epoch interruption, its instances from a pool sized for `threads`
    workers when `pooling` (the bindings are there: `missing_pooling_internals`), and
    whether they are (False: the on-demand allocator, asked for or fallen back to)."""
    import wasmtime

    config = wasmtime.Config()
    config.epoch_interruption = True
    if pooling:
        _use_pooling(config, pool_slots(threads))
    engine = wasmtime.Engine(config)
    if not engine.ptr():
        # wasmtime could not make it (a null engine; wasmtime-py does not check): the
        # pool's address space was refused, e.g. under a `ulimit -v`.
        engine._consume()  # nothing to delete
        if not pooling:
            raise WasmUnavailable("wasmtime could not create an engine")
        log.warning(
            "wasmtime could not reserve the address space of %d instance slots (≈4 GiB "
            "each: is it limited, e.g. ulimit -v?): WASM instances are mapped per call "
            "instead, slower",
            pool_slots(threads),
        )
        return new_engine(threads, pooling=False)
    return engine, pooling
