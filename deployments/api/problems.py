"""RFC 7807 problem details: every error of the API is ``application/problem+json`` with a stable ``type``.

``{"type": "https://sonic-serve.dev/problems/<slug>", "title", "status", "detail", "instance",
"errors": [{"field", "message", "fix"}]}``; 429 and 503 carry ``Retry-After``. A client error is never
turned into a 5xx, and a 500 never shows internals (only a reference to the server log line).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.jobs import ParamError
from stages.media.errors import MediaError

log = logging.getLogger("sonic.api")

PROBLEM_BASE = "https://sonic-serve.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"

# slug -> (HTTP status, title). Slugs are part of the API: never rename one.
PROBLEMS: dict[str, tuple[int, str]] = {
    "bad_request": (400, "Bad request"),
    "malformed_json": (400, "Malformed JSON"),
    "unauthorized": (401, "Missing or invalid API key"),
    "not_found": (404, "Not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "idempotency_conflict": (409, "Idempotency-Key reused with a different request"),
    "idempotency_in_progress": (409, "A request with this Idempotency-Key is still being processed"),
    "job_not_succeeded": (409, "The job has no result yet"),
    "job_finished": (409, "The job has already finished"),
    "upload_expired": (410, "The upload has expired"),
    "payload_too_large": (413, "Request or file too large"),
    "unsupported_media_type": (415, "Unsupported content type"),
    "validation_error": (422, "The request does not match the schema"),
    "invalid_parameter": (422, "Invalid job parameter"),
    "invalid_media": (422, "The image or audio cannot be used"),
    "invalid_key": (422, "Not an upload key"),
    "upload_missing": (422, "The upload holds no file"),
    "concurrency_limit": (429, "Too many running jobs"),
    "queue_limit": (429, "Too many queued jobs"),
    "rate_limited": (429, "Too many submissions"),
    "internal_error": (500, "Internal server error"),
    "unavailable": (503, "Service unavailable"),
    "queue_full": (503, "The job queue is full"),
    "storage_unavailable": (503, "Storage unavailable"),
}
_BY_STATUS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
              413: "payload_too_large", 415: "unsupported_media_type", 422: "validation_error",
              503: "unavailable"}


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these status codes, listing the slugs each may carry."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        slugs = sorted(slug for slug, (status, _) in PROBLEMS.items() if status == code)
        out[code] = {"description": "Problem: " + ", ".join(slugs), "content": {
            PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    return out


def problem_type(slug: str) -> str:
    return PROBLEM_BASE + slug


def field_error(field: str, message: str, fix: str) -> dict[str, str]:
    return {"field": field, "message": message, "fix": fix}


class Problem(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(self, slug: str, detail: str, errors: list[dict[str, str]] | None = None,
                 status: int | None = None, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None):
        self.slug = slug
        self.status = status or PROBLEMS.get(slug, (500, ""))[0]
        self.title = PROBLEMS.get(slug, (0, slug.replace("_", " ").capitalize()))[1]
        self.detail = detail
        self.errors = errors or []
        self.headers = headers or {}
        self.extra = extra or {}
        super().__init__(f"{self.status} {slug}: {detail}")

    def body(self, instance: str | None = None) -> dict[str, Any]:
        return {"type": problem_type(self.slug), "title": self.title, "status": self.status, "detail": self.detail,
                "instance": instance, "errors": self.errors, **self.extra}

    def response(self, instance: str | None = None) -> JSONResponse:
        return JSONResponse(self.body(instance), status_code=self.status, headers=self.headers,
                            media_type=PROBLEM_MEDIA_TYPE)


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, int(round(seconds))))}


def param_problem(exc: ParamError) -> Problem:
    if exc.message.startswith("unknown parameter"):
        fix = f"remove `{exc.field}`; the parameters are listed in docs/api.md"
    elif exc.message.startswith("must"):
        fix = f"change `{exc.field}`: it {exc.message}"
    else:
        fix = f"send a valid `{exc.field}` (see the parameter table in docs/api.md)"
    return Problem("invalid_parameter", f"`{exc.field}`: {exc.message}", [field_error(exc.field, exc.message, fix)])


def media_problem(exc: MediaError) -> Problem:
    return Problem("invalid_media", f"{exc.field}: {exc.message}. Fix: {exc.fix}.",
                   [field_error(exc.field, exc.message, exc.fix)])


def _loc_name(loc: tuple | list) -> str:
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def validation_problem(errors: list[dict[str, Any]]) -> Problem:
    """From pydantic / FastAPI validation errors. A body that is not JSON at all is a 400."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return Problem("malformed_json", "the request body is not valid JSON",
                       [field_error("body", "not valid JSON", "send a JSON object with Content-Type: "
                                                              "application/json")])
    out = []
    for e in errors:
        field, kind = _loc_name(e.get("loc", ())), e.get("type", "")
        if kind == "extra_forbidden":
            fix = f"remove `{field}`; it is not part of this request"
        elif kind == "missing":
            fix = f"add `{field}`"
        else:
            fix = f"correct `{field}` (see /openapi.json)"
        out.append(field_error(field, str(e.get("msg", "invalid")), fix))
    fields = ", ".join(dict.fromkeys(e["field"] for e in out))
    return Problem("validation_error", f"invalid request: {fields}", out)


def install_handlers(app: FastAPI) -> None:
    def respond(request: Request, problem: Problem) -> JSONResponse:
        return problem.response(request.url.path)

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return respond(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug = _BY_STATUS.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal_error")
        detail = exc.detail if isinstance(exc.detail, str) else PROBLEMS[slug][1]
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        return respond(request, Problem(slug, detail, status=exc.status_code, headers=dict(exc.headers or {})))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(request, validation_problem(list(exc.errors())))

    @app.exception_handler(ParamError)
    async def _param(request: Request, exc: ParamError) -> JSONResponse:
        return respond(request, param_problem(exc))

    @app.exception_handler(MediaError)
    async def _media(request: Request, exc: MediaError) -> JSONResponse:
        return respond(request, media_problem(exc))

    app.add_middleware(CatchAll)


class CatchAll:
    """Pure ASGI middleware: any other exception becomes a problem response (503 for storage outages, else a
    500 naming only a log reference). Unlike an ``Exception`` handler it does not re-raise afterwards."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if started:
                raise
            request = Request(scope)
            problem = storage_problem(exc)
            if problem is None:
                ref = secrets.token_hex(6)
                log.error("unhandled error on %s %s (ref %s)", request.method, request.url.path, ref, exc_info=exc)
                problem = Problem("internal_error", f"an internal error occurred (reference {ref}); retry later or "
                                                    "report the reference")
            await problem.response(request.url.path)(scope, receive, send)


def storage_problem(exc: BaseException) -> Problem | None:
    """S3 unreachable or failing after the storage layer's retries: 503, worth a retry."""
    import urllib3
    from minio.error import S3Error, ServerError

    if isinstance(exc, S3Error | ServerError | urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
        log.warning("storage error: %s: %s", type(exc).__name__, exc)
        return Problem("storage_unavailable", "object storage is not answering; retry shortly",
                       headers=retry_after(5))
    return None
