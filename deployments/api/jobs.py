"""``/v1/jobs``: submit (multipart or JSON by upload keys, idempotent), read, list, cancel, results."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse

from deployments.jobs import SUCCEEDED, TERMINAL
from deployments.storage import Keys
from stages.media.errors import MediaError

from . import idempotency
from .context import ID_RE, Services, Svc, Who, call_manager, content_type, load_job, read_json, s3
from .problems import Problem, field_error, problem_responses
from .schemas import Job, JobCreate, JobList, JobState
from .submit import Draft, accept, make_draft, read_form
from .uploads import fetch_upload
from .views import OUTPUTS, job_view

router = APIRouter(tags=["jobs"])

LIST_SCAN_MAX = 1000   # records read per page at most when filtering by state

_SUBMIT_BODY = {"parameters": [idempotency.OPENAPI_PARAMETER], "requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"$ref": "#/components/schemas/JobForm"}},
    "application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}}}}}


async def draft_from_keys(services: Services, tenant: str, body: JobCreate, prefix: str = "",
                          cache: dict | None = None) -> Draft:
    """A draft from the caller's uploads. Parameters are checked first (cheap), then keys, then media."""
    from .submit import parse_params

    await parse_params(services, body.params)
    image = await fetch_upload(services, tenant, body.image_key, prefix + "image_key", "image", cache)
    audio = await fetch_upload(services, tenant, body.audio_key, prefix + "audio_key", "audio", cache)
    try:
        return await make_draft(services, body.params, image.data, audio.data,
                                {"image": image.filename, "audio": audio.filename})
    except MediaError as exc:   # name the request's field: the upload key, not the file part
        if exc.field in ("image", "audio"):
            raise MediaError(f"{prefix}{exc.field}_key", exc.message, exc.fix) from None
        raise


def _accepted(services: Services, record: dict[str, Any], replay: bool) -> JSONResponse:
    headers = {"Location": f"/v1/jobs/{record['id']}"}
    if replay:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(job_view(services, record), status_code=200 if replay else 202, headers=headers)


@router.post("/v1/jobs", status_code=202, response_model=Job, openapi_extra=_SUBMIT_BODY,
             summary="Create a job from a portrait and a speech recording",
             responses={200: {"model": Job, "description": "Replay of an earlier request with this Idempotency-Key"},
                        **problem_responses(400, 401, 404, 409, 410, 413, 415, 422, 429, 503)})
async def create_job_route(request: Request, services: Svc, who: Who) -> JSONResponse:
    key = idempotency.header_key(request)
    kind = content_type(request)
    if kind == "multipart/form-data":
        raw, files, names = await read_form(request)
        print_ = idempotency.fingerprint("job", [raw, files["image"], files["audio"]])
        body = None
    elif kind == "application/json" or kind.endswith("+json"):
        body, value = await read_json(request, JobCreate)
        print_ = idempotency.fingerprint("job", [value])
    else:
        raise Problem("unsupported_media_type",
                      f"send multipart/form-data or application/json, not {kind or 'nothing'}",
                      [field_error("Content-Type", f"{kind or 'missing'} is not accepted",
                                   "upload files as multipart/form-data, or send upload keys as JSON")])
    async with idempotency.claim(services, who.tenant, key, "job", print_) as claim:
        if claim.replay:
            record = await load_job(services, who.tenant, claim.replay)
            return _accepted(services, record, replay=True)
        if body is None:
            draft = await make_draft(services, raw, files["image"], files["audio"], names)
        else:
            draft = await draft_from_keys(services, who.tenant, body)
        record = await accept(services, who.tenant, draft, {"idempotency_key": key} if key else None)
        await claim.complete(record["id"])
    return _accepted(services, record, replay=False)


@router.get("/v1/jobs", response_model=JobList, summary="Your jobs, newest first",
            responses=problem_responses(401, 422))
async def list_jobs(services: Svc, who: Who, state: JobState | None = None,
                    limit: Annotated[int, Query(ge=1, le=100)] = 20,
                    cursor: Annotated[str | None, Query(pattern=ID_RE.pattern, max_length=64,
                                                        description="`next_cursor` of the previous page")] = None,
                    ) -> dict[str, Any]:
    """Job ids are time-ordered, so newest first is descending id order; the cursor is the last id looked at.
    With ``state``, at most 1000 records are read per page (the page may then be short, with a cursor)."""
    prefix = Keys.jobs(who.tenant)
    objects = await s3(services.storage.list, prefix)
    ids = sorted((o.key[len(prefix):-len(".json")] for o in objects if o.key.endswith(".json")), reverse=True)
    if cursor:
        ids = [i for i in ids if i < cursor]
    jobs: list[dict[str, Any]] = []
    pos = 0
    while pos < len(ids) and len(jobs) < limit and pos < LIST_SCAN_MAX:
        batch = ids[pos:pos + (limit - len(jobs) if state is None else limit)]
        records = await asyncio.gather(*(s3(services.storage.get_json, Keys.job(who.tenant, i)) for i in batch))
        for record in records:
            pos += 1
            if record is not None and (state is None or record.get("state") == state):
                jobs.append(job_view(services, record))
                if len(jobs) == limit:
                    break
    return {"jobs": jobs, "next_cursor": ids[pos - 1] if pos < len(ids) else None}


@router.get("/v1/jobs/{job_id}", response_model=Job, summary="A job's state, progress and result links",
            responses=problem_responses(401, 404))
async def get_job(job_id: str, services: Svc, who: Who) -> JSONResponse:
    return JSONResponse(job_view(services, await load_job(services, who.tenant, job_id)))


@router.delete("/v1/jobs/{job_id}", response_model=Job, summary="Cancel a queued or running job",
               responses=problem_responses(401, 404, 409, 503))
async def cancel_job(job_id: str, services: Svc, who: Who) -> JSONResponse:
    record = await load_job(services, who.tenant, job_id)
    if record["state"] in TERMINAL:
        raise _finished(job_id, record["state"])
    answer = await call_manager(services, "cancel", who.tenant, job_id)
    record = await load_job(services, who.tenant, job_id)
    if not answer.get("cancelled") and record["state"] in TERMINAL and record["state"] != "cancelled":
        raise _finished(job_id, record["state"])
    view = job_view(services, record)
    if view["state"] not in TERMINAL and answer.get("state"):
        view["state"] = answer["state"]
    return JSONResponse(view, status_code=200)


def _finished(job_id: str, state: str) -> Problem:
    return Problem("job_finished", f"job {job_id} is already {state}",
                   [field_error("job_id", f"the job is {state}", "nothing to cancel")], extra={"state": state})


async def _redirect(services: Services, tenant: str, job_id: str, key_name: str) -> RedirectResponse:
    record = await load_job(services, tenant, job_id)
    if record["state"] != SUCCEEDED:
        hint = ("it will never have one; see its `error`" if record["state"] in TERMINAL
                else f"wait for state succeeded (GET /v1/jobs/{job_id}/events)")
        raise Problem("job_not_succeeded", f"job {job_id} is {record['state']}: {hint}",
                      [field_error("job_id", f"the job is {record['state']}", hint)],
                      extra={"state": record["state"]})
    key = (record.get("output") or {}).get(key_name)
    if not key:
        raise Problem("not_found", f"job {job_id} has no {key_name.removesuffix('_key')}")
    suffix = OUTPUTS[key_name][1]
    url = services.signer.presigned_get(key, services.config.presign_expiry_s, job_id + suffix)
    return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})


_REDIRECT_DOC = {302: {"description": "Redirect to a presigned S3 GET (valid `presign_expiry_s`)"},
                 **problem_responses(401, 404, 409)}


@router.get("/v1/jobs/{job_id}/result", status_code=302, response_class=RedirectResponse, responses=_REDIRECT_DOC,
            summary="The MP4 (302 to a presigned URL)")
async def get_result(job_id: str, services: Svc, who: Who) -> RedirectResponse:
    return await _redirect(services, who.tenant, job_id, "video_key")


@router.get("/v1/jobs/{job_id}/poster", status_code=302, response_class=RedirectResponse, responses=_REDIRECT_DOC,
            summary="The poster JPEG (302 to a presigned URL)")
async def get_poster(job_id: str, services: Svc, who: Who) -> RedirectResponse:
    return await _redirect(services, who.tenant, job_id, "poster_key")


@router.get("/v1/jobs/{job_id}/metadata", status_code=302, response_class=RedirectResponse,
            responses=_REDIRECT_DOC, summary="The metadata JSON (302 to a presigned URL)")
async def get_metadata(job_id: str, services: Svc, who: Who) -> RedirectResponse:
    return await _redirect(services, who.tenant, job_id, "metadata_key")

