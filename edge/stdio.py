"""A call's stdin, stdout and stderr, served by the host.

wasmtime's own WASI stdio costs ≈100 µs and more per call here (its streams go through
an async runtime); a module that was granted no directory has no file descriptors but
0, 1 and 2, so for it `fd_read` and `fd_write` are served by these functions instead,
over the call's state bound to the thread that runs it. A module with directories
granted keeps wasmtime's (which also serves its files), with the same sinks behind
`stdout_custom` and `stderr_custom`.

They are defined as wasmtime's *unchecked* host functions, called with the raw argument
array, through ctypes prototypes of our own that pass pointers as plain integers:
wasmtime-py's `define_func` trampoline wraps every argument in a `Val` and the caller in
a `Caller` object (≈50 µs per WASI call here, against ≈15 µs this way).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import struct
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import wasmtime

log = logging.getLogger(__name__)

STDERR_MAX_BYTES: Final = 16 << 10
MAX_IOVECS: Final = 1024
# WASI preview 1 errno values.
WASI_BADF: Final = 8
WASI_FAULT: Final = 21
WASI_FBIG: Final = 22
WASI_INVAL: Final = 28
_IOVEC = struct.Struct("<II")
_U32 = struct.Struct("<I")
# The four i32 arguments of fd_read/fd_write in wasmtime's raw value array (16-byte
# `wasmtime_val_raw_t` slots), read as unsigned: guest pointers are u32.
_RAW_ARGS = struct.Struct("<I12xI12xI12xI12x")
_RawArgs = ctypes.c_char * _RAW_ARGS.size


class Output:
    """stdout: kept up to `cap` bytes; the first write past it fails (EFBIG) and every
    later one too, so a flood ends at the cap, not in the node's memory."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[bytes] = []
        self.size = 0
        self.overflowed = False

    def room(self, length: int) -> int:
        """How many of `length` bytes to copy for a write: all, or -1 if it is refused
        (marking the overflow)."""
        if self.overflowed or self.size + length > self.cap:
            self.overflowed = True
            return -1
        return length

    def write(self, data: bytes) -> int:
        if self.room(len(data)) < 0:
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

    def room(self, length: int) -> int:
        """How many of `length` bytes to copy for a write: what still fits."""
        return min(length, max(0, STDERR_MAX_BYTES - self.size))

    def write(self, data: bytes, length: int | None = None) -> int:
        """Keep what fits of `data`, a write of `length` bytes (default: all of `data`;
        the host passes only the prefix it copied), and count the rest."""
        length = len(data) if length is None else length
        kept = data[: self.room(length)]
        if kept:
            self.parts.append(kept)
            self.size += len(kept)
        self.dropped += length - len(kept)
        return length


class CallStdio:
    def __init__(self, stdin: bytes, out: Output, err: Stderr) -> None:
        self.stdin = stdin
        self.position = 0
        self.out = out
        self.err = err
        # The module's exported memory (a `wasmtime_memory_t`) and its store's context,
        # looked up on its first stdio call; they stay valid for the store, the memory's
        # address does not (it may grow).
        self.memory: Any = None
        self.context: int = 0


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


# A writable memoryview over raw memory, made without copying (the C API's own): the
# module's memory is read and written through it with buffer operations (≈0.1 µs each)
# rather than a ctypes call per access.
_memory_view = ctypes.pythonapi.PyMemoryView_FromMemory
_memory_view.restype = ctypes.py_object
_memory_view.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int)
PYBUF_WRITE: Final = 0x200


class _Window:
    """The module's linear memory for one host call, read and written in place (the
    memory may move when it grows, so its address is taken again on every call; the view
    never outlives the host call)."""

    def __init__(self, base: int, size: int) -> None:
        self.size = size
        self.view: memoryview = _memory_view(base, size, PYBUF_WRITE) if size else memoryview(b"")

    def check(self, ptr: int, length: int) -> None:
        if ptr < 0 or length < 0 or ptr + length > self.size:
            raise _OutOfBounds

    def read(self, ptr: int, length: int) -> bytes:
        self.check(ptr, length)
        return self.view[ptr : ptr + length].tobytes()

    def write(self, ptr: int, data: bytes) -> None:
        self.check(ptr, len(data))
        self.view[ptr : ptr + len(data)] = data

    def write_u32(self, ptr: int, value: int) -> None:
        self.check(ptr, _U32.size)
        _U32.pack_into(self.view, ptr, value)

    def iovecs(self, iovs: int, count: int) -> list[tuple[int, int]]:
        self.check(iovs, _IOVEC.size * count)
        return list(_IOVEC.iter_unpack(self.view[iovs : iovs + _IOVEC.size * count]))


def _read(stdio: CallStdio, memory: _Window, iovs: int, count: int, nread: int) -> int:
    total = 0
    for ptr, length in memory.iovecs(iovs, count):
        chunk = stdio.stdin[stdio.position : stdio.position + length]
        if chunk:
            memory.write(ptr, chunk)
        stdio.position += len(chunk)
        total += len(chunk)
        if len(chunk) < length:
            break
    memory.write_u32(nread, total)
    return 0


def _write(stdio: CallStdio, memory: _Window, fd: int, iovs: int, count: int, nwritten: int) -> int:
    """Iovecs may overlap (1024 of them over all of memory is 1024 × memory), so they are
    bounds-checked and summed first, and nothing is copied past the sink's room."""
    vectors = memory.iovecs(iovs, count)
    for ptr, length in vectors:
        memory.check(ptr, length)
    total = sum(length for _ptr, length in vectors)
    room = (stdio.out if fd == 1 else stdio.err).room(total)
    if room < 0:
        return WASI_FBIG
    parts: list[bytes] = []
    for ptr, length in vectors:
        if room <= 0:
            break
        parts.append(memory.read(ptr, min(length, room)))
        room -= len(parts[-1])
    data = b"".join(parts)
    written = stdio.out.write(data) if fd == 1 else stdio.err.write(data, total)
    memory.write_u32(nwritten, written)
    return 0


# wasmtime-py internals the host stdio uses (`_Raw`, `HostStdio.define`).
_FFI_NAMES: Final = (
    "dll",
    "wasmtime_extern_t",
    "wasmtime_memory_t",
    "wasmtime_error_t",
    "wasmtime_val_raw_t",
    "WASMTIME_EXTERN_MEMORY",
)
_C_FUNCTIONS: Final = (
    "wasmtime_caller_context",
    "wasmtime_caller_export_get",
    "wasmtime_memory_data",
    "wasmtime_memory_data_size",
    "wasmtime_linker_define_func_unchecked",
)


def missing_internals() -> list[str]:
    """The wasmtime-py internals the host stdio needs that this version lacks (empty when
    it can be used; otherwise modules get wasmtime's own WASI stdio)."""
    try:
        import wasmtime
        from wasmtime import _ffi
    except ImportError:
        return ["wasmtime._ffi"]
    missing = [f"wasmtime._ffi.{name}" for name in _FFI_NAMES if not hasattr(_ffi, name)]
    if not hasattr(wasmtime.WasmtimeError, "_from_ptr"):
        missing.append("wasmtime.WasmtimeError._from_ptr")
    if hasattr(_ffi, "dll"):
        missing += [name for name in _C_FUNCTIONS if not hasattr(_ffi.dll, name)]
    raw_t = getattr(_ffi, "wasmtime_val_raw_t", None)
    if raw_t is not None and ctypes.sizeof(raw_t) != _RAW_ARGS.size // 4:
        missing.append("wasmtime_val_raw_t of 16 bytes")
    return missing


class _Raw:
    """wasmtime's C functions the host calls use, typed for plain integer pointers."""

    def __init__(self) -> None:
        from wasmtime import _ffi

        def fn(name: str, restype: Any, *argtypes: Any) -> Any:
            proto = ctypes.CFUNCTYPE(restype, *argtypes)
            return proto((name, _ffi.dll))

        ptr, size = ctypes.c_void_p, ctypes.c_size_t
        memory_p = ctypes.POINTER(_ffi.wasmtime_memory_t)
        self.extern_t = _ffi.wasmtime_extern_t
        self.extern_memory = _ffi.WASMTIME_EXTERN_MEMORY.value
        self.context = fn("wasmtime_caller_context", ptr, ptr)
        self.export_get = fn(
            "wasmtime_caller_export_get",
            ctypes.c_bool,
            ptr,
            ctypes.c_char_p,
            size,
            ctypes.POINTER(_ffi.wasmtime_extern_t),
        )
        self.memory_data = fn("wasmtime_memory_data", size, ptr, memory_p)
        self.memory_size = fn("wasmtime_memory_data_size", size, ptr, memory_p)
        self.define = fn(
            "wasmtime_linker_define_func_unchecked",
            ptr,
            ptr,
            ctypes.c_char_p,
            size,
            ctypes.c_char_p,
            size,
            ptr,
            ptr,
            ptr,
            ptr,
        )
        self.callback_t = ctypes.CFUNCTYPE(size, ptr, ptr, ptr, size)


def _memory(raw: _Raw, stdio: CallStdio, caller: int) -> _Window | None:
    if stdio.memory is None:
        item: Any = raw.extern_t()
        found = raw.export_get(caller, b"memory", 6, ctypes.byref(item))
        if not found or item.kind != raw.extern_memory:
            return None
        stdio.memory = item.of.memory
        stdio.context = raw.context(caller)
    context = stdio.context
    memory = ctypes.byref(stdio.memory)
    return _Window(raw.memory_data(context, memory), raw.memory_size(context, memory))


HostCall = Callable[[CallStdio, _Window, int, int, int, int], int]


def _serve(raw: _Raw, fds: tuple[int, ...], body: HostCall) -> Any:
    """A raw host function `(fd, iovs, count, out) -> errno` running `body` over the
    thread's bound stdio; it answers in the first slot of the argument array."""

    def errno_of(caller: int, args: int) -> int:
        fd, iovs, count, out = _RAW_ARGS.unpack_from(_RawArgs.from_address(args))
        stdio: CallStdio | None = getattr(_bound, "stdio", None)
        if stdio is None or fd not in fds:
            return WASI_BADF
        if count > MAX_IOVECS:
            return WASI_INVAL
        memory = _memory(raw, stdio, caller)
        if memory is None:
            return WASI_FAULT
        try:
            return body(stdio, memory, fd, iovs, count, out)
        except _OutOfBounds:
            return WASI_FAULT

    def callback(_env: int, caller: int, args: int, _nargs: int) -> int:
        try:
            answer = errno_of(caller, args)
        except Exception:  # the FFI boundary: nothing may escape into wasmtime
            log.exception("WASI stdio host call failed")
            answer = WASI_FAULT
        ctypes.c_int32.from_address(args).value = answer
        return 0  # no trap

    return raw.callback_t(callback)


def _read_call(stdio: CallStdio, memory: _Window, _fd: int, iovs: int, count: int, out: int) -> int:
    return _read(stdio, memory, iovs, count, out)


class HostStdio:
    """`fd_read` (fd 0) and `fd_write` (fds 1, 2) as raw host functions; it must outlive
    every linker it defined them in (wasmtime holds only the C callbacks). Only when
    `missing_internals()` is empty."""

    def __init__(self) -> None:
        self._raw = _Raw()
        self._read = _serve(self._raw, (0,), _read_call)
        self._write = _serve(self._raw, (1, 2), _write)

    def define(self, linker: wasmtime.Linker, module: str, fn_type: wasmtime.FuncType) -> None:
        import wasmtime

        for name, callback in ((b"fd_read", self._read), (b"fd_write", self._write)):
            error = self._raw.define(
                ctypes.cast(linker.ptr(), ctypes.c_void_p),
                module.encode(),
                len(module),
                name,
                len(name),
                ctypes.cast(fn_type.ptr(), ctypes.c_void_p),
                ctypes.cast(callback, ctypes.c_void_p),
                None,
                None,
            )
            if error:
                from wasmtime import _ffi

                raise wasmtime.WasmtimeError._from_ptr(
                    ctypes.cast(error, ctypes.POINTER(_ffi.wasmtime_error_t))
                )
