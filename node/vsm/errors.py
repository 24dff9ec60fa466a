"""Errors of the event stream and the pattern engine."""

from __future__ import annotations

from vsmcp.node.errors import NodeError


class VsmError(NodeError):
    """Base of the errors raised by `node.vsm`."""


class PatternError(VsmError):
    """A pattern set was refused: names the file, the pattern and why.

    Raised before anything changes, so the pattern set already running keeps running.
    `source` is the file (or `<config>`, `<policies>`), `pattern` the pattern's name
    (or its position when it has none), `reason` a short human reason.
    """

    def __init__(self, source: str, pattern: str, reason: str) -> None:
        where = f"{source}: pattern {pattern!r}" if pattern else source
        super().__init__(f"{where}: {reason}")
        self.source = source
        self.pattern = pattern
        self.reason = reason


class EventsFileError(VsmError):
    """A recorded events file (JSONL) has a line that is not an event."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        super().__init__(f"{source}:{line}: {reason}")
        self.source = source
        self.line = line
        self.reason = reason
