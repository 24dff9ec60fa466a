"""The host's stdio (`vsmcp.edge.stdio`): a write is bounded by its sink's room before
anything is copied, whatever the guest's iovecs add up to."""

from __future__ import annotations

import ctypes
import tracemalloc
from collections.abc import Iterator

import pytest

from vsmcp.edge.stdio import (
    _IOVEC,
    _U32,
    MAX_IOVECS,
    STDERR_MAX_BYTES,
    WASI_FBIG,
    CallStdio,
    Output,
    Stderr,
    _Window,
    _write,
)

MEMORY_BYTES = 64 << 10
NWRITTEN = MAX_IOVECS * _IOVEC.size  # just past the iovec array
# What copying the whole write would take: MAX_IOVECS × the memory (64 MiB).
PEAK_BOUND = 1 << 20


@pytest.fixture
def memory() -> Iterator[tuple[ctypes.Array[ctypes.c_char], _Window]]:
    """A 64 KiB memory whose first bytes are MAX_IOVECS iovecs each over all of it."""
    buffer = ctypes.create_string_buffer(MEMORY_BYTES)
    for i in range(MAX_IOVECS):
        _IOVEC.pack_into(buffer, _IOVEC.size * i, 0, MEMORY_BYTES)
    yield buffer, _Window(ctypes.addressof(buffer), MEMORY_BYTES)


def peak_of_write(stdio: CallStdio, window: _Window, fd: int) -> tuple[int, int]:
    tracemalloc.start()
    try:
        answer = _write(stdio, window, fd, 0, MAX_IOVECS, NWRITTEN)
        return answer, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_overlapping_iovecs_past_the_output_cap_are_refused_without_a_copy(
    memory: tuple[ctypes.Array[ctypes.c_char], _Window],
) -> None:
    _buffer, window = memory
    out = Output(4096)
    answer, peak = peak_of_write(CallStdio(b"", out, Stderr()), window, 1)
    assert answer == WASI_FBIG
    assert (out.overflowed, out.size, out.parts) == (True, 0, [])
    assert peak < PEAK_BOUND


def test_overlapping_iovecs_to_stderr_keep_its_cap_and_count_the_rest(
    memory: tuple[ctypes.Array[ctypes.c_char], _Window],
) -> None:
    buffer, window = memory
    err = Stderr()
    before = buffer.raw[:STDERR_MAX_BYTES]  # the write then stores its count in it
    answer, peak = peak_of_write(CallStdio(b"", Output(4096), err), window, 2)
    total = MAX_IOVECS * MEMORY_BYTES
    assert answer == 0
    assert _U32.unpack_from(buffer, NWRITTEN)[0] == total  # all of it, as written
    assert (err.size, err.dropped) == (STDERR_MAX_BYTES, total - STDERR_MAX_BYTES)
    assert b"".join(err.parts) == before
    assert peak < PEAK_BOUND


def test_a_write_within_the_cap_is_kept_whole(
    memory: tuple[ctypes.Array[ctypes.c_char], _Window],
) -> None:
    buffer, window = memory
    _IOVEC.pack_into(buffer, 0, 16, 5)
    _IOVEC.pack_into(buffer, _IOVEC.size, 16, 3)  # overlapping, within the cap
    out = Output(4096)
    buffer[16:21] = b"hello"
    assert _write(CallStdio(b"", out, Stderr()), window, 1, 0, 2, NWRITTEN) == 0
    assert (b"".join(out.parts), _U32.unpack_from(buffer, NWRITTEN)[0]) == (b"hellohel", 8)
