"""The OpenAPI 3.1 document of the node's JSON API, served at `GET /api/openapi.json`.

Paths and operations are listed here; their bodies' schemas are generated from the
structs of `node/http/api_schema.py`. tests/node/http/test_openapi.py checks that the
operations here are exactly the `/api/*` routes `build_app` registers and that the
document is valid OpenAPI 3.1; tests/node/http/test_openapi_fuzz.py fuzzes a real node
against it. See docs/api.md.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from vsmcp.node import __version__
from vsmcp.node.http import api_schema

OPENAPI_PATH: Final = "/api/openapi.json"
# Server-Sent Events, not JSON: an answer that never ends (tests/node/http/test_openapi_fuzz.py
# leaves it out; tests/integration/test_status_page.py reads it).
STREAM_PATH: Final = "/api/stream"
AGENT_MODULE_PATH: Final = "/api/policy-agent.wasm"
_REF: Final = "#/components/schemas/{name}"
# Operations that answer only when `node.debug_api` is on (403 otherwise).
DEBUG_TAG: Final = "debug"

# What the request policy and the connection limits can answer on every route.
_EVERY_ROUTE: Final[Mapping[int, str]] = {
    403: "A browser Origin not answered: not in mcp.allowed_origins nor a loopback origin on "
    "a loopback connection (`origin` names it)",
    421: "A Host header naming another host (`host` names it): DNS rebinding",
    503: "Too many connections (`limit`); retry after the Retry-After header",
}


def _ref(struct: type[msgspec.Struct]) -> dict[str, str]:
    return {"$ref": _REF.format(name=struct.__name__)}


def _json_content(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": dict(schema)}}


def _operation(
    summary: str,
    ok: tuple[int, type[msgspec.Struct] | None, str],
    errors: Mapping[int, str] = {},
    *,
    body: type[msgspec.Struct] | None = None,
    query: Mapping[str, str] = {},
    required: tuple[str, ...] = (),
    debug: bool = False,
    bearer: bool = False,
) -> dict[str, Any]:
    status, struct, description = ok
    schema = _ref(struct) if struct is not None else {"type": "object"}
    responses: dict[str, Any] = {
        str(status): {"description": description, "content": _json_content(schema)}
    }
    for code, why in sorted({**_EVERY_ROUTE, **errors}.items()):
        if code in errors and code in _EVERY_ROUTE:
            why = f"{errors[code]}; or: {_EVERY_ROUTE[code]}"
        responses[str(code)] = {
            "description": why,
            "content": _json_content(_ref(api_schema.Error)),
        }
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if query:
        op["parameters"] = [
            {
                "name": name,
                "in": "query",
                "required": name in required,
                "schema": {"type": "string", "minLength": 1 if name in required else 0},
                "description": doc,
            }
            for name, doc in query.items()
        ]
    if body is not None:
        op["requestBody"] = {"required": True, "content": _json_content(_ref(body))}
    if debug:
        op["tags"] = [DEBUG_TAG]
        op["description"] = "Only with `node.debug_api = true`: 403 otherwise."
    if bearer:
        # A bearer token of mcp.tokens, or none from loopback when mcp.loopback_zone is set.
        op["security"] = [{"bearer": []}, {}]
    return op


def _stream_operation() -> dict[str, Any]:
    op = _operation(
        "The status page's live feed",
        (200, None, ""),
        {503: "Too many page clients (http.max_page_clients); retry after Retry-After"},
    )
    op["responses"]["200"] = {
        "description": "Server-Sent Events: `hello`, then `events` (a JSON array of events, "
        "tagged by `kind`) as they happen, or `resync` (re-read the APIs); a client that "
        "does not read is dropped",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
    return op


def _agent_module_operation() -> dict[str, Any]:
    op = _operation("The policy agent (WebAssembly, built from native/)", (200, None, ""))
    op["responses"]["200"] = {
        "description": "The module's bytes (no imports; exports alloc, dealloc, load_policies, "
        "evaluate, output_ptr, output_len, abi_version): docs/wasm.md",
        "content": {"application/wasm": {"schema": {"type": "string", "format": "binary"}}},
    }
    return op


def _paths() -> dict[str, dict[str, Any]]:
    s = api_schema
    block = _operation(
        "Cut (POST) or restore (DELETE) the link to a peer, both ways",
        (200, s.PeerBlock, "The link's new state"),
        {403: "The debug API is off, or the peer is unknown"},
        query={"peer": "The peer's node id"},
        debug=True,
    )
    tools = _operation(
        "Add (POST) or remove (DELETE) a runtime echo tool",
        (200, s.DebugTool, "The tool's new state"),
        {400: "`name` is missing", 403: "The debug API is off, or the zone is unknown"},
        query={"name": "The tool's name", "zone": "Its zone (default public)"},
        required=("name",),
        debug=True,
    )
    starting = {503: "The node is still starting (its immune system is not up): retry"}
    reads: dict[str, tuple[str, type[msgspec.Struct], Mapping[int, str]]] = {
        "/api/status": ("This node: identity, ports, peer counts", s.Status, {}),
        "/api/peers": ("The peers this node knows and their states", s.Peers, {}),
        "/api/tools": ("The mesh's tools as seen here, with each provider's state", s.Tools, {}),
        "/api/patterns": ("The pattern engine's patterns and their matches", s.Patterns, {}),
        "/api/vsm": ("This node's VSM systems S1–S5 and viability", s.Vsm, {}),
        "/api/policies": (
            "The immune policies this node holds, with their notes",
            s.Policies,
            starting,
        ),
        "/api/policy-agent/policies": (
            "The signed policy set for the policy agent: zones and the mitigations enforced here",
            s.PolicyAgentSet,
            starting,
        ),
        "/api/children": ("This node's child VSMs and their states", s.Children, {}),
        "/api/wasm/modules": (
            "The published WASM modules this node knows, whether it holds and runs each",
            s.WasmModules,
            {503: "The node is still starting: retry"},
        ),
        "/api/events": (
            "The node's last events (not tool calls) and the status page's stream counters",
            s.RecentEvents,
            {},
        ),
        "/api/audit/recent": ("The last committed audit entries", s.AuditRecent, starting),
    }
    who_may_spawn = {
        401: "No bearer token of mcp.tokens (nor the data dir's stdio token)",
        403: "The token's zone is below recursion.spawn_zone",
        503: "The node is not running yet, or the child could not be started or stopped",
    }
    who_may_admin = {
        401: "No bearer token (a loopback zone alone is not enough), or not one of mcp.tokens",
        403: "The token's zone is below http.admin_zone (or another node issued the policy)",
    }
    who_may_publish = {
        401: "No bearer token of mcp.tokens (nor the data dir's stdio token)",
        403: "The token's zone (a loopback client's: mcp.loopback_zone) is below edge.publish_zone",
    }
    planner_errors = {
        400: 'The body is not {"text": "..."} with 1 to 4096 characters',
        401: "No bearer token of mcp.tokens (and no loopback zone)",
        413: "The body is over 64 KiB",
        503: "The planner is not running yet, or busy (vsm.s4.max_concurrent)",
    }
    paths: dict[str, dict[str, Any]] = {
        path: {"get": _operation(summary, (200, struct, struct.__name__), errors)}
        for path, (summary, struct, errors) in reads.items()
    }
    paths["/api/children"]["post"] = _operation(
        "Spawn a child VSM (a vsmcpd subprocess with a delegated certificate)",
        (201, s.Child, "The child, starting"),
        {
            **who_may_spawn,
            400: "The body is not a JSON object with a string `name` (zone, config strings)",
            409: "A recursion limit (depth, children, descendants), a zone above the node's, "
            "or a bad name refuses the spawn",
            413: "The body is too large",
        },
        body=s.SpawnRequest,
        bearer=True,
    )
    paths["/api/wasm/modules"]["post"] = _operation(
        "Publish a WASM module: its bytes with a signed manifest, or with a manifest the "
        "node signs (its certificate needs the publisher role)",
        (200, s.WasmPublished, "Published: the node holds the bytes, the manifest replicates"),
        {
            **who_may_publish,
            400: "The body is not a JSON object, or `module` or `record` is not base64",
            403: "The token's zone is below edge.publish_zone; or refused (counted): a bad "
            "signature or issuer, bytes that do not match the manifest, a bad manifest, too "
            "large, or no publisher role; or (not counted) nothing to publish: no `module` "
            "with a `manifest`, and no `record`",
            413: "The body (its Content-Length, checked first) is over 4/3 of "
            "edge.max_module_bytes plus 1 MiB",
        },
        body=s.WasmPublish,
        bearer=True,
    )
    paths["/api/wasm/modules/{name}"] = {
        "delete": {
            **_operation(
                "Unpublish a module: revoke the manifests of it this node signed",
                (200, s.WasmUnpublished, "How many were revoked"),
                {**who_may_publish, 503: "The node is still starting: retry"},
                bearer=True,
            ),
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
        }
    }
    paths["/api/children/{name}"] = {
        "delete": {
            **_operation(
                "Stop a child VSM cleanly",
                (200, s.ChildStopped, "Stopped"),
                {**who_may_spawn, 404: "No child has that name"},
                bearer=True,
            ),
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
        }
    }
    return {
        **paths,
        "/api/algedonic": {
            "post": _operation(
                "Raise pain or pleasure on this node's algedonic channel",
                (202, s.SignalAccepted, "Queued on a lane (s5 above the threshold, else s3)"),
                {
                    400: "The body is not a JSON object or a field is wrong (`field`)",
                    401: "No bearer token of mcp.tokens (and no loopback zone)",
                    403: "The token's zone is below vsm.signal_zone",
                    413: "The body is over 16 KiB",
                    503: "The lane is full (`lane`)",
                },
                body=s.Signal,
                bearer=True,
            )
        },
        **{
            path: {
                "post": _operation(summary, answer, planner_errors, body=s.PlanRequest, bearer=True)
            }
            for path, summary, answer in (
                (
                    "/api/plan",
                    "System 4's plan for a request in words: the calls it would make (dry run)",
                    (200, s.Plan, "The plan (no steps: unsure, nothing fits, or refused)"),
                ),
                (
                    "/api/ask",
                    "Plan and run a request in words under the caller's zone, summarised",
                    (200, s.Answer, "The reply and each call's outcome"),
                ),
            )
        },
        "/api/policies/revocations": {
            "post": _operation(
                "Add a revocation record signed by the policy authority",
                (200, s.RevocationAnswer, "Whether the record was new"),
                {
                    400: 'The body is not {"record": "<base64>"}',
                    403: "The record's signature or issuer is refused",
                },
                body=s.RevocationRecord,
            )
        },
        "/api/policies/revoke": {
            "post": _operation(
                "Revoke a policy this node issued (signed with its key; it replicates)",
                (200, s.Revoked, "Revoked (replicates to the mesh)"),
                {
                    **who_may_admin,
                    400: "The body is not {issuer, id} (`field`)",
                    404: "No live policy of that issuer and id here (or no such node id)",
                    413: "The body is over 4 KiB",
                    503: "The node is still starting: retry",
                },
                body=s.RevokeRequest,
                bearer=True,
            )
        },
        "/api/admin": {
            "get": _operation(
                "Whether the bearer token may use the status page's admin actions",
                (200, s.AdminView, "It may: the caller's name and the actions"),
                who_may_admin,
                bearer=True,
            )
        },
        "/api/debug/block": {"post": block, "delete": block},
        "/api/debug/tools": {"post": tools, "delete": tools},
        "/api/debug/loop-fault": {
            "post": _operation(
                "Make a supervised loop fail once",
                (200, s.LoopFault, "Injected"),
                {403: "The debug API is off, or no loop has that name"},
                query={"name": "The loop's name"},
                debug=True,
            )
        },
        AGENT_MODULE_PATH: {"get": _agent_module_operation()},
        STREAM_PATH: {"get": _stream_operation()},
        OPENAPI_PATH: {"get": _operation("This document", (200, None, "The OpenAPI 3.1 document"))},
    }


@functools.cache
def openapi_document() -> bytes:
    """The document as JSON (built once: it does not change while the node runs)."""
    _, schemas = msgspec.json.schema_components(api_schema.BODIES, ref_template=_REF)
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "vsmcp node API",
            "version": __version__,
            "description": "The JSON API of one vsmcp node (loopback by default). See docs/api.md.",
        },
        "paths": _paths(),
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "tags": [{"name": DEBUG_TAG, "description": "Tests and benchmarks (node.debug_api)"}],
    }
    return msgspec.json.encode(document)
