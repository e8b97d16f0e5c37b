"""``/v1/batches``: many jobs from uploaded files in one call, with a result per item.

Items are processed in order, each exactly like ``POST /v1/jobs`` with JSON; a rejected item (bad key,
parameter or media, or refused admission) does not stop the others. The batch record
(``batches/{tenant}/{batch_id}.json``) keeps every item's job id or problem.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from deployments.jobs import JobParams, ParamError, now
from deployments.storage import Keys
from stages.media.errors import MediaError

from . import idempotency
from .context import ID_RE, Svc, Who, not_found, read_json, s3
from .jobs import draft_from_keys
from .problems import Problem, media_problem, param_problem, problem_responses
from .schemas import Batch, BatchCreate
from .submit import accept
from .views import job_view

router = APIRouter(tags=["batches"])

_BODY = {"parameters": [idempotency.OPENAPI_PARAMETER], "requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/BatchCreate"}}}}}
_MEDIA_FIELDS = {"image": "image_key", "audio": "audio_key"}


def new_batch_id() -> str:
    return f"b{int(time.time() * 1000):011x}{secrets.token_hex(6)}"


def _item_problem(exc: Exception, index: int) -> Problem:
    """A per-item problem whose fields name the item (``items[2].params.steps``)."""
    prefix = f"items[{index}]."
    if isinstance(exc, ParamError):
        problem = param_problem(exc)
        problem.errors = [{**e, "field": prefix + "params." + e["field"]} for e in problem.errors]
    elif isinstance(exc, MediaError):
        problem = media_problem(exc)
        problem.errors = [{**e, "field": e["field"] if e["field"].startswith(prefix)
                           else prefix + _MEDIA_FIELDS.get(e["field"], "params." + e["field"])}
                          for e in problem.errors]
    else:
        assert isinstance(exc, Problem)
        problem = exc
    return problem


@router.post("/v1/batches", status_code=202, response_model=Batch, openapi_extra=_BODY,
             summary="Create many jobs from uploaded files",
             responses={200: {"model": Batch, "description": "Replay of an earlier request with this Idempotency-Key"},
                        **problem_responses(400, 401, 409, 413, 415, 422, 503)})
async def create_batch(request: Request, services: Svc, who: Who) -> JSONResponse:
    key = idempotency.header_key(request)
    body, value = await read_json(request, BatchCreate)
    async with idempotency.claim(services, who.tenant, key, "batch", idempotency.fingerprint("batch", [value])) as c:
        if c.replay:
            return JSONResponse(await batch_view(services, who.tenant, c.replay), status_code=200,
                                headers={"Location": f"/v1/batches/{c.replay}", "Idempotent-Replayed": "true"})
        # parameters that break the schema refuse the whole batch (as for one job); keys and media stay per item
        for index, item in enumerate(body.items):
            try:
                JobParams.from_dict(item.params)
            except ParamError as exc:
                raise _item_problem(exc, index) from None
        batch_id = new_batch_id()
        cache: dict = {}
        items: list[dict[str, Any]] = []
        views: list[dict[str, Any]] = []
        for index, item in enumerate(body.items):
            try:
                draft = await draft_from_keys(services, who.tenant, item, f"items[{index}].", cache)
                record = await accept(services, who.tenant, draft, {"batch_id": batch_id, "batch_index": index})
            except (Problem, ParamError, MediaError) as exc:
                problem = _item_problem(exc, index)
                items.append({"index": index, "status": problem.status, "error": problem.body(request.url.path)})
                views.append(items[-1])
                continue
            items.append({"index": index, "status": 202, "job_id": record["id"]})
            views.append({"index": index, "status": 202, "job": job_view(services, record)})
        accepted = sum(1 for i in items if i["status"] == 202)
        batch = {"batch_id": batch_id, "tenant": who.tenant, "created_at": now(), "accepted": accepted,
                 "rejected": len(items) - accepted, "items": items}
        await s3(services.storage.put_json, Keys.batch(who.tenant, batch_id), batch)
        await c.complete(batch_id)
    public = {k: v for k, v in batch.items() if k != "tenant"}
    return JSONResponse({**public, "items": views}, status_code=202, headers={"Location": f"/v1/batches/{batch_id}"})


async def batch_view(services, tenant: str, batch_id: str) -> dict[str, Any]:
    if not ID_RE.match(batch_id):
        raise not_found("batch", batch_id)
    batch = await s3(services.storage.get_json, Keys.batch(tenant, batch_id))
    if batch is None:
        raise not_found("batch", batch_id)
    ids = [item.get("job_id") for item in batch["items"]]
    records = await asyncio.gather(*(s3(services.storage.get_json, Keys.job(tenant, i)) for i in ids if i))
    by_id = {r["id"]: r for r in records if r}
    states: dict[str, int] = {}
    items = []
    for item in batch["items"]:
        record = by_id.get(item.get("job_id") or "")
        if record is not None:
            states[record["state"]] = states.get(record["state"], 0) + 1
            items.append({"index": item["index"], "status": item["status"], "job": job_view(services, record)})
        else:
            items.append({k: v for k, v in item.items() if k != "job_id"})
    public = {k: v for k, v in batch.items() if k != "tenant"}
    return {**public, "items": items, "states": states}


@router.get("/v1/batches/{batch_id}", response_model=Batch, summary="A batch and the current state of its jobs",
            responses=problem_responses(401, 404))
async def get_batch(batch_id: str, services: Svc, who: Who) -> JSONResponse:
    return JSONResponse(await batch_view(services, who.tenant, batch_id))
