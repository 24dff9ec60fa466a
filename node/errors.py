"""Errors raised by the node. Every one derives from `NodeError`.

`StartupError` and its subclasses stop the daemon before it serves anything; the
CLI turns them into one line on stderr and exit code 2 (`EXIT_BAD_CONFIG`).
"""

from __future__ import annotations

EXIT_BAD_CONFIG = 2


class NodeError(Exception):
    """Base class of every error the node raises."""


class StartupError(NodeError):
    """The node cannot start until the operator fixes something."""


class ConfigError(StartupError):
    """A configuration value is missing, of the wrong type or out of range.

    `key` is the dotted config key (`http.port`), so the message can name it.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"config key '{key}': {reason}")
        self.key = key
        self.reason = reason


MAX_ERROR_ECHO_CHARS = 240


def clip(text: str, max_chars: int = MAX_ERROR_ECHO_CHARS) -> str:
    """`text`, cut to about `max_chars` keeping its start and end (what it is, and what is
    wrong with it): errors echo what a client sent, and a 1 MB argument must not come
    back as a 1 MB message."""
    if len(text) <= max_chars:
        return text
    head = max_chars * 2 // 3
    tail = max_chars - head
    return f"{text[:head]}…[{len(text) - max_chars} more chars]…{text[-tail:]}"
