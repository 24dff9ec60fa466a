"""`vsmcpd`, recording the resident memory each module adds while it is imported.

Started by `bench_idle.py --by-import` in place of `python -m vsmcp.node`. A finder first
on `sys.meta_path` wraps each module's `exec_module` (loading its code and running its
body) and reads VmRSS before and after; a module's own share is that difference minus
its nested imports'. At exit it writes {module: bytes} to $VSMCP_IMPORT_RSS_OUT (JSON).
Pages are counted once, by the module that first touched them (a shared library's, its
first importer's).
"""

from __future__ import annotations

import atexit
import importlib.abc
import importlib.machinery
import json
import os
import runpy
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
_own: dict[str, int] = {}
_open: list[list[Any]] = []  # [name, RSS at start, RSS of nested imports]


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE_BYTES


def _measured(name: str, exec_module: Callable[[ModuleType], None], module: ModuleType) -> None:
    _open.append([name, _rss(), 0])
    try:
        exec_module(module)
    finally:
        _, started, nested = _open.pop()
        added = _rss() - started
        _own[name] = _own.get(name, 0) + added - nested
        if _open:
            _open[-1][2] += added


class _MeasuringFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = None if finder is self or find is None else find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        # Built-in and frozen modules are loaded by classes, not instances: not wrapped.
        if loader is not None and not isinstance(loader, type):
            exec_module = loader.exec_module
            loader.exec_module = (  # type: ignore[method-assign]
                lambda module: _measured(fullname, exec_module, module)
            )
        return spec


def _write() -> None:
    with open(os.environ["VSMCP_IMPORT_RSS_OUT"], "w") as out:
        json.dump(_own, out)


sys.meta_path.insert(0, _MeasuringFinder())
atexit.register(_write)
sys.argv = ["vsmcpd", *sys.argv[1:]]
runpy.run_module("vsmcp.node", run_name="__main__", alter_sys=True)
