"""Errors of child VSMs: one base, a subclass per kind of refusal."""

from __future__ import annotations

from vsmcp.node.errors import NodeError


class ChildError(NodeError):
    """A child VSM could not be spawned, stopped or run."""


class SpawnRefused(ChildError):
    """A spawn was refused (recursion guard or bad input): nothing was created."""


class UnknownChild(ChildError):
    """No child of that name."""


class ChildNotReady(ChildError):
    """The child process did not write its runtime.json in time."""
