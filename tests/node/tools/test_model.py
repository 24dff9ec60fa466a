"""CallContext: the per-call context carried from the entry point to the tool."""

from __future__ import annotations

import asyncio
import dataclasses

from vsmcp.node.tools.model import CallContext, new_trace_id


async def test_with_timeout_tightens_the_deadline_and_keeps_every_other_field() -> None:
    async def progress(value: float, total: float | None, message: str | None) -> None:
        return None

    ctx = CallContext(
        caller_id="c",
        caller_zone="ops",
        origin="http:x",
        trace_id="t",
        causality=("e1", "e2"),
        progress=progress,
        deadline=None,
    )
    tightened = ctx.with_timeout(5.0)
    now = asyncio.get_running_loop().time()
    assert tightened.deadline is not None and now < tightened.deadline <= now + 5.0
    for f in dataclasses.fields(CallContext):
        if f.name != "deadline":
            assert getattr(tightened, f.name) == getattr(ctx, f.name), f.name
    assert tightened.with_timeout(60.0) is tightened  # never loosened
    assert ctx.with_timeout(None) is ctx


def test_trace_ids_are_32_hex_digits_and_distinct() -> None:
    ids = {new_trace_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
