"""Call policy at the edge of the tool layer: zones, rate limits, argument validation.

Zones are ordered (`public` < `ops` < `restricted` by default). A caller may call a
tool whose zone ranks at or below its own. An unknown zone ranks nowhere: a caller
in an unknown zone may call nothing, a tool in an unknown zone is callable by nobody
(fail closed). When `mesh.certs.ZoneOrder` exists it decides; otherwise the ranking
given here does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from vsmcp.mesh.certs import DEFAULT_ZONES, ZoneOrder
from vsmcp.node.tools.errors import InvalidArguments, RateLimited, ToolConfigError, ZoneDenied
from vsmcp.node.tools.model import CallContext, ToolSpec
from vsmcp.node.vsm.events import Denial, EventSink

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

    from vsmcp.node.tools.schema_fast import Check
    from vsmcp.node.vsm.limits import RateLimiter

ZoneAllows = Callable[[str, str], bool]
"""`allows(caller_zone, tool_zone)`."""


def zone_allows(zones: Sequence[str] = DEFAULT_ZONES) -> ZoneAllows:
    """A caller may use tools at or below its zone; an unknown zone is a denial."""
    order = ZoneOrder(list(zones))

    def allows(caller_zone: str, tool_zone: str) -> bool:
        return caller_zone in order and tool_zone in order and order.allows(caller_zone, tool_zone)

    return allows


class ArgumentValidator:
    """Checks arguments against each tool's JSON Schema; compiled validators are cached.

    A schema within `schema_fast`'s subset also gets a compiled acceptance check: valid
    arguments pass it without jsonschema; anything it does not accept goes to
    jsonschema, whose verdict and message decide."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[Mapping[str, Any], Validator, Check | None]] = {}

    def check(self, spec: ToolSpec, arguments: Mapping[str, Any]) -> None:
        cached = self._cache.get(spec.name)
        if cached is not None and cached[0] is spec.input_schema:
            fast = cached[2]
            if fast is not None and fast(arguments if type(arguments) is dict else dict(arguments)):
                return
        self._check_slow(spec, arguments)

    def _check_slow(self, spec: ToolSpec, arguments: Mapping[str, Any]) -> None:
        # jsonschema is imported at the first call that has arguments to check, not with
        # the node (an idle node does not need it); after that, a lookup in sys.modules.
        import jsonschema

        from vsmcp.node.tools.schema_fast import compile_schema

        cached = self._cache.get(spec.name)
        if cached is None or cached[0] is not spec.input_schema:
            schema = dict(spec.input_schema)
            cls = jsonschema.validators.validator_for(schema)
            try:
                cls.check_schema(schema)
            except jsonschema.SchemaError as exc:
                problem = f"tool {spec.name!r} has an invalid input schema: {exc.message}"
                raise ToolConfigError(problem) from exc
            cached = (spec.input_schema, cls(schema), compile_schema(schema))
            self._cache[spec.name] = cached
        validator = cached[1]
        instance = dict(arguments)
        if validator.is_valid(instance):  # the common case, without building errors
            return
        error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
        if error is not None:
            path = "".join(
                f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
            )
            raise InvalidArguments(spec.name, error.message, f"arguments{path}" if path else "")


class CallPolicy:
    """Zone visibility and permission, rate limits, argument validation for one catalog."""

    def __init__(
        self,
        *,
        allows: ZoneAllows | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._allows = allows if allows is not None else zone_allows()
        self._limiter = limiter
        self._validator = ArgumentValidator()
        # Where denials are published (the node's event stream); set by the node.
        self.events: EventSink | None = None

    @property
    def limiter(self) -> RateLimiter | None:
        return self._limiter

    def visible(self, spec: ToolSpec, ctx: CallContext) -> bool:
        return self._allows(ctx.caller_zone, spec.zone)

    def admit(self, spec: ToolSpec, arguments: Mapping[str, Any], ctx: CallContext) -> None:
        """Raise `ZoneDenied`, `InvalidArguments` or `RateLimited`, in that order, or return."""
        if not self._allows(ctx.caller_zone, spec.zone):
            self._denied(ctx, "zone", spec.name)
            raise ZoneDenied(spec.name, ctx.caller_zone, spec.zone)
        self._validator.check(spec, arguments)
        if self._limiter is not None:
            refused = self._limiter.acquire(ctx.origin, spec.name, entry_origin=ctx.entry_origin)
            if refused is not None:
                self._denied(ctx, f"rate:{refused.limit}", spec.name)
                raise RateLimited(refused.limit, refused.key, refused.retry_after_s)

    def _denied(self, ctx: CallContext, limit: str, blocked: str) -> None:
        """Publish a `denial` event (never blocks nor fails the call)."""
        if self.events is not None:
            self.events.publish(
                Denial(
                    ts=time.time(),
                    origin=ctx.origin,
                    zone=ctx.caller_zone,
                    limit=limit,
                    blocked=blocked,
                    entry_origin=ctx.entry_origin,
                )
            )
