"""Fixtures of the WASM runtime tests: a started runtime and manifests of test modules."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.skips import require_module

MODULES = Path(__file__).resolve().parent / "modules"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "wasm"


def write_manifest(
    directory: Path, name: str, module: Path, *, limits: str = "", extra: str = ""
) -> Path:
    """A manifest for `module` in `directory` (limits: TOML lines of the [limits] table)."""
    path = directory / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nmodule = "{module}"\n{extra}\n[limits]\n{limits}\n', encoding="utf-8"
    )
    return path


@pytest.fixture
def runtime() -> Iterator[object]:
    require_module("wasmtime")
    from vsmcp.edge.runtime import WasmRuntime

    rt = WasmRuntime()
    rt.acquire()
    try:
        yield rt
    finally:
        rt.release()


@contextmanager
def slots_held(engine: Any, count: int) -> Iterator[None]:
    """`count` instances (each with a memory) alive in `engine`'s pool until the block ends,
    as calls running to their deadlines would hold them."""
    import wasmtime

    module = wasmtime.Module(engine, "(module (memory 1))")
    stores = []
    try:
        for _ in range(count):
            store = wasmtime.Store(engine)
            wasmtime.Instance(store, module, [])
            stores.append(store)
        yield
    finally:
        for store in stores:
            store.close()
