"""An entry's gate: admit or refuse at once, with a denial event and a retry-after."""

from __future__ import annotations

import pytest

from vsmcp.node.tools.admission import EntryGate
from vsmcp.node.tools.errors import ConcurrencyLimited, Overloaded
from vsmcp.node.tools.model import CallContext
from vsmcp.node.vsm.concurrency import AdaptiveLimiter
from vsmcp.node.vsm.events import Denial
from vsmcp.node.vsm.limiter_settings import LimiterSettings
from vsmcp.node.vsm.stream import EventStream


def test_a_refusal_is_an_overloaded_error_with_a_denial_event() -> None:
    stream = EventStream()
    seen = stream.subscribe("seen", lambda batch: None)
    clock = iter(float(i) for i in range(100))
    limiter = AdaptiveLimiter("mcp", LimiterSettings(min_limit=1, initial_limit=2, max_limit=2))
    gate = EntryGate(limiter, stream, clock=lambda: next(clock))
    ctx = CallContext(caller_id="c", caller_zone="public", origin="http:a", priority="low")
    started = gate.admit(ctx, "work")  # low may use 50 % of 2: one call
    with pytest.raises(ConcurrencyLimited) as info:
        gate.admit(ctx, "work")
    error = info.value
    assert isinstance(error, Overloaded) and error.reason == "overloaded"
    assert error.data["limit"] == "adaptive_concurrency"
    assert error.data["priority"] == "low" and error.data["retry_after_s"] > 0
    denial = seen.buffer[-1]
    assert isinstance(denial, Denial)
    assert (denial.limit, denial.blocked, denial.origin) == ("concurrency:mcp", "work", "http:a")
    gate.done(started, sample=True)
    assert limiter.inflight == 0 and limiter.samples == 1
    gate.admit(ctx, "work")  # room again
