"""Errors raised by the replicated-state layer. Every one derives from `CrdtError`."""

from __future__ import annotations


class CrdtError(Exception):
    """Base class of every error the crdt layer raises."""
