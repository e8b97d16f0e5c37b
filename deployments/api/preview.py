"""``POST /v1/preview``: where the face is and what the video will show, before submitting (for the web page).

Face detection runs in the ImageEncoder deployment (it holds the detector); nothing is stored.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from deployments.jobs import JobParams, ParamError

from .context import MAX_IMAGE_BYTES, Svc, Who, call_handle, check_length, content_type
from .problems import Problem, field_error, problem_responses
from .schemas import Preview

router = APIRouter(tags=["preview"])

_FIELDS = ("framing", "expand_ratio", "face_bbox")
_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary", "description": "The portrait (PNG, JPEG or WebP)"},
        "framing": {"type": "string", "enum": ["full", "crop", "vertical"], "default": "full"},
        "expand_ratio": {"type": "number", "default": 0.5},
        "face_bbox": {"type": "string", "description": "x,y,w,h: skip detection"}}}}}}}


@router.post("/v1/preview", response_model=Preview, openapi_extra=_BODY,
             summary="Face box and crop of a portrait (no job is made)",
             responses=problem_responses(400, 401, 413, 415, 422, 503))
async def preview(request: Request, services: Svc, who: Who) -> JSONResponse:
    if content_type(request) != "multipart/form-data":
        raise Problem("unsupported_media_type", "send the portrait as multipart/form-data",
                      [field_error("Content-Type", "not multipart/form-data", "send a multipart form with `image`")])
    check_length(request, MAX_IMAGE_BYTES + (64 << 10))
    form = await request.form(max_files=1, max_fields=8)
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise Problem("validation_error", "missing file part `image`",
                      [field_error("image", "missing", "add the portrait as a multipart file part `image`")])
    data = await upload.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise Problem("payload_too_large", f"`image` is over {MAX_IMAGE_BYTES >> 20} MiB",
                      [field_error("image", "file too large", f"send at most {MAX_IMAGE_BYTES >> 20} MiB")])
    unknown = sorted(set(form) - {"image", *_FIELDS})
    if unknown:
        raise ParamError(unknown[0], f"unknown parameter (known: {', '.join(_FIELDS)})")
    params = JobParams.from_dict({k: form[k] for k in _FIELDS if isinstance(form.get(k), str)})
    result = await call_handle(services.image_encoder, "face detection", "preview", data, params.framing,
                               params.expand_ratio, params.face_bbox)
    return JSONResponse(result)
