"""The node's HTTP server (aiohttp, loopback by default): health, metrics, JSON API, page.

The status page (`/`, `/static/*`, `/api/stream`) is in `node/http/status_page.py`."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from aiohttp import web

from vsmcp.mesh.errors import MeshError
from vsmcp.mesh.identity import public_key_from_node_id
from vsmcp.node.errors import NodeError, StartupError
from vsmcp.node.http.limits import (
    ConnectionGuard,
    ConnectionLimits,
    GuardedTCPSite,
    connection_middleware,
)
from vsmcp.node.http.policy import RequestPolicy
from vsmcp.node.http.status_page import PageHub, page_routes
from vsmcp.node.metrics import CONTENT_TYPE
from vsmcp.node.vsm.stream import EventStream

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1 << 20
MAX_SIGNAL_BYTES = 16 * 1024
MAX_CHILD_REQUEST_BYTES = 8 * 1024
# A planner request: 4096 characters, each up to 12 bytes as JSON escapes a character
# (a surrogate pair, `\ud83d\ude00`), so a refused over-long text gets its 400.
MAX_PLAN_REQUEST_BYTES = 64 * 1024
MAX_REVOKE_REQUEST_BYTES = 4 * 1024
# What the status page lists of the node's recent events and audit entries.
RECENT_EVENTS_SHOWN = 100
RECENT_AUDIT_SHOWN = 50
# What the status page offers a viewer with an admin token (`GET /api/admin`).
ADMIN_ACTIONS = ("revoke-policy", "stop-child")


class NodeView(Protocol):
    """What the HTTP layer needs from a running node."""

    def status(self) -> dict[str, Any]: ...

    def render_metrics(self) -> bytes: ...

    def healthy(self) -> bool: ...

    def health_problems(self) -> list[str]: ...

    def peers(self) -> list[dict[str, Any]]: ...

    def tools(self) -> list[dict[str, Any]]: ...

    def offer_tools(self) -> list[dict[str, Any]]: ...

    def block_peer(self, node_id: str, blocked: bool) -> None: ...

    def debug_tool(self, name: str, zone: str, present: bool) -> None: ...

    def debug_loop_fault(self, name: str) -> None: ...

    def patterns_view(self) -> dict[str, Any]: ...

    def vsm_view(self) -> dict[str, Any]: ...

    def algedonic_post(
        self, body: object, authorization: str | None, remote: str | None
    ) -> tuple[int, dict[str, Any]]: ...

    def policies_view(self) -> dict[str, Any]: ...

    def accept_policy_record(self, blob: bytes) -> bool: ...

    def policy_agent_set(self) -> dict[str, Any]: ...
    def admin_authorize(
        self, authorization: str | None, remote: str | None
    ) -> tuple[str | None, tuple[int, dict[str, Any]] | None]: ...

    def revoke_policy(self, issuer: bytes, policy_id: str, caller: str) -> bool: ...

    def wasm_view(self) -> dict[str, Any]: ...

    def wasm_authorize(
        self, authorization: str | None, remote: str | None
    ) -> tuple[int, dict[str, Any]] | None: ...

    def wasm_publish_limit(self) -> int: ...

    async def wasm_publish(self, request: Mapping[str, Any]) -> dict[str, Any]: ...

    def wasm_unpublish(self, name: str) -> int: ...

    def children_view(self) -> dict[str, Any]: ...

    async def recent_audit(self, limit: int) -> list[dict[str, Any]]: ...

    def children_post(
        self, body: object, authorization: str | None, remote: str | None
    ) -> tuple[int, dict[str, Any]]: ...

    async def children_delete(
        self, name: str, authorization: str | None, remote: str | None
    ) -> tuple[int, dict[str, Any]]: ...

    async def plan_post(
        self, body: object, authorization: str | None, remote: str | None
    ) -> tuple[int, dict[str, Any]]: ...

    async def ask_post(
        self, body: object, authorization: str | None, remote: str | None
    ) -> tuple[int, dict[str, Any]]: ...


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, separators=(",", ":")),
        status=status,
        content_type="application/json",
    )


def _while_starting(view: Callable[[], dict[str, Any]]) -> web.Response:
    """A view of a part that starts after HTTP: 503 with Retry-After until it is up."""
    try:
        return _json(view())
    except NodeError as e:
        answer = _json({"error": str(e)}, status=503)
        answer.headers["Retry-After"] = "1"
        return answer


async def _json_body(request: web.Request, limit: int, *, off_loop: bool = False) -> object:
    """The request's JSON body, read up to `limit` bytes; or the error answer (413, 400).
    A declared Content-Length over `limit` is refused before anything is read;
    `off_loop` parses in a thread (a body of megabytes would stall the event loop)."""
    if request.content_length is not None and request.content_length > limit:
        return _json({"error": f"body over {limit} bytes", "field": "body"}, 413)
    raw = bytearray()
    # `read(n)` gives what has arrived (up to n): a large body comes in several reads.
    while len(raw) <= limit:
        part = await request.content.read(limit + 1 - len(raw))
        if not part:
            break
        raw += part
    if len(raw) > limit:
        return _json({"error": f"body over {limit} bytes", "field": "body"}, 413)
    try:
        return await asyncio.to_thread(json.loads, raw) if off_loop else json.loads(raw)
    except ValueError:
        return _json({"error": "the body is not JSON", "field": "body"}, status=400)


def build_app(
    node: NodeView, policy: RequestPolicy | None = None, page: PageHub | None = None
) -> web.Application:
    """The node's routes; `policy` (Host and Origin rules) applies to every one of them.
    `page` feeds the status page's stream (without one, a hub on an empty stream)."""
    # The connection limits outermost: a request the policy refuses still holds its
    # connection's slot, and a reserved connection still closes after it.
    middlewares = [connection_middleware, (policy or RequestPolicy()).middleware()]
    app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=middlewares)

    async def healthz(_: web.Request) -> web.Response:
        if node.healthy():
            return _json({"status": "ok"})
        return _json({"status": "unhealthy", "problems": node.health_problems()}, status=503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=node.render_metrics(), headers={"Content-Type": CONTENT_TYPE})

    async def api_status(_: web.Request) -> web.Response:
        return _json(node.status())

    hub = page if page is not None else PageHub(EventStream())

    async def api_peers(_: web.Request) -> web.Response:
        return _json({"peers": node.peers()})

    async def debug_block(request: web.Request) -> web.Response:
        peer = request.query.get("peer", "")
        blocked = request.method == "POST"
        try:
            node.block_peer(peer, blocked)
        except NodeError as e:
            return _json({"error": str(e)}, status=403)
        return _json({"peer": peer, "blocked": blocked})

    async def api_tools(_: web.Request) -> web.Response:
        return _json({"tools": node.tools(), "offers": node.offer_tools()})

    async def api_patterns(_: web.Request) -> web.Response:
        return _json(node.patterns_view())

    async def api_vsm(_: web.Request) -> web.Response:
        return _json(node.vsm_view())

    async def api_algedonic(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_SIGNAL_BYTES:
            return _json({"error": f"body over {MAX_SIGNAL_BYTES} bytes", "field": "body"}, 413)
        raw = await request.content.read(MAX_SIGNAL_BYTES + 1)
        if len(raw) > MAX_SIGNAL_BYTES:
            return _json({"error": f"body over {MAX_SIGNAL_BYTES} bytes", "field": "body"}, 413)
        try:
            body = json.loads(raw)
        except ValueError:
            return _json({"error": "the body is not JSON", "field": "body"}, status=400)
        status, answer = node.algedonic_post(
            body, request.headers.get("Authorization"), request.remote
        )
        return _json(answer, status=status)

    async def api_policies(_: web.Request) -> web.Response:
        # HTTP is up before the mesh, and so before the immune system: not yet.
        return _while_starting(node.policies_view)

    async def api_policy_agent_set(_: web.Request) -> web.Response:
        answer = _while_starting(node.policy_agent_set)
        # Signed, but a snapshot: a cached copy would keep a lifted block enforced.
        answer.headers["Cache-Control"] = "no-store"
        return answer

    async def api_policy_agent_module(_: web.Request) -> web.Response:
        # Imported at the first request for it: a node nobody asks never loads it.
        from vsmcp.node.policyagent.agent import module_bytes

        # application/wasm: what WebAssembly.instantiateStreaming requires.
        return web.Response(body=module_bytes(), content_type="application/wasm")

    async def api_revocation(request: web.Request) -> web.Response:
        # The record is signed (by the authority, offline): whoever posts it adds nothing.
        try:
            body = await request.json()
            blob = base64.b64decode(body["record"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
            return _json({"error": 'expected {"record": "<base64 signed revocation>"}'}, 400)
        try:
            accepted = node.accept_policy_record(blob)
        except NodeError as e:
            return _json({"error": str(e)}, status=403)
        return _json({"accepted": accepted})

    def _admin(request: web.Request) -> tuple[str | None, web.Response | None]:
        caller, refusal = node.admin_authorize(request.headers.get("Authorization"), request.remote)
        if caller is None:
            status, answer = refusal or (403, {"error": "refused"})
            return None, _json(answer, status=status)
        return caller, None

    async def api_admin(request: web.Request) -> web.Response:
        # The status page asks before it shows any action: read-only for everyone else.
        caller, refused = _admin(request)
        return refused or _json({"caller": caller, "actions": list(ADMIN_ACTIONS)})

    async def api_revoke(request: web.Request) -> web.Response:
        caller, refused = _admin(request)
        if refused is not None or caller is None:
            return refused or _json({"error": "refused"}, 403)
        body = await _json_body(request, MAX_REVOKE_REQUEST_BYTES)
        if isinstance(body, web.Response):
            return body
        expected = 'expected {"issuer": "<node id>", "id": "<policy id>"}'
        if not isinstance(body, dict):
            return _json({"error": expected, "field": "body"}, 400)
        issuer, policy_id = body.get("issuer"), body.get("id")
        if not isinstance(issuer, str):
            return _json({"error": expected, "field": "issuer"}, 400)
        if not isinstance(policy_id, str) or not policy_id:
            return _json({"error": expected, "field": "id"}, 400)
        try:
            issuer_key = public_key_from_node_id(issuer)
        except MeshError as e:
            # No policy has such an issuer (the schema cannot tell a valid node id).
            return _json({"error": f"no policy of that issuer: {e}", "field": "issuer"}, 404)
        try:
            revoked = node.revoke_policy(issuer_key, policy_id, caller)
        except StartupError as e:
            return _json({"error": str(e)}, status=503)
        except NodeError as e:
            return _json({"error": str(e)}, status=403)
        if not revoked:
            return _json({"error": f"no live policy {policy_id!r} of {issuer} here"}, 404)
        return _json({"revoked": True})

    async def api_wasm(_: web.Request) -> web.Response:
        return _while_starting(node.wasm_view)

    async def api_wasm_publish(request: web.Request) -> web.Response:
        refusal = node.wasm_authorize(request.headers.get("Authorization"), request.remote)
        if refusal is not None:
            return _json(refusal[1], status=refusal[0])
        body = await _json_body(request, node.wasm_publish_limit(), off_loop=True)
        if isinstance(body, web.Response):
            return body
        if not isinstance(body, dict):
            return _json({"error": "expected a JSON object", "field": "body"}, 400)
        try:
            return _json(await node.wasm_publish(body))
        except (KeyError, ValueError, TypeError, binascii.Error) as e:
            return _json(
                {"error": f'expected {{"module": b64, "record": b64 | "manifest": toml}}: {e}'},
                400,
            )
        except NodeError as e:
            return _json({"error": str(e)}, status=403)

    async def api_wasm_unpublish(request: web.Request) -> web.Response:
        refusal = node.wasm_authorize(request.headers.get("Authorization"), request.remote)
        if refusal is not None:
            return _json(refusal[1], status=refusal[0])
        try:
            revoked = node.wasm_unpublish(request.match_info["name"])
        except NodeError as e:
            return _json({"error": str(e)}, status=503)
        return _json({"revoked": revoked})

    async def api_openapi(_: web.Request) -> web.Response:
        # Imported at the first request: an idle node does not hold the document's code.
        from vsmcp.node.http.openapi import openapi_document

        return web.Response(body=openapi_document(), content_type="application/json")

    async def api_children(_: web.Request) -> web.Response:
        return _json(node.children_view())

    async def api_events(_: web.Request) -> web.Response:
        return _json({"events": hub.recent_events(RECENT_EVENTS_SHOWN), "page": hub.stats()})

    async def api_audit_recent(_: web.Request) -> web.Response:
        try:
            return _json({"entries": await node.recent_audit(RECENT_AUDIT_SHOWN)})
        except NodeError as e:
            answer = _json({"error": str(e)}, status=503)
            answer.headers["Retry-After"] = "1"
            return answer

    async def api_children_post(request: web.Request) -> web.Response:
        body = await _json_body(request, MAX_CHILD_REQUEST_BYTES)
        if isinstance(body, web.Response):
            return body
        auth = request.headers.get("Authorization")
        status, answer = node.children_post(body, auth, request.remote)
        return _json(answer, status=status)

    async def planner_request(request: web.Request) -> web.Response:
        body = await _json_body(request, MAX_PLAN_REQUEST_BYTES)
        if isinstance(body, web.Response):
            return body
        auth = request.headers.get("Authorization")
        post = node.plan_post if request.path == "/api/plan" else node.ask_post
        status, answer = await post(body, auth, request.remote)
        return _json(answer, status=status)

    async def api_children_delete(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization")
        name = request.match_info["name"]
        status, answer = await node.children_delete(name, auth, request.remote)
        return _json(answer, status=status)

    async def debug_tools(request: web.Request) -> web.Response:
        name = request.query.get("name", "")
        zone = request.query.get("zone", "public")
        present = request.method == "POST"
        if not name:
            return _json({"error": "name is required"}, status=400)
        try:
            node.debug_tool(name, zone, present)
        except (NodeError, ValueError) as e:
            return _json({"error": str(e)}, status=403)
        return _json({"tool": name, "zone": zone, "present": present})

    async def debug_loop_fault(request: web.Request) -> web.Response:
        name = request.query.get("name", "")
        try:
            node.debug_loop_fault(name)
        except NodeError as e:
            return _json({"error": str(e)}, status=403)
        return _json({"loop": name, "fault": "injected"})

    app.router.add_post("/api/debug/loop-fault", debug_loop_fault)
    app.router.add_post("/api/debug/tools", debug_tools)
    app.router.add_delete("/api/debug/tools", debug_tools)
    app.router.add_get("/api/children", api_children)
    app.router.add_post("/api/children", api_children_post)
    app.router.add_delete("/api/children/{name}", api_children_delete)
    app.router.add_get("/api/peers", api_peers)
    app.router.add_get("/api/tools", api_tools)
    app.router.add_get("/api/patterns", api_patterns)
    app.router.add_get("/api/vsm", api_vsm)
    app.router.add_post("/api/algedonic", api_algedonic)
    app.router.add_post("/api/plan", planner_request)
    app.router.add_post("/api/ask", planner_request)
    app.router.add_get("/api/policies", api_policies)
    app.router.add_get("/api/policy-agent.wasm", api_policy_agent_module)
    app.router.add_get("/api/policy-agent/policies", api_policy_agent_set)
    app.router.add_post("/api/policies/revocations", api_revocation)
    app.router.add_post("/api/policies/revoke", api_revoke)
    app.router.add_get("/api/admin", api_admin)
    app.router.add_get("/api/wasm/modules", api_wasm)
    app.router.add_post("/api/wasm/modules", api_wasm_publish)
    app.router.add_delete("/api/wasm/modules/{name}", api_wasm_unpublish)
    app.router.add_post("/api/debug/block", debug_block)
    app.router.add_delete("/api/debug/block", debug_block)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/status", api_status)
    app.router.add_get("/api/openapi.json", api_openapi)
    app.router.add_get("/api/events", api_events)
    app.router.add_get("/api/audit/recent", api_audit_recent)
    page_routes(app, hub)
    return app


def app_runner(app: web.Application) -> web.AppRunner:
    """The runner every server of ours uses: `/mcp` relies on its handler cancellation."""
    return web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        # A client that goes away cancels its handler (and so its tool call).
        handler_cancellation=True,
    )


class HttpServer:
    """Serves `build_app(node)` on host:port; port 0 picks a free one (see `.port`).

    Connections are bounded and timed out as `limits` says (see `node.http_limits`);
    requests naming another Host or a foreign Origin are refused as `policy` says."""

    def __init__(
        self,
        node: NodeView,
        host: str,
        port: int,
        limits: ConnectionLimits | None = None,
        policy: RequestPolicy | None = None,
        page: PageHub | None = None,
    ) -> None:
        self._app = build_app(node, policy, page)
        self._host = host
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self.guard = ConnectionGuard(limits or ConnectionLimits())
        self.port: int | None = None

    @property
    def app(self) -> web.Application:
        return self._app

    async def start(self) -> None:
        if self._runner is not None:
            return
        runner = app_runner(self._app)
        await runner.setup()
        site = GuardedTCPSite(runner, self._host, self._requested_port, self.guard, access_log=None)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        sockets = site.sockets
        self.port = sockets[0].getsockname()[1] if sockets else self._requested_port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
