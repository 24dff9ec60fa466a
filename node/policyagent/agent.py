"""The WASM policy agent under wasmtime: `policy_agent.wasm` (built from `native/`,
shipped as package data), loaded in a store of its own, fed JSON through its memory.

ABI (no imports, so a browser's `WebAssembly.instantiate` runs it as well): `alloc(len)`
and `dealloc(ptr, len)` for the host's buffers; `load_policies(ptr, len)` and
`evaluate(ptr, len)` answer a status (0: ok) and leave their JSON answer at
`output_ptr()`/`output_len()` (`{"error": ...}` when the status is not 0).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

from vsmcp.node.policyagent.errors import PolicyAgentError

if TYPE_CHECKING:
    import wasmtime

MODULE_NAME: Final = "policy_agent.wasm"
ABI_VERSION: Final = 1
STATUS_OK: Final = 0


@functools.cache
def module_bytes() -> bytes:
    """The shipped agent module (package data; installing vsmcp never needs Rust)."""
    return resources.files("vsmcp.node.policyagent").joinpath(MODULE_NAME).read_bytes()


@functools.lru_cache(maxsize=4)
def _compiled(module: bytes) -> tuple[wasmtime.Engine, wasmtime.Module]:
    """Compiling takes ≈0.4 s here (Cranelift); an instance ≈1 ms: compile once."""
    import wasmtime

    engine = wasmtime.Engine()
    return engine, wasmtime.Module(engine, module)


class WasmPolicyAgent:
    """One instance of the agent. Not thread-safe (one store): one per thread."""

    def __init__(self, module: bytes | None = None) -> None:
        import wasmtime

        engine, compiled = _compiled(module if module is not None else module_bytes())
        self._store = wasmtime.Store(engine)
        exports = wasmtime.Instance(self._store, compiled, []).exports(self._store)
        self._memory: wasmtime.Memory = self._export(exports, "memory", wasmtime.Memory)
        self._alloc = self._export(exports, "alloc", wasmtime.Func)
        self._dealloc = self._export(exports, "dealloc", wasmtime.Func)
        self._out_ptr = self._export(exports, "output_ptr", wasmtime.Func)
        self._out_len = self._export(exports, "output_len", wasmtime.Func)
        self._load = self._export(exports, "load_policies", wasmtime.Func)
        self._evaluate = self._export(exports, "evaluate", wasmtime.Func)
        version = self._export(exports, "abi_version", wasmtime.Func)(self._store)
        if version != ABI_VERSION:
            raise PolicyAgentError(f"agent ABI {version}, this host speaks {ABI_VERSION}")

    @staticmethod
    def _export(exports: Any, name: str, kind: type[Any]) -> Any:
        item = exports.get(name)
        if not isinstance(item, kind):
            raise PolicyAgentError(f"the agent module has no {kind.__name__} export {name!r}")
        return item

    def _call(self, func: wasmtime.Func, payload: bytes) -> bytes:
        store = self._store
        ptr = self._alloc(store, len(payload))
        try:
            self._memory.write(store, payload, ptr)
            status = func(store, ptr, len(payload))
        finally:
            self._dealloc(store, ptr, len(payload))
        start = self._out_ptr(store)
        answer = bytes(self._memory.read(store, start, start + self._out_len(store)))
        if status != STATUS_OK:
            raise PolicyAgentError(f"agent: {json.loads(answer).get('error', 'error')}")
        return answer

    def load_policies_json(self, text: bytes) -> dict[str, Any]:
        """Load a policy set given as JSON text (e.g. the `set` a node serves)."""
        summary: dict[str, Any] = json.loads(self._call(self._load, text))
        return summary

    def load_policies(self, policy_set: dict[str, Any]) -> dict[str, Any]:
        return self.load_policies_json(json.dumps(policy_set).encode())

    def evaluate_json(self, batch: bytes) -> bytes:
        """A batch as JSON text → the answer as JSON text (no Python objects in between)."""
        return self._call(self._evaluate, batch)

    def evaluate(self, requests: list[dict[str, Any]], now_ms: int) -> list[dict[str, Any]]:
        batch = json.dumps({"now_ms": now_ms, "requests": requests}).encode()
        decisions: list[dict[str, Any]] = json.loads(self.evaluate_json(batch))["decisions"]
        return decisions
