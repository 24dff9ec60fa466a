"""A call's stdin, stdout and stderr, served by the host.

wasmtime's own WASI stdio costs ≈100 µs and more per call here (its streams go through
an async runtime); a module that was granted no directory has no file descriptors but
0, 1 and 2, so for it `fd_read` and `fd_write` are served by these functions instead
(≈10 µs each), over the call's state bound to the worker thread that runs it. A module
with directories granted keeps wasmtime's (which also serves its files), with the same
sinks behind `stdout_custom` and `stderr_custom`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import struct
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import wasmtime

STDERR_MAX_BYTES: Final = 16 << 10
MAX_IOVECS: Final = 1024
# WASI preview 1 errno values.
WASI_BADF: Final = 8
WASI_FAULT: Final = 21
WASI_FBIG: Final = 22
WASI_INVAL: Final = 28
_IOVEC = struct.Struct("<II")
_U32 = struct.Struct("<I")


class Output:
    """stdout: kept up to `cap` bytes; the first write past it fails (EFBIG) and every
    later one too, so a flood ends at the cap, not in the node's memory."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[bytes] = []
        self.size = 0
        self.overflowed = False

    def write(self, data: bytes) -> int:
        if self.overflowed or self.size + len(data) > self.cap:
            self.overflowed = True
            return -errno.EFBIG
        self.parts.append(data)
        self.size += len(data)
        return len(data)


class Stderr:
    """stderr: kept up to `STDERR_MAX_BYTES`, the rest counted (writes never fail)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.dropped = 0

    def write(self, data: bytes) -> int:
        room = max(0, STDERR_MAX_BYTES - self.size)
        kept = data[:room]
        if kept:
            self.parts.append(kept)
            self.size += len(kept)
        self.dropped += len(data) - len(kept)
        return len(data)


class CallStdio:
    def __init__(self, stdin: bytes, out: Output, err: Stderr) -> None:
        self.stdin = stdin
        self.position = 0
        self.out = out
        self.err = err
        # The module's exported memory, looked up on its first stdio call.
        self.memory: wasmtime.Memory | None = None


_bound = threading.local()


@contextlib.contextmanager
def bound(stdio: CallStdio) -> Iterator[None]:
    """Serve `stdio` to the module this thread runs."""
    _bound.stdio = stdio
    try:
        yield
    finally:
        _bound.stdio = None


class _OutOfBounds(Exception):
    """A guest pointer or length outside its memory (answered with WASI's EFAULT)."""


class _Window:
    """The module's linear memory for one host call, read and written in place (the
    memory may move when it grows, so its address is taken again on every call)."""

    def __init__(self, caller: wasmtime.Caller, memory: wasmtime.Memory) -> None:
        self.base = ctypes.addressof(memory.data_ptr(caller).contents)
        self.size = memory.data_len(caller)

    def _check(self, ptr: int, length: int) -> None:
        if ptr < 0 or length < 0 or ptr + length > self.size:
            raise _OutOfBounds

    def read(self, ptr: int, length: int) -> bytes:
        self._check(ptr, length)
        return ctypes.string_at(self.base + ptr, length)

    def write(self, ptr: int, data: bytes) -> None:
        self._check(ptr, len(data))
        ctypes.memmove(self.base + ptr, data, len(data))

    def iovecs(self, iovs: int, count: int) -> list[tuple[int, int]]:
        raw = self.read(iovs, _IOVEC.size * count)
        return [_IOVEC.unpack_from(raw, _IOVEC.size * i) for i in range(count)]


def _target(caller: wasmtime.Caller, fd_ok: bool, count: int) -> tuple[CallStdio, _Window] | int:
    """The call's stdio and the module's memory, or the WASI errno to answer."""
    import wasmtime

    stdio: CallStdio | None = getattr(_bound, "stdio", None)
    if stdio is None or not fd_ok:
        return WASI_BADF
    if not 0 <= count <= MAX_IOVECS:
        return WASI_INVAL
    if stdio.memory is None:
        export = caller.get("memory")
        if not isinstance(export, wasmtime.Memory):
            return WASI_FAULT
        stdio.memory = export
    return stdio, _Window(caller, stdio.memory)


def fd_read(caller: wasmtime.Caller, fd: int, iovs: int, count: int, nread: int) -> int:
    target = _target(caller, fd == 0, count)
    if isinstance(target, int):
        return target
    stdio, memory = target
    total = 0
    try:
        for ptr, length in memory.iovecs(iovs, count):
            chunk = stdio.stdin[stdio.position : stdio.position + length]
            if chunk:
                memory.write(ptr, chunk)
            stdio.position += len(chunk)
            total += len(chunk)
            if len(chunk) < length:
                break
        memory.write(nread, _U32.pack(total))
    except _OutOfBounds:
        return WASI_FAULT
    return 0


def fd_write(caller: wasmtime.Caller, fd: int, iovs: int, count: int, nwritten: int) -> int:
    target = _target(caller, fd in (1, 2), count)
    if isinstance(target, int):
        return target
    stdio, memory = target
    try:
        data = b"".join(memory.read(ptr, length) for ptr, length in memory.iovecs(iovs, count))
        written = (stdio.out if fd == 1 else stdio.err).write(data)
        if written < 0:
            return WASI_FBIG
        memory.write(nwritten, _U32.pack(written))
    except _OutOfBounds:
        return WASI_FAULT
    return 0
