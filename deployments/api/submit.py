"""Turning a request into an accepted job, shared by ``POST /v1/jobs`` and ``POST /v1/batches``:

parameters (``JobParams.from_dict``, webhook URL checked against SSRF rules) -> media validated here, before
anything is accepted (``MediaError`` -> 422 naming the field) -> ``manager.admit`` (429/503 + Retry-After)
-> ``create_job`` (inputs and the queued record in S3) -> ``manager.submit``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from deployments.jobs import FAILED, JobParams, ParamError, create_job, set_state
from deployments.storage import Keys
from deployments.webhooks import check_webhook_url

from .context import MAX_AUDIO_BYTES, MAX_IMAGE_BYTES, Services, call_manager, check_length, s3
from .problems import Problem, field_error, retry_after

log = logging.getLogger("sonic.api")

MULTIPART_LIMIT = MAX_IMAGE_BYTES + MAX_AUDIO_BYTES + (1 << 20)
_FILES = {"image": MAX_IMAGE_BYTES, "audio": MAX_AUDIO_BYTES}


@dataclass
class Draft:
    """A validated job, not yet accepted."""

    params: JobParams
    image: bytes
    audio: bytes
    media: dict[str, Any] = field(default_factory=dict)
    filenames: dict[str, str | None] = field(default_factory=dict)


async def parse_params(services: Services, raw: dict[str, Any]) -> JobParams:
    params = JobParams.from_dict(raw)
    if params.webhook_url:
        await asyncio.to_thread(check_webhook_url, params.webhook_url, services.config.webhook_allow)
    return params


def _media_facts(image: bytes, audio: bytes, params: JobParams) -> dict[str, Any]:
    """Decode both inputs as the pipeline will (raises MediaError) and keep what the record shows."""
    from stages.media.audio_in import load_audio
    from stages.media.image_in import load_image

    picture = load_image(image)
    speech = load_audio(audio, duration_s=params.duration_s)
    return {"image": {"format": picture.source_format, "width": picture.size[0], "height": picture.size[1]},
            "audio": {"format": speech.source_format, "duration_s": round(speech.duration_s, 3),
                      "channels": speech.source_channels, "sample_rate": speech.source_rate},
            "warnings": [*picture.warnings, *speech.warnings]}


async def make_draft(services: Services, raw_params: dict[str, Any], image: bytes, audio: bytes,
                     filenames: dict[str, str | None] | None = None) -> Draft:
    params = await parse_params(services, raw_params)
    media = await asyncio.to_thread(_media_facts, image, audio, params)
    return Draft(params, image, audio, media, filenames or {})


async def accept(services: Services, tenant: str, draft: Draft, extra: dict[str, Any] | None = None) -> dict:
    """Admission, then the job in S3, then the manager. Returns the queued record."""
    verdict = await call_manager(services, "admit", tenant)
    if not verdict.get("ok"):
        status = int(verdict.get("status") or 429)
        slug = verdict.get("type") or ("rate_limited" if status == 429 else "queue_full")
        raise Problem(slug, verdict.get("detail") or "the job cannot be accepted now", status=status,
                      headers=retry_after(float(verdict.get("retry_after_s") or 5)),
                      extra={"retry_after_s": int(verdict.get("retry_after_s") or 5)})
    media = draft.media
    names = {kind: f"{kind}.{media[kind]['format'].split('/')[0]}" for kind in ("image", "audio")}
    source = {"media": {k: v for k, v in media.items() if k != "warnings"}, "filenames": draft.filenames,
              "warnings": list(media.get("warnings") or []), **(extra or {})}
    record = await s3(create_job, services.storage, tenant, draft.params, draft.image, draft.audio,
                      names["image"], names["audio"], source)
    try:
        await call_manager(services, "submit", tenant, record["id"], verdict.get("ticket"))
    except Problem:
        set_state(record, FAILED, error={"type": "unavailable", "message": "the job manager did not take the job"})
        await s3(services.storage.put_json, Keys.job(tenant, record["id"]), record)
        raise
    return record


# -- multipart ---------------------------------------------------------------------------------------------


async def read_form(request: Request) -> tuple[dict[str, Any], dict[str, bytes], dict[str, str | None]]:
    """(raw params, {"image": bytes, "audio": bytes}, file names) of a multipart job request."""
    check_length(request, MULTIPART_LIMIT)
    form = await request.form(max_files=8, max_fields=64)   # extra files get a 422 naming them, below
    raw: dict[str, Any] = {}
    if "params" in form:
        value = form["params"]
        try:
            parsed = json.loads(value) if isinstance(value, str) else None
        except json.JSONDecodeError as exc:
            raise ParamError("params", f"not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise ParamError("params", "nested too deeply; send a flat JSON object") from None
        if not isinstance(parsed, dict):
            raise ParamError("params", "must be a JSON object of job parameters")
        raw.update(parsed)
    files: dict[str, bytes] = {}
    names: dict[str, str | None] = {}
    for name, value in form.multi_items():
        if name in _FILES:
            if isinstance(value, str):
                raise Problem("validation_error", f"`{name}` must be a file part",
                              [field_error(name, "sent as text", f"send `{name}` as a file (filename=...)")])
            data = await value.read(_FILES[name] + 1)
            if len(data) > _FILES[name]:
                raise Problem("payload_too_large", f"`{name}` is over {_FILES[name] >> 20} MiB",
                              [field_error(name, "file too large", f"send at most {_FILES[name] >> 20} MiB")])
            files[name], names[name] = data, value.filename
        elif name != "params":
            if not isinstance(value, str):
                raise Problem("validation_error", f"unexpected file part `{name}`",
                              [field_error(name, "unexpected file", "send only `image` and `audio` as files")])
            raw[name] = value
    missing = [name for name in _FILES if name not in files]
    if missing:
        raise Problem("validation_error", f"missing file part(s): {', '.join(missing)}",
                      [field_error(n, "missing", f"add the {n} as a multipart file part `{n}`") for n in missing])
    return raw, files, names
