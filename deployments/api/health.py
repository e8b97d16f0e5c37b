"""Probes and metrics, no key needed: ``/healthz`` (liveness), ``/readyz`` (S3 and the job manager answer),
``/metrics`` (Prometheus text)."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from deployments import metrics as replica_metrics

from .context import Svc, s3
from .schemas import Health

log = logging.getLogger("sonic.api")
router = APIRouter(tags=["health"])

READY_TIMEOUT_S = 5.0
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/healthz", response_model=Health, summary="Liveness (and whether S3 answers)")
async def healthz(services: Svc) -> dict:
    return {"status": "ok", "s3": await s3(services.storage.ping)}


@router.get("/readyz", response_model=Health, summary="Readiness: S3 and the job manager answer",
            responses={503: {"model": Health, "description": "Not ready"}})
async def readyz(services: Svc) -> JSONResponse:
    async def manager_ok() -> bool:
        if services.manager is None:
            return False
        try:
            await asyncio.wait_for(_active(services.manager), READY_TIMEOUT_S)
            return True
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            log.warning("readyz: job manager not answering: %s: %s", type(exc).__name__, exc)
            return False

    s3_ok, manager = await asyncio.gather(s3(services.storage.ping), manager_ok())
    ready = s3_ok and manager
    return JSONResponse({"status": "ready" if ready else "not_ready", "s3": s3_ok, "manager": manager},
                        status_code=200 if ready else 503, headers=None if ready else {"Retry-After": "5"})


async def _active(manager) -> dict:
    return await manager.active.remote()


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (text format)")
async def metrics(services: Svc) -> PlainTextResponse:
    """This replica's process metrics merged with the JobManager's job metrics."""
    manager_text = ""
    if services.manager is not None:
        try:
            manager_text = await asyncio.wait_for(_text(services.manager), READY_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the replica's own metrics are still worth serving
            log.warning("metrics: job manager not answering: %s: %s", type(exc).__name__, exc)
    text = replica_metrics.render(manager_text) if manager_text else replica_metrics.render()
    return PlainTextResponse(text.decode() if isinstance(text, bytes) else text, media_type=PROMETHEUS_TYPE)


async def _text(manager) -> str:
    return await manager.metrics_text.remote()
