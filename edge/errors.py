"""Errors of the WebAssembly runtime. Every one derives from `EdgeError`."""

from __future__ import annotations

from typing import ClassVar


class EdgeError(Exception):
    """Base class of every error the WASM runtime raises."""


class ManifestError(EdgeError):
    """A tool manifest is missing, not TOML, or has a wrong or missing field."""


class WasmUnavailable(EdgeError):
    """wasmtime is not installed (`pip install 'vsmcp[wasm]'`)."""


class WasmLoadError(EdgeError):
    """A module could not be read, compiled or linked (not a valid WASI command)."""


class WasmBudgetSpent(EdgeError):
    """A run on the event loop used up its small budget: it is run again in a worker."""


class WasmBusy(EdgeError):
    """A call could not start for want of room in the runtime, not through any fault of
    its module: every instance slot of the engine is in use, or its time ran out while
    it waited for a worker. Retryable; not counted against the tool."""


class WasmFault(EdgeError):
    """A call was stopped: the module broke a limit or trapped. `limit` names which."""

    limit: ClassVar[str] = "trap"


class WasmTimeLimit(WasmFault):
    limit = "time"


class WasmMemoryLimit(WasmFault):
    limit = "memory"


class WasmOutputLimit(WasmFault):
    limit = "output"


class WasmTrap(WasmFault):
    limit = "trap"
