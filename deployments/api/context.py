"""What every route needs: the replica's services, the caller's tenant, S3 calls off the event loop, and
request bodies read with limits."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError

from deployments.auth import KeyRing, Principal
from deployments.config import AppConfig
from deployments.jobs import ParamError
from deployments.storage import Keys, Storage
from stages.media.errors import MediaError

from .problems import Problem, field_error, retry_after, validation_problem

log = logging.getLogger("sonic.api")

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

MAX_JSON_BYTES = 4 << 20
MAX_IMAGE_BYTES = 25 << 20
MAX_AUDIO_BYTES = 200 << 20
MANAGER_TIMEOUT_S = 30.0
ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class Services:
    """One per Ingress replica (tests build one in-process)."""

    config: AppConfig
    storage: Storage
    signer: Storage            # signs URLs for clients (public S3 endpoint)
    keys: KeyRing
    manager: Any = None        # JobManager handle
    image_encoder: Any = None  # ImageEncoder handle (face preview)


def get_services(request: Request) -> Services:
    services = getattr(request.app.state, "services", None)
    if services is None:
        raise Problem("unavailable", "the API is starting; retry shortly", headers=retry_after(2))
    return services


_bearer = HTTPBearer(auto_error=False, description="A tenant API key: `Authorization: Bearer <key>`")


async def get_principal(services: Annotated[Services, Depends(get_services)],
                        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or not credentials.credentials.strip():
        raise Problem("unauthorized", "send your API key as `Authorization: Bearer <key>`",
                      [field_error("Authorization", "missing", "add the header `Authorization: Bearer <key>`")],
                      headers=challenge)
    found = await asyncio.to_thread(services.keys.lookup, credentials.credentials.strip())
    if found is None:
        raise Problem("unauthorized", "unknown or revoked API key",
                      [field_error("Authorization", "unknown or revoked key", "use a current key of your tenant")],
                      headers=challenge)
    return found


Svc = Annotated[Services, Depends(get_services)]
Who = Annotated[Principal, Depends(get_principal)]


async def s3(fn: Callable[..., T], *args: Any) -> T:
    """A blocking storage call in a worker thread."""
    return await asyncio.to_thread(fn, *args)


def not_found(what: str, ident: str) -> Problem:
    return Problem("not_found", f"no {what} {ident}")


async def load_job(services: Services, tenant: str, job_id: str) -> dict[str, Any]:
    """The tenant's job record; 404 for unknown ids and for other tenants' jobs alike."""
    if not ID_RE.match(job_id):
        raise not_found("job", job_id)
    record = await s3(services.storage.get_json, Keys.job(tenant, job_id))
    if record is None:
        raise not_found("job", job_id)
    return record


async def call_handle(handle: Any, deployment: str, method: str, *args: Any,
                      timeout_s: float = MANAGER_TIMEOUT_S) -> Any:
    """Call a deployment method; an error of the request itself (ParamError, MediaError) keeps its 4xx,
    anything else (replica gone, timeout) is a 503."""
    from deployments.common import root_cause

    if handle is None:
        raise Problem("unavailable", f"{deployment} is not connected", headers=retry_after(5))

    async def call() -> Any:
        return await getattr(handle, method).remote(*args)

    try:
        return await asyncio.wait_for(call(), timeout_s)
    except Exception as exc:
        cause = root_cause(exc)
        if isinstance(cause, ParamError | MediaError):
            raise cause from None
        log.warning("%s.%s failed: %s: %s", deployment, method, type(cause).__name__, cause)
        raise Problem("unavailable", f"{deployment} is unavailable; retry shortly",
                      headers=retry_after(5)) from None


async def call_manager(services: Services, method: str, *args: Any) -> Any:
    return await call_handle(services.manager, "the job manager", method, *args)


# -- bodies ------------------------------------------------------------------------------------------------


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def check_length(request: Request, limit: int) -> None:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise Problem("payload_too_large", f"the request body is {int(length)} bytes, over the {limit} byte limit",
                      [field_error("body", "too large", f"send at most {limit >> 20} MiB")])


async def read_body(request: Request, limit: int) -> bytes:
    check_length(request, limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem("payload_too_large", f"the request body is over the {limit} byte limit",
                          [field_error("body", "too large", f"send at most {limit >> 20} MiB")])
        chunks.append(chunk)
    return b"".join(chunks)


def require_json(request: Request) -> None:
    kind = content_type(request)
    if kind != "application/json" and not kind.endswith("+json"):
        raise Problem("unsupported_media_type", f"expected application/json, got {kind or 'no Content-Type'}",
                      [field_error("Content-Type", f"{kind or 'missing'} is not accepted here",
                                   "send the body as JSON with `Content-Type: application/json`")])


async def read_json(request: Request, model: type[M], limit: int = MAX_JSON_BYTES) -> tuple[M, Any]:
    """The body validated as ``model``, and the raw JSON value (for idempotency fingerprints)."""
    require_json(request)
    raw = await read_body(request, limit)
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Problem("malformed_json", f"the request body is not valid JSON ({exc})",
                      [field_error("body", "not valid JSON", "send a JSON object")]) from None
    except RecursionError:
        raise Problem("malformed_json", "the request body is nested too deeply",
                      [field_error("body", "nested too deeply", "send at most a few levels of nesting")]) from None
    if not isinstance(value, dict):
        raise Problem("validation_error", "the request body must be a JSON object",
                      [field_error("body", f"got {type(value).__name__}", "send a JSON object")])
    try:
        return model.model_validate(value), value
    except ValidationError as exc:
        raise validation_problem(list(exc.errors())) from None
