"""node.http.openapi: the document lists exactly the `/api/*` routes and is OpenAPI 3.1."""

from __future__ import annotations

import json
from typing import Any, cast

from openapi_spec_validator import validate

from vsmcp.node.http.openapi import OPENAPI_PATH, openapi_document
from vsmcp.node.http.server import NodeView, build_app

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


def _document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(openapi_document())
    return document


def test_the_document_is_valid_openapi_3_1() -> None:
    document = _document()
    assert document["openapi"].startswith("3.1.")
    validate(document)  # raises on any violation of the OpenAPI 3.1 meta-schema


def test_every_api_route_is_in_the_document_and_nothing_else() -> None:
    # The routes only hold the node; none is called here.
    app = build_app(cast(NodeView, object()))
    routes = {
        (route.resource.canonical, route.method.lower())
        for route in app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/api/")
        and route.method != "HEAD"  # aiohttp adds HEAD to every GET
    }
    documented = {
        (path, method)
        for path, item in _document()["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    assert (OPENAPI_PATH, "get") in routes
    assert documented == routes


def test_every_documented_error_answer_is_the_error_object() -> None:
    for item in _document()["paths"].values():
        for operation in item.values():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}
