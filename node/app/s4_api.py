"""The node's side of System 4: the planner and the environment scan once the node runs,
`POST /api/plan` (a dry run) and `POST /api/ask` (plan and run), callers found as
`POST /api/algedonic` finds them (a bearer token, or the loopback zone)."""

from __future__ import annotations

from typing import Any

from vsmcp.node.app.vsm_systems import VsmSystems
from vsmcp.node.tools.model import CallContext
from vsmcp.node.vsm.s4.planner import MAX_REQUEST_CHARS, Planner
from vsmcp.node.vsm.s4.scan import EnvironmentScan


class S4Api:
    def __init__(self) -> None:
        self.planner: Planner | None = None
        self.scan: EnvironmentScan | None = None

    def view(self) -> dict[str, Any]:
        """`/api/vsm`'s `s4` (with the peers and tools seen, from `VsmSystems.view`)."""
        return {
            "status": "running" if self.planner is not None else "starting",
            "planner": self.planner.view() if self.planner is not None else {},
            "scan": self.scan.view() if self.scan is not None else {},
        }

    async def post(
        self,
        vsm: VsmSystems,
        body: object,
        authorization: str | None,
        remote: str | None,
        *,
        run: bool,
    ) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) of `/api/plan` (`run` false) or `/api/ask`."""
        grant = vsm.caller_grant(authorization, remote)
        if grant is None:
            return 401, {"error": "a bearer token (mcp.tokens) is required"}
        if not isinstance(body, dict) or set(body) != {"text"} or not isinstance(body["text"], str):
            return 400, {"error": 'expected {"text": "<request>"}', "field": "text"}
        text = body["text"]
        if not text.strip() or len(text) > MAX_REQUEST_CHARS:
            return 400, {
                "error": f"text must be 1 to {MAX_REQUEST_CHARS} characters",
                "field": "text",
            }
        planner = self.planner
        if planner is None:
            return 503, {"error": "the planner is not running yet"}
        if planner.busy:
            return 503, {"error": "the planner is busy (vsm.s4.max_concurrent): retry"}
        origin = f"http:{grant.name}"
        ctx = CallContext(
            caller_id="loopback" if grant.name == "loopback" else f"token:{grant.name}",
            caller_zone=grant.zone,
            origin=origin,
            client_addr=remote,
        )
        if run:
            answer = await planner.answer(text, ctx)
            return 200, answer.to_json()
        plan = await planner.plan(text, ctx)
        return 200, plan.to_json()
