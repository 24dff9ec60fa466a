"""How the node knows a `/mcp` client is `vsmcp mcp-stdio`, so that it gets `mcp.stdio_zone`.

The stdio bridge is a separate process that reaches the node over loopback HTTP, where
any local process of any user can connect and claim anything: a header or a flag saying
"I am the stdio bridge" would let every local user pick the stdio zone. So the zone is
never asserted by the client. The node keeps a random secret in `<data_dir>/stdio.token`
(mode 0600, in the 0700 data dir) and grants `mcp.stdio_zone` to requests bearing it
(origin `http:stdio`). Being able to read that file is the proof: only the node's own
user (and root) can, which is the local user the stdio transport stands for. A bridge
that cannot read it (started with `--url` alone, or by another user) is an ordinary
loopback client (`mcp.loopback_zone`), or uses a configured bearer token.

The secret outlives restarts, so a running bridge keeps working across a node restart;
an unusable file (not a regular file, not ours, readable by group or other, not a
token) is replaced, which retires whatever it held. Delete it and restart to rotate.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Final

from vsmcp.node.errors import StartupError

log = logging.getLogger(__name__)

STDIO_TOKEN_FILE_NAME: Final = "stdio.token"
STDIO_TOKEN_BYTES: Final = 32
MAX_STDIO_TOKEN_FILE_BYTES: Final = 256
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,128}")


def stdio_token_path(data_dir: Path) -> Path:
    return data_dir / STDIO_TOKEN_FILE_NAME


def ensure_stdio_token(data_dir: Path) -> str:
    """The node's stdio secret: the one in the data dir if usable, else a fresh one.

    Called with the data dir's lock held, so no other vsmcpd writes it meanwhile."""
    path = stdio_token_path(data_dir)
    try:
        token, problem = _read_own_token(path)
    except FileNotFoundError:
        token, problem = None, ""
    except OSError as e:  # a symlink (O_NOFOLLOW), unreadable, ...
        token, problem = None, e.strerror or str(e)
    if token is not None:
        return token
    if problem:
        log.warning("replacing %s (%s): stdio bridges must restart", path, problem)
    token = secrets.token_urlsafe(STDIO_TOKEN_BYTES)
    try:
        _write_private(path, token)
    except OSError as e:
        raise StartupError(f"cannot write the stdio secret {path}: {e.strerror or e}") from e
    return token


def read_stdio_token(data_dir: Path) -> str | None:
    """For the bridge: the secret, or None when this user cannot read a usable one."""
    try:
        with stdio_token_path(data_dir).open("rb") as f:
            text = f.read(MAX_STDIO_TOKEN_FILE_BYTES + 1)
    except OSError:
        return None
    token = text.decode("ascii", errors="replace").strip()
    return token if _TOKEN.fullmatch(token) else None


def _read_own_token(path: Path) -> tuple[str | None, str]:
    """(token, "") when the file is usable, else (None, what is wrong with it)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None, "not a regular file"
        if info.st_uid != os.geteuid():
            return None, "owned by another user"
        if stat.S_IMODE(info.st_mode) & 0o077:
            return None, f"mode {stat.S_IMODE(info.st_mode):04o}, readable by others"
        data = os.read(fd, MAX_STDIO_TOKEN_FILE_BYTES + 1)
    finally:
        os.close(fd)
    token = data.decode("ascii", errors="replace").strip()
    if not _TOKEN.fullmatch(token):
        return None, "not a token"
    return token, ""


def _write_private(path: Path, token: str) -> None:
    """Write atomically (temp file, fsync, rename), mode 0600 from creation on."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a leftover temp file
        os.write(fd, (token + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
