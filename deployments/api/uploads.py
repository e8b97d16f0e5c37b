"""Presigned uploads: ``POST /v1/uploads`` hands out PUT URLs for tenant-scoped keys; jobs then name the keys.

An upload is ``uploads/{tenant}/{upload_id}/{image|audio}`` plus its record ``upload.json`` (``expires_at``).
Keys are checked against a strict pattern and the caller's tenant before anything is read, so a job can only
ever use the caller's own uploads.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from deployments.jobs import now
from deployments.storage import Keys

from .context import MAX_AUDIO_BYTES, MAX_IMAGE_BYTES, Services, Svc, Who, read_json, s3
from .problems import Problem, field_error, problem_responses
from .schemas import Upload, UploadCreate

router = APIRouter(tags=["uploads"])

KEY_RE = re.compile(r"^uploads/(?P<tenant>[a-z0-9][a-z0-9-]{0,62})/(?P<upload>u[0-9a-f]{23})/(?P<name>image|audio)$")
RECORD = "upload.json"
LIMITS = {"image": MAX_IMAGE_BYTES, "audio": MAX_AUDIO_BYTES}


def new_upload_id() -> str:
    """Time-ordered like job ids: ``u`` + 11 hex digits of milliseconds + 12 random hex digits."""
    return f"u{int(time.time() * 1000):011x}{secrets.token_hex(6)}"


@router.post("/v1/uploads", status_code=201, response_model=Upload,
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": {"$ref": "#/components/schemas/UploadCreate"}}}}},
             summary="Presigned PUT URLs for a portrait and/or a speech recording",
             responses=problem_responses(400, 401, 413, 415, 422, 503))
async def create_upload(request: Request, services: Svc, who: Who) -> JSONResponse:
    body, _ = await read_json(request, UploadCreate)
    files = {name: spec for name, spec in (("image", body.image), ("audio", body.audio)) if spec is not None}
    if not files:
        raise Problem("validation_error", "ask for at least one of `image` and `audio`",
                      [field_error("image", "missing", 'send {"image": {}, "audio": {}}')])
    upload_id, expiry = new_upload_id(), services.config.presign_expiry_s
    record: dict[str, Any] = {"id": upload_id, "tenant": who.tenant, "created_at": now(),
                              "expires_at": round(now() + expiry, 3), "files": {}}
    response: dict[str, Any] = {"upload_id": upload_id, "expires_at": record["expires_at"],
                                "image": None, "audio": None}
    for name, spec in files.items():
        key = Keys.upload(who.tenant, upload_id, name)
        record["files"][name] = {"key": key, "filename": spec.filename, "content_type": spec.content_type}
        response[name] = {"key": key, "url": services.signer.presigned_put(key, expiry), "method": "PUT",
                          "headers": {"Content-Type": spec.content_type} if spec.content_type else {}}
    await s3(services.storage.put_json, Keys.upload(who.tenant, upload_id, RECORD), record)
    return JSONResponse(response, status_code=201)


@dataclass
class Fetched:
    data: bytes
    filename: str | None


async def fetch_upload(services: Services, tenant: str, key: str, field: str, kind: str,
                       cache: dict[str, Fetched] | None = None) -> Fetched:
    """The bytes of the caller's upload ``key`` (``kind`` image or audio), named ``field`` in errors."""
    matched = KEY_RE.match(key)
    if matched is None or matched["name"] != kind:
        raise Problem("invalid_key", f"`{field}` is not an {kind} upload key",
                      [field_error(field, "not a key from POST /v1/uploads",
                                   f"pass the `{kind}.key` returned by POST /v1/uploads")])
    if cache is not None and key in cache:
        return cache[key]
    if matched["tenant"] != tenant:
        raise Problem("not_found", f"no upload {key}", [field_error(field, "no such upload", "upload the file again")])
    record = await s3(services.storage.get_json, Keys.upload(tenant, matched["upload"], RECORD))
    if record is None or kind not in record.get("files", {}):
        raise Problem("not_found", f"no upload {key}", [field_error(field, "no such upload", "upload the file again")])
    if now() > float(record["expires_at"]):
        raise Problem("upload_expired", f"upload {matched['upload']} expired at {record['expires_at']}",
                      [field_error(field, "the upload has expired",
                                   "get new URLs with POST /v1/uploads and upload the file again")])
    info = await s3(services.storage.stat, key)
    if info is None:
        raise Problem("upload_missing", f"nothing was uploaded to {key}",
                      [field_error(field, "no file at this key",
                                   f"PUT the {kind} to the presigned URL before creating the job")])
    if info.size > LIMITS[kind]:
        raise Problem("payload_too_large", f"the uploaded {kind} is {info.size} bytes, over {LIMITS[kind] >> 20} MiB",
                      [field_error(field, "file too large", f"upload at most {LIMITS[kind] >> 20} MiB")])
    fetched = Fetched(await s3(services.storage.get_bytes, key), record["files"][kind].get("filename"))
    if cache is not None:
        cache[key] = fetched
    return fetched
