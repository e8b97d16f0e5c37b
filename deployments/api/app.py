"""The FastAPI application of the HTTP API v1, built without Ray (the Ingress deployment passes its services;
``openapi_spec()`` builds it with none)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from deployments.metrics import HttpMetricsMiddleware
from deployments.web import router as web_router

from . import batches, events, health, jobs, preview, tenants, uploads
from .context import Services
from .problems import install_handlers, problem_responses
from .schemas import EXTRA_MODELS, REF_MARK

log = logging.getLogger("sonic.api")

API_VERSION = "1.0.0"
DESCRIPTION = """Lip-synced talking-head video from one portrait and a speech recording.

Every `/v1` route needs `Authorization: Bearer <api key>`. Errors are RFC 7807 `application/problem+json`.
See docs/api.md for examples, quotas, idempotency, Server-Sent Events and webhooks."""
TAGS = [
    {"name": "jobs", "description": "Create, follow, cancel jobs and fetch their results"},
    {"name": "uploads", "description": "Presigned S3 uploads for large inputs"},
    {"name": "batches", "description": "Many jobs in one call"},
    {"name": "preview", "description": "Face box and crop preview"},
    {"name": "tenant", "description": "Your tenant"},
    {"name": "health", "description": "Probes and metrics (no key)"},
]


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                       tags=TAGS)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in EXTRA_MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas.setdefault(model.__name__, schema)
    # FastAPI's default 422 body is not what this API sends: every 422 is a Problem
    for path in spec["paths"].values():
        for operation in path.values():
            if "422" in operation.get("responses", {}):
                operation["responses"]["422"] = problem_responses(422)[422]
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    spec["components"]["schemas"] = dict(sorted(schemas.items()))
    app.openapi_schema = _resolve_marks(spec)
    return app.openapi_schema


def _resolve_marks(node: Any) -> Any:
    if isinstance(node, dict):
        if REF_MARK in node:
            return {"$ref": f"#/components/schemas/{node[REF_MARK]}"}
        return {k: _resolve_marks(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_marks(v) for v in node]
    return node


def create_app(services: Services | None = None) -> FastAPI:
    app = FastAPI(title="Sonic Serve API", version=API_VERSION, description=DESCRIPTION, redoc_url=None)
    app.state.services = services
    install_handlers(app)
    for module in (health, uploads, jobs, events, batches, preview, tenants):
        app.include_router(module.router)
    app.include_router(web_router)
    app.add_middleware(HttpMetricsMiddleware)   # outermost: counts every answer, problems included
    app.openapi = lambda: _openapi(app)
    return app


def openapi_spec() -> dict[str, Any]:
    """The OpenAPI document, as served at /openapi.json (committed as docs/openapi.json)."""
    return create_app().openapi()
