"""A proposed call checked against the registry, the requester's zone and the tool's
schema before it runs (a language model may name anything with any arguments)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vsmcp.node.tools.errors import InvalidArguments, ToolConfigError, UnknownTool, ZoneDenied
from vsmcp.node.tools.model import ToolSpec
from vsmcp.node.tools.policy import ArgumentValidator


class CallChecker:
    def __init__(self) -> None:
        self._validator = ArgumentValidator()

    def problem(
        self,
        name: str,
        arguments: object,
        allowed: Sequence[ToolSpec],
        known: Sequence[ToolSpec],
        caller_zone: str,
    ) -> str | None:
        """Why the call must not run (None: it may): an unknown tool, one the zone may
        not call, arguments that are not an object or fail the tool's schema."""
        spec = next((s for s in allowed if s.name == name), None)
        if spec is None:
            other = next((s for s in known if s.name == name), None)
            if other is None:
                return UnknownTool(name).message
            return ZoneDenied(name, caller_zone, other.zone).message
        if not isinstance(arguments, Mapping):
            return InvalidArguments(name, "arguments must be a JSON object", "arguments").message
        try:
            self._validator.check(spec, arguments)
        except InvalidArguments as e:
            return e.message
        except ToolConfigError as e:
            return str(e)
        return None

    @staticmethod
    def arguments(value: object) -> dict[str, Any]:
        return dict(value) if isinstance(value, Mapping) else {}
