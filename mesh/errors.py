"""Errors raised by the mesh layer. Every one derives from `MeshError`."""

from __future__ import annotations


class MeshError(Exception):
    """Base class of every error the mesh layer raises."""
