"""A tiny stdio MCP server that misbehaves on request, for the mount hardening tests.

Tools: `echo`, `big` (a result of `mb` megabytes, as a `str` return, which the SDK
sends as text *and* as `structuredContent`), `hang` (never returns), `crash` (the
process exits), `fail` (raises), `garbage` (a non-JSON line on stdout, then answers),
`inject` (writes `text` to stderr as is, then answers).

Environment: `FAULTY_PID_FILE` — write this process's pid there at start (and, with
`FAULTY_CHILD=1`, also the pid of a child process it starts, which only a kill of the
process group ends); `FAULTY_NO_INIT=1` — never answer `initialize` (and ignore SIGTERM),
standing in for a server that hangs at start; `FAULTY_HTTP_PORT` — serve Streamable
HTTP on that loopback port instead of stdio (`FAULTY_JSON=1`: answers as JSON, not SSE).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time


def _write_pids() -> None:
    path = os.environ.get("FAULTY_PID_FILE")
    if not path:
        return
    pids = [os.getpid()]
    if os.environ.get("FAULTY_CHILD") == "1":
        # A grandchild of the daemon that ignores SIGTERM: only SIGKILL to the group ends it.
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import signal, time\n"
                "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                "while True: time.sleep(1)",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        pids.append(child.pid)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(" ".join(str(p) for p in pids))
    os.replace(tmp, path)


if __name__ == "__main__":
    # Before the SDK's (slow) import: the tests start this with short timeouts.
    _write_pids()
    if os.environ.get("FAULTY_NO_INIT") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(1)

from mcp.server.mcpserver import MCPServer  # noqa: E402
from mcp.server.stdio import _claims  # noqa: E402

app = MCPServer("faulty")


@app.tool()
def echo(text: str) -> str:
    """Echo `text` back."""
    return text


@app.tool()
def big(mb: float) -> str:
    """A text result of `mb` megabytes."""
    return "x" * int(mb * 1_000_000)


def _mark_hang() -> None:
    path = os.environ.get("FAULTY_PID_FILE")
    if path:
        with open(path + ".hang", "w") as f:
            f.write("hanging")


@app.tool()
async def hang() -> str:
    """Never returns (with `FAULTY_PID_FILE` set, says it started in `<that>.hang`)."""
    _mark_hang()
    await asyncio.Event().wait()
    return "unreachable"


@app.tool()
def crash() -> str:
    """The server process dies mid-call."""
    os._exit(3)


@app.tool()
def fail() -> str:
    """Raises: the SDK answers with an error result."""
    raise RuntimeError("fail was called")


@app.tool()
def garbage() -> str:
    """A line that is not JSON-RPC on stdout, then a normal answer."""
    # The SDK moves the JSON-RPC wire off fd 1 (so stray prints cannot corrupt it):
    # write to the wire itself, as a server with a stray print in C code would.
    claim = _claims.get(1)
    wire_fd = claim.private_fd if claim is not None and claim.private_fd is not None else 1
    os.write(wire_fd, b"this is not json\n")
    return "after garbage"


@app.tool()
def inject(text: str) -> str:
    """`text` on stderr, as is (newlines, escape sequences and all)."""
    sys.stderr.write(text)
    sys.stderr.flush()
    return "written"


if __name__ == "__main__":
    if os.environ.get("FAULTY_HTTP_PORT"):
        app.run(
            "streamable-http",
            host="127.0.0.1",
            port=int(os.environ["FAULTY_HTTP_PORT"]),
            json_response=os.environ.get("FAULTY_JSON") == "1",
        )
    else:
        app.run()
