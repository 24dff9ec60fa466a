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


_bound = threading.local()


@contextlib.contextmanager
def bound(stdio: CallStdio) -> Iterator[None]:
    """Serve `stdio` to the module this thread runs."""
    _bound.stdio = stdio
    try:
        yield
    finally:
        _bound.stdio = None


def _target(
    caller: wasmtime.Caller, fd_ok: bool, count: int
) -> tuple[CallStdio, wasmtime.Memory] | int:
    """The call's stdio and the module's memory, or the WASI errno to answer."""
    import wasmtime

    stdio: CallStdio | None = getattr(_bound, "stdio", None)
    if stdio is None or not fd_ok:
        return WASI_BADF
    if not 0 <= count <= MAX_IOVECS:
        return WASI_INVAL
    memory = caller.get("memory")
    if not isinstance(memory, wasmtime.Memory):
        return WASI_FAULT
    return stdio, memory


def _iovecs(
    caller: wasmtime.Caller, memory: wasmtime.Memory, iovs: int, count: int
) -> list[tuple[int, int]]:
    raw = bytes(memory.read(caller, iovs, iovs + _IOVEC.size * count))
    return [_IOVEC.unpack_from(raw, _IOVEC.size * i) for i in range(count)]


def fd_read(caller: wasmtime.Caller, fd: int, iovs: int, count: int, nread: int) -> int:
    target = _target(caller, fd == 0, count)
    if isinstance(target, int):
        return target
    stdio, memory = target
    total = 0
    try:
        for ptr, length in _iovecs(caller, memory, iovs, count):
            chunk = stdio.stdin[stdio.position : stdio.position + length]
            if chunk:
                memory.write(caller, chunk, ptr)
            stdio.position += len(chunk)
            total += len(chunk)
            if len(chunk) < length:
                break
        memory.write(caller, _U32.pack(total), nread)
    except (IndexError, ValueError, struct.error):  # a pointer outside its memory
        return WASI_FAULT
    return 0


def fd_write(caller: wasmtime.Caller, fd: int, iovs: int, count: int, nwritten: int) -> int:
    target = _target(caller, fd in (1, 2), count)
    if isinstance(target, int):
        return target
    stdio, memory = target
    try:
        data = b"".join(
            bytes(memory.read(caller, ptr, ptr + length))
            for ptr, length in _iovecs(caller, memory, iovs, count)
        )
        written = (stdio.out if fd == 1 else stdio.err).write(data)
        if written < 0:
            return WASI_FBIG
        memory.write(caller, _U32.pack(written), nwritten)
    except (IndexError, ValueError, struct.error):
        return WASI_FAULT
    return 0
