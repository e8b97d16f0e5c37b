"""``GET /v1/jobs/{id}/events``: Server-Sent Events from the job record in S3.

The stream opens with a ``state`` event (the job JSON), then sends ``state`` when the state changes and
``progress`` when the stage or step changes, a ``: heartbeat`` comment every 15 s of silence, and ends after a
terminal state. A connection is closed after ``SSE_MAX_S`` (under Serve's request timeout); EventSource
clients reconnect on their own (``retry: 3000``) and get the current state first.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from deployments.jobs import TERMINAL
from deployments.storage import Keys

from .context import Services, Svc, Who, load_job, s3
from .problems import problem_responses
from .views import job_view

router = APIRouter(tags=["jobs"])

POLL_S = 0.5
HEARTBEAT_S = 15.0
SSE_MAX_S = 100.0
RETRY_MS = 3000


def sse(event: str, data: dict[str, Any], seq: int) -> str:
    return f"id: {seq}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def job_events(services: Services, record: dict[str, Any], poll_s: float = POLL_S,
                     max_s: float = SSE_MAX_S) -> AsyncIterator[str]:
    key = Keys.job(record["tenant"], record["id"])
    started = last_sent = time.monotonic()
    state, progress, seq = None, None, 0
    yield f"retry: {RETRY_MS}\n\n"
    while True:
        now_progress = json.dumps([record.get("stage"), record.get("progress")], sort_keys=True)
        if record.get("state") != state or now_progress != progress:
            seq += 1
            kind = "state" if record.get("state") != state else "progress"
            state, progress = record.get("state"), now_progress
            yield sse(kind, job_view(services, record), seq)
            last_sent = time.monotonic()
        if state in TERMINAL:
            return
        if time.monotonic() - started > max_s:
            yield ": reconnect for more\n\n"
            return
        if time.monotonic() - last_sent >= HEARTBEAT_S:
            yield ": heartbeat\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(poll_s)
        fresh = await s3(services.storage.get_json, key)
        if fresh is None:   # deleted (retention) while watched
            return
        record = fresh


@router.get("/v1/jobs/{job_id}/events", response_class=StreamingResponse,
            summary="Live state and progress (Server-Sent Events)",
            responses={200: {"description": "`text/event-stream`: events `state` and `progress`, data = the Job",
                             "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                       **problem_responses(401, 404)})
async def stream_events(job_id: str, services: Svc, who: Who) -> StreamingResponse:
    record = await load_job(services, who.tenant, job_id)
    return StreamingResponse(job_events(services, record), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
