"""HTTP ingress: a FastAPI app inside Serve (``@serve.ingress``).

Minimal surface for now; the full LMS API (presigned uploads, idempotency keys, SSE, webhooks, tenants and
quotas) adds routes to :data:`api` and fields to the job record without changing this shape:

    GET  /healthz                   liveness (and whether S3 answers)
    POST /v1/jobs                   multipart: ``image``, ``audio`` files + parameters as form fields
                                    (or one ``params`` JSON field) -> 202 and the job record
    GET  /v1/jobs                   the tenant's most recent jobs
    GET  /v1/jobs/{id}              the job record: state, stage, progress (step k/N), output, error
    GET  /v1/jobs/{id}/result       the MP4 (``?redirect=1``: 307 to a presigned S3 URL)

Every /v1 route needs ``Authorization: Bearer <api key>``. Keys are looked up by their SHA-256 in S3 and
cached for a minute in the replica.
"""

# No `from __future__ import annotations`: Serve re-creates the route methods and FastAPI must still see
# the real `Request` type, not a string.
import asyncio
import json
import logging
import time
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from ray import serve

from deployments.auth import Principal, authenticate
from deployments.config import AppConfig
from deployments.jobs import FAILED, SUCCEEDED, TERMINAL, JobParams, ParamError, create_job, public_view
from deployments.storage import Keys, Storage

log = logging.getLogger("sonic.ingress")

MAX_IMAGE_BYTES = 25 << 20
MAX_AUDIO_BYTES = 200 << 20
KEY_CACHE_S = 60.0

api = FastAPI(title="Sonic Serve", version="0.1.0",
              description="Lip-synced talking-head video from one portrait and a speech recording.")


def _error(status: int, code: str, message: str, **extra: Any) -> HTTPException:
    return HTTPException(status_code=status, detail={"code": code, "message": message, **extra})


class _KeyCache:
    def __init__(self, storage: Storage):
        self.storage = storage
        self.entries: dict[str, tuple[float, Principal | None]] = {}

    async def lookup(self, key: str) -> Principal | None:
        hit = self.entries.get(key)
        if hit and time.monotonic() - hit[0] < KEY_CACHE_S:
            return hit[1]
        principal = await asyncio.to_thread(authenticate, self.storage, key)
        if len(self.entries) > 10_000:
            self.entries.clear()
        self.entries[key] = (time.monotonic(), principal)
        return principal


async def _read_upload(form, name: str, limit: int) -> tuple[bytes, str | None]:
    upload = form.get(name)
    if upload is None or isinstance(upload, str):
        raise _error(422, "invalid_request", f"missing file field `{name}`", field=name)
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise _error(413, "too_large", f"`{name}` is over {limit >> 20} MiB", field=name)
    if not data:
        raise _error(422, "invalid_request", f"`{name}` is empty", field=name)
    return data, upload.filename


def _bearer(request: Request) -> str:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise _error(401, "unauthorized", "send `Authorization: Bearer <api key>`")
    return key.strip()


@serve.deployment(name="Ingress", max_ongoing_requests=512, graceful_shutdown_timeout_s=60,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 64},
                  ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class Ingress:
    def __init__(self, config: dict[str, Any], manager):
        self.config = AppConfig(**config)
        self.storage = self.config.storage()
        self.storage.ensure_bucket()
        self.manager = manager
        self.keys = _KeyCache(self.storage)

    async def _who(self, request: Request) -> Principal:
        found = await self.keys.lookup(_bearer(request))
        if found is None:
            raise _error(401, "unauthorized", "unknown or revoked API key")
        return found

    async def _load(self, who: Principal, job_id: str) -> dict[str, Any]:
        if not job_id.isalnum() or len(job_id) > 64:
            raise _error(404, "not_found", f"no job {job_id}")
        record = await asyncio.to_thread(self.storage.get_json, Keys.job(who.tenant, job_id))
        if record is None:
            raise _error(404, "not_found", f"no job {job_id}")
        return record

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        s3 = await asyncio.to_thread(self.storage.ping)
        return {"status": "ok", "s3": s3}

    @api.post("/v1/jobs", status_code=202)
    async def submit_job(self, request: Request) -> JSONResponse:
        who = await self._who(request)
        form = await request.form(max_files=2, max_fields=64)
        raw: dict[str, Any] = {}
        if isinstance(form.get("params"), str):
            try:
                raw.update(json.loads(form["params"]))
            except json.JSONDecodeError as exc:
                raise _error(422, "invalid_request", f"`params` is not JSON: {exc}", field="params") from None
        raw.update({k: v for k, v in form.items() if isinstance(v, str) and k != "params"})
        try:
            params = JobParams.from_dict(raw)
        except ParamError as exc:
            raise _error(422, "invalid_parameter", exc.message, field=exc.field) from None
        image, image_name = await _read_upload(form, "image", MAX_IMAGE_BYTES)
        audio, audio_name = await _read_upload(form, "audio", MAX_AUDIO_BYTES)
        record = await asyncio.to_thread(create_job, self.storage, who.tenant, params, image, audio,
                                         image_name, audio_name)
        try:
            await self.manager.submit.remote(who.tenant, record["id"])
        except Exception as exc:
            log.exception("manager refused job %s", record["id"])
            record.update(state=FAILED, error={"type": "unavailable", "message": f"job manager unavailable: {exc}"})
            await asyncio.to_thread(self.storage.put_json, Keys.job(who.tenant, record["id"]), record)
            raise _error(503, "unavailable", "the job manager is unavailable; retry later") from None
        return JSONResponse(public_view(record), status_code=202,
                            headers={"Location": f"/v1/jobs/{record['id']}"})

    @api.get("/v1/jobs")
    async def list_jobs(self, request: Request, limit: int = 20) -> dict[str, Any]:
        who = await self._who(request)
        objects = await asyncio.to_thread(self.storage.list, Keys.jobs(who.tenant))
        newest = sorted(objects, key=lambda o: o.key, reverse=True)[:max(1, min(limit, 100))]
        records = await asyncio.gather(*(asyncio.to_thread(self.storage.get_json, o.key) for o in newest))
        return {"jobs": [public_view(r) for r in records if r]}

    @api.get("/v1/jobs/{job_id}")
    async def get_job(self, job_id: str, request: Request) -> dict[str, Any]:
        return public_view(await self._load(await self._who(request), job_id))

    @api.get("/v1/jobs/{job_id}/result")
    async def get_result(self, job_id: str, request: Request, redirect: bool = False):
        record = await self._load(await self._who(request), job_id)
        if record["state"] != SUCCEEDED:
            status = 409 if record["state"] not in TERMINAL else 410
            raise _error(status, "not_ready" if status == 409 else "no_result",
                         f"job {job_id} is {record['state']}", state=record["state"], error=record.get("error"))
        key = record["output"]["video_key"]
        if redirect:
            url = await asyncio.to_thread(self.storage.presigned_get, key, 900)
            return RedirectResponse(url, status_code=307)
        return StreamingResponse(self.storage.stream(key), media_type="video/mp4",
                                 headers={"Content-Disposition": f'attachment; filename="{job_id}.mp4"',
                                          "Content-Length": str(record["output"]["bytes"])})
