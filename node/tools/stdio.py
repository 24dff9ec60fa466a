"""The stdio transport of mounted MCP servers: the SDK's stdio client, with the limits it lacks.

The official `mcp.client.stdio.stdio_client` reads stdout lines without a size cap
(and joins chunks quadratically: a 20 MB answer took seconds, starving the health
check), copies the server's stderr into ours as is, and takes up to 6 s to stop a
server. This transport speaks the same newline-delimited JSON-RPC and yields the same
streams to `mcp.client.client.Client`, but:

- **Messages are capped** at `max_message_bytes`. A longer line is read and thrown
  away as it arrives (memory stays bounded); if it answers a request, that request
  gets a JSON-RPC error saying the size and the cap (`RESULT_TOO_LARGE`), so one bad
  answer fails one call instead of the connection.
- **A line that is not JSON-RPC is skipped** and counted (logged once per connection);
  the SDK client would only log it, but with a traceback per line.
- **stderr becomes log records**: one per line, prefixed with the mount's name, control
  characters escaped, length-capped and rate-limited, with the text in a `stderr` field.
- **Its own process group**, killed with SIGKILL whatever happens once the server had
  `stop_grace_s` to exit after stdin closed; `kill_all_process_groups` is the daemon's
  last resort when shutdown overruns its deadline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import anyio
import anyio.abc

from vsmcp.node.tools.errors import UnitFault

if TYPE_CHECKING:
    # The MCP SDK is imported when a stdio mount starts (`stdio_transport`), not with
    # the node: the daemon imports this module for `kill_all_process_groups`.
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
    from mcp.client._transport import TransportStreams
    from mcp.shared.message import SessionMessage

log = logging.getLogger(__name__)

# The JSON-RPC error a too-large answer becomes (implementation-defined server-error range).
RESULT_TOO_LARGE: Final = -32001
READ_CHUNK_BYTES: Final = 1 << 16
# How much of each end of a dropped message we keep to find the request id it answers.
ID_PREFIX_BYTES: Final = 256
STDERR_LINE_MAX_CHARS: Final = 2000
# Beyond this many stderr lines in one window, lines are dropped (and counted).
STDERR_LINES_PER_S: Final = 50
STDERR_WINDOW_S: Final = 1.0
GARBAGE_SAMPLE_CHARS: Final = 120
EXIT_POLL_INTERVAL_S: Final = 0.01
# Time for the event loop to see the process die after SIGKILL.
KILL_REAP_TIMEOUT_S: Final = 1.0

_ID = re.compile(rb'"id"\s*:\s*(-?\d+|"(?:[^"\\]|\\.){0,128}")')
_LIVE_GROUPS: set[int] = set()


@dataclass(frozen=True, slots=True, kw_only=True)
class StdioLaunch:
    """How to start one mounted server and the limits of its connection."""

    mount: str
    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    max_message_bytes: int
    stop_grace_s: float


@dataclass(slots=True)
class StdioStats:
    """Counters of one mount's connections (all of them, across restarts)."""

    garbage_lines: int = 0
    oversized_messages: int = 0
    # Answers the SDK's validation refused (any transport): that call failed, no fault.
    malformed_answers: int = 0
    # Reconnections in 2025-11-25 after the server's 2026-07-28 answers did not hold.
    fallbacks: int = 0
    stderr_lines: int = 0
    stderr_dropped: int = 0


def escape_line(text: str, max_chars: int = STDERR_LINE_MAX_CHARS) -> str:
    """`text` made safe for one log line: control characters (newlines, ANSI escape
    sequences, ...) become visible escapes, and the length is capped."""
    cut = len(text) > max_chars
    if cut:
        text = text[:max_chars]
    safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return f"{safe}… [{len(text)}+ chars, cut]" if cut else safe


def kill_all_process_groups() -> None:
    """SIGKILL every mounted server's process group still alive (a last resort)."""
    for pgid in list(_LIVE_GROUPS):
        _killpg(pgid)


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def stdio_transport(
    launch: StdioLaunch, stats: StdioStats | None = None
) -> AsyncIterator[TransportStreams]:
    """Start the server and yield `(read, write)` streams for `Client`; stop it on exit."""
    from mcp.client.stdio import get_default_environment
    from mcp.shared.message import SessionMessage

    stats = stats if stats is not None else StdioStats()
    try:
        process = await anyio.open_process(
            [launch.command, *launch.args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=get_default_environment() | dict(launch.env),
            cwd=launch.cwd,
            start_new_session=True,
        )
    except OSError as exc:
        raise MountSpawnError(launch, exc) from exc
    _LIVE_GROUPS.add(process.pid)
    read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](0)
    connection = _Connection(launch, stats, process, read_send, write_recv)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(connection.read_stdout, name=f"mount:{launch.mount}:stdout")
            tg.start_soon(connection.write_stdin, name=f"mount:{launch.mount}:stdin")
            tg.start_soon(connection.read_stderr, name=f"mount:{launch.mount}:stderr")
            try:
                yield read_recv, write_send
            finally:
                # Bounded and shielded: a cancelled caller must not leak the process.
                with anyio.CancelScope(shield=True):
                    await _stop(process, launch.stop_grace_s)
                tg.cancel_scope.cancel()
    finally:
        # Whatever happened above (even a cancellation that skipped the stop), the
        # group dies: a server's children must not outlive its mount.
        _killpg(process.pid)
        _LIVE_GROUPS.discard(process.pid)
        for stream in (read_send, read_recv, write_send, write_recv):
            stream.close()


class MountSpawnError(UnitFault):
    """The mount's command could not be started: the error names the command and why."""

    def __init__(self, launch: StdioLaunch, cause: OSError) -> None:
        super().__init__(
            f"mount {launch.mount!r}: cannot start {launch.command!r}: "
            f"{cause.strerror or type(cause).__name__}"
        )


async def _stop(process: anyio.abc.Process, grace_s: float) -> None:
    """Close stdin (the spec's polite stop), wait `grace_s`, then SIGKILL the group."""
    if process.stdin is not None:
        with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await process.stdin.aclose()
    if not await _exited(process, grace_s):
        log.info("mounted server pid %d did not exit on stdin close; killing it", process.pid)
    _killpg(process.pid)
    await _exited(process, KILL_REAP_TIMEOUT_S)


async def _exited(process: anyio.abc.Process, timeout_s: float) -> bool:
    # Polls returncode rather than process.wait(), which also waits for the pipes'
    # EOF: a child holding them would make a dead server look alive.
    deadline = anyio.current_time() + timeout_s
    while process.returncode is None:
        if anyio.current_time() >= deadline:
            return False
        await anyio.sleep(EXIT_POLL_INTERVAL_S)
    return True


class _Connection:
    def __init__(
        self,
        launch: StdioLaunch,
        stats: StdioStats,
        process: anyio.abc.Process,
        read_send: MemoryObjectSendStream[SessionMessage | Exception],
        write_recv: MemoryObjectReceiveStream[SessionMessage],
    ) -> None:
        self._launch = launch
        self._stats = stats
        self._process = process
        self._read_send = read_send
        self._write_recv = write_recv
        self._garbage_logged = False
        self._dropped_unreported = 0

    # -- stdout --------------------------------------------------------------------------

    async def read_stdout(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        cap = self._launch.max_message_bytes
        buffer = bytearray()
        dropping: int | None = None  # bytes of an over-long line seen so far
        prefix = tail = b""
        try:
            async with self._read_send:
                while True:
                    try:
                        chunk = await stdout.receive(READ_CHUNK_BYTES)
                    except (anyio.EndOfStream, anyio.ClosedResourceError, OSError):
                        return
                    start = 0
                    while start < len(chunk):
                        end = chunk.find(b"\n", start)
                        piece = chunk[start:] if end < 0 else chunk[start:end]
                        start = len(chunk) if end < 0 else end + 1
                        if dropping is not None:
                            dropping += len(piece)
                            tail = (tail + piece[-ID_PREFIX_BYTES:])[-ID_PREFIX_BYTES:]
                        elif len(buffer) + len(piece) > cap:
                            prefix = (bytes(buffer[:ID_PREFIX_BYTES]) + piece)[:ID_PREFIX_BYTES]
                            dropping = len(buffer) + len(piece)
                            tail = piece[-ID_PREFIX_BYTES:]
                            buffer.clear()
                        else:
                            buffer += piece
                        if end < 0:
                            continue
                        if dropping is not None:
                            await self._too_large(prefix, tail, dropping)
                            dropping = None
                        else:
                            await self._deliver(bytes(buffer))
                            buffer.clear()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return  # the session is gone

    async def _deliver(self, line: bytes) -> None:
        if not line.strip():
            return
        # Loaded by `stdio_transport` before the first line: a lookup in sys.modules.
        import mcp_types as types
        from mcp.shared.message import SessionMessage

        try:
            message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
        except ValueError:
            self._stats.garbage_lines += 1
            if not self._garbage_logged:
                self._garbage_logged = True
                sample = escape_line(line.decode(errors="replace"), GARBAGE_SAMPLE_CHARS)
                log.warning(
                    "mount %s: skipped a stdout line that is not JSON-RPC (%d bytes): %s; "
                    "further ones are only counted",
                    self._launch.mount,
                    len(line),
                    sample,
                    extra={"mount": self._launch.mount},
                )
            return
        await self._read_send.send(SessionMessage(message))

    async def _too_large(self, prefix: bytes, tail: bytes, size: int) -> None:
        self._stats.oversized_messages += 1
        cap = self._launch.max_message_bytes
        request_id = dropped_message_id(prefix, tail)
        log.warning(
            "mount %s: dropped a %d-byte message (cap %d bytes)%s",
            self._launch.mount,
            size,
            cap,
            "" if request_id is not None else " that answers no request",
            extra={"mount": self._launch.mount},
        )
        if request_id is None:
            return
        import mcp_types as types
        from mcp.shared.message import SessionMessage

        error = types.JSONRPCError(
            jsonrpc="2.0",
            id=request_id,
            error=types.ErrorData(
                code=RESULT_TOO_LARGE,
                message=f"answer of {size} bytes exceeds the cap of {cap} bytes",
                data={"size_bytes": size, "max_bytes": cap},
            ),
        )
        await self._read_send.send(SessionMessage(error))

    # -- stdin ---------------------------------------------------------------------------

    async def write_stdin(self) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        try:
            async with self._write_recv:
                async for message in self._write_recv:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await stdin.send(data.encode() + b"\n")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            # The server stopped reading: end the session rather than let calls hang.
            await self._read_send.aclose()

    # -- stderr --------------------------------------------------------------------------

    async def read_stderr(self) -> None:
        stderr = self._process.stderr
        assert stderr is not None
        buffer = bytearray()
        window_start = time.monotonic()
        in_window = 0
        while True:
            chunk: bytes | None = None
            # With dropped lines to report, wake up when the window ends to say so.
            report_in_s = window_start + STDERR_WINDOW_S - time.monotonic()
            with anyio.move_on_after(report_in_s if self._dropped_unreported else None):
                try:
                    chunk = await stderr.receive(READ_CHUNK_BYTES)
                except (anyio.EndOfStream, anyio.ClosedResourceError, OSError):
                    break
            if chunk is None:
                self._report_dropped()
                window_start, in_window = time.monotonic(), 0
                continue
            buffer += chunk
            *lines, rest = buffer.split(b"\n")
            # A line longer than the cap is logged in pieces rather than held whole.
            buffer = bytearray(rest) if len(rest) <= STDERR_LINE_MAX_CHARS * 4 else bytearray()
            if len(rest) > STDERR_LINE_MAX_CHARS * 4:
                lines.append(rest)
            for line in lines:
                now = time.monotonic()
                if now - window_start >= STDERR_WINDOW_S:
                    self._report_dropped()
                    window_start, in_window = now, 0
                in_window += 1
                if in_window > STDERR_LINES_PER_S:
                    self._stats.stderr_dropped += 1
                    self._dropped_unreported += 1
                    continue
                self._log_stderr(bytes(line))
        if buffer:
            self._log_stderr(bytes(buffer))
        self._report_dropped()

    def _log_stderr(self, line: bytes) -> None:
        text = escape_line(line.decode(errors="replace").rstrip("\r"))
        self._stats.stderr_lines += 1
        mount = self._launch.mount
        log.info("mount %s stderr: %s", mount, text, extra={"mount": mount, "stderr": text})

    def _report_dropped(self) -> None:
        dropped, self._dropped_unreported = self._dropped_unreported, 0
        if dropped:
            log.warning(
                "mount %s: dropped %d stderr lines (over %d lines/s)",
                self._launch.mount,
                dropped,
                STDERR_LINES_PER_S,
                extra={"mount": self._launch.mount},
            )


def dropped_message_id(prefix: bytes, tail: bytes) -> int | str | None:
    """The request id a dropped over-long line answers, from its first and last bytes.

    Only the outer object's `"id"` counts, not one nested in its `result` or `params`.
    Where it is depends on the server's key order: in `prefix` (the line's start) it is
    the key one level deep; in `tail` (the line's end) the one whose object the line's
    last brace closes.
    """
    found = next((m for m in _ID.finditer(prefix) if _nesting(prefix[: m.start()]) == 1), None)
    if found is None:
        found = next(
            (m for m in reversed(list(_ID.finditer(tail))) if _nesting(tail[m.end() :]) == -1),
            None,
        )
    if found is None:
        return None
    raw = found.group(1).decode()
    return int(raw) if raw[0] != '"' else raw[1:-1]


def _nesting(json_text: bytes) -> int | None:
    """How many levels deeper JSON text that starts outside any string ends (negative:
    it closes levels opened before it); None if it ends inside a string."""
    depth = 0
    in_string = escaped = False
    for byte in json_text:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in b"{[":
            depth += 1
        elif byte in b"}]":
            depth -= 1
    return None if in_string else depth
