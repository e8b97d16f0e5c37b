"""Prometheus metrics of Sonic Serve (``prometheus_client``), in a module-level registry per process.

Two groups. Job metrics (``sonic_jobs_*``, ``sonic_queue_depth``, ``sonic_stage_seconds``, ``sonic_windows_total``,
``sonic_gpu_seconds_total``, ``sonic_video_seconds_total``, ``sonic_dispatch_*``) are kept by the JobManager
(one replica), through the helper functions below. Process metrics (``sonic_s3_errors_total``,
``sonic_http_requests_total``, ``sonic_http_request_seconds``) are kept by every process that imports this
module. ``/metrics`` on the Ingress serves ``render(manager_text)``: its own process metrics merged with the
manager's text (``JobManager.metrics_text()`` = ``render(jobs=True)`` there). Ray Serve's own metrics
(``ray_serve_*``) come from Ray's metrics endpoint on every node instead (docs/observability.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from deployments import storage

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
disable_created_metrics()  # no *_created series: they double the output and make merged texts ambiguous

# Job metrics: rendered only where they are used (the manager), so that another process never reports
# zeros for them (a counter at 0 from another replica would look like a reset).
JOB_REGISTRY = CollectorRegistry(auto_describe=True)
REGISTRY = CollectorRegistry(auto_describe=True)

STAGE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

JOBS_TOTAL = Counter("sonic_jobs_total", "Jobs that entered each state (queued = accepted).", ["state"],
                     registry=JOB_REGISTRY)
# Not ``sonic_jobs``: the counter above is the family ``sonic_jobs`` in OpenMetrics terms.
JOBS_CURRENT = Gauge("sonic_jobs_current", "Jobs now in each live state (queued, running).", ["state"],
                     registry=JOB_REGISTRY)
QUEUE_DEPTH = Gauge("sonic_queue_depth", "Accepted jobs waiting for a job slot.", registry=JOB_REGISTRY)
STAGE_SECONDS = Histogram("sonic_stage_seconds", "Wall time of each pipeline stage of a job.", ["stage"],
                          buckets=STAGE_BUCKETS, registry=JOB_REGISTRY)
WINDOWS = Counter("sonic_windows_total", "Denoising windows computed (one window of one step).",
                  registry=JOB_REGISTRY)
GPU_SECONDS = Counter("sonic_gpu_seconds_total",
                      "Busy seconds of GPU replicas times their GPU share, per stage.", ["stage"],
                      registry=JOB_REGISTRY)
VIDEO_SECONDS = Counter("sonic_video_seconds_total", "Seconds of video delivered (succeeded jobs).",
                        registry=JOB_REGISTRY)
DISPATCH_IN_FLIGHT = Gauge("sonic_dispatch_in_flight", "Diffusion units (windows, decode chunks) in flight.",
                           registry=JOB_REGISTRY)
DISPATCH_PENDING = Gauge("sonic_dispatch_pending", "Diffusion units waiting in the fair dispatcher.",
                         registry=JOB_REGISTRY)

S3_ERRORS = Counter("sonic_s3_errors_total", "Failed S3 attempts (every retry counts), per operation.", ["op"],
                    registry=REGISTRY)
HTTP_REQUESTS = Counter("sonic_http_requests_total", "HTTP requests by route template and status.",
                        ["route", "status"], registry=REGISTRY)
HTTP_SECONDS = Histogram("sonic_http_request_seconds", "HTTP request duration by route template.", ["route"],
                         buckets=HTTP_BUCKETS, registry=REGISTRY)

LIVE_STATES = ("queued", "running")
_jobs_used = False


def _job_metrics() -> None:
    global _jobs_used
    _jobs_used = True


# -- job metrics (the manager) --------------------------------------------------------------------------

def job_state_changed(old: str | None, new: str) -> None:
    """A job moved from ``old`` (None for a new job) to ``new``."""
    _job_metrics()
    if old == new:
        return
    JOBS_TOTAL.labels(new).inc()
    if old in LIVE_STATES:
        JOBS_CURRENT.labels(old).dec()
    if new in LIVE_STATES:
        JOBS_CURRENT.labels(new).inc()


def set_jobs(counts: Mapping[str, int]) -> None:
    """Absolute number of jobs per live state (e.g. after a restart, from the jobs being resumed)."""
    _job_metrics()
    for state in LIVE_STATES:
        JOBS_CURRENT.labels(state).set(int(counts.get(state, 0)))


def set_queue_depth(n: int) -> None:
    _job_metrics()
    QUEUE_DEPTH.set(n)


def observe_stage(stage: str, seconds: float) -> None:
    _job_metrics()
    STAGE_SECONDS.labels(stage).observe(max(0.0, float(seconds)))


def observe_timings(timings: Mapping[str, float]) -> None:
    """Every stage of a job's ``timings_s`` (the manager's LapTimer) at once."""
    for stage, seconds in timings.items():
        observe_stage(stage, seconds)


def windows_done(n: int, gpu_seconds: float) -> None:
    """``n`` denoising windows finished, taking ``gpu_seconds`` of Diffusion replica time together."""
    _job_metrics()
    WINDOWS.inc(n)
    GPU_SECONDS.labels("denoise").inc(max(0.0, float(gpu_seconds)))


def gpu_time(stage: str, seconds: float, share: float = 1.0) -> None:
    """Busy time of a replica holding ``share`` of a GPU (decode: 1; PostProcess: its num_gpus)."""
    _job_metrics()
    GPU_SECONDS.labels(stage).inc(max(0.0, float(seconds) * float(share)))


def video_done(seconds: float) -> None:
    """A job delivered a video of ``seconds``."""
    _job_metrics()
    VIDEO_SECONDS.inc(max(0.0, float(seconds)))


def dispatch_state(in_flight: int, pending: int) -> None:
    _job_metrics()
    DISPATCH_IN_FLIGHT.set(in_flight)
    DISPATCH_PENDING.set(pending)


# -- process metrics ------------------------------------------------------------------------------------

def s3_error(op: str, exc: BaseException | None = None) -> None:
    S3_ERRORS.labels(op or "unknown").inc()


def install_s3_error_listener() -> None:
    """Count every failed S3 attempt of this process (idempotent; done on import)."""
    if s3_error not in storage.S3_ERROR_LISTENERS:
        storage.S3_ERROR_LISTENERS.append(s3_error)


def http_request(route: str, status: int | str, seconds: float | None = None) -> None:
    """One HTTP request; ``route`` is the route template (``/v1/jobs/{job_id}``), never the raw path."""
    HTTP_REQUESTS.labels(route, str(status)).inc()
    if seconds is not None:
        HTTP_SECONDS.labels(route).observe(max(0.0, seconds))


def route_template(scope: Mapping[str, Any]) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else "unmatched"


class HttpMetricsMiddleware:
    """ASGI middleware counting requests by route template and status (``app.add_middleware(...)``).
    Pure ASGI, so streamed responses (SSE) pass through untouched; counted when the response ends."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            http_request(route_template(scope), status[0], time.perf_counter() - start)


# -- exposition -----------------------------------------------------------------------------------------

class _Families:
    """A collector yielding already-built metric families (for re-rendering merged texts)."""

    def __init__(self, families: Iterable[Metric]):
        self.families = list(families)

    def collect(self):
        return self.families


def _merge(texts: Iterable[str]) -> list[Metric]:
    """Families of several exposition texts; a series present in more than one is summed (counters and
    histograms of different processes); a family whose type differs from the first one seen is dropped."""
    merged: dict[str, Metric] = {}
    index: dict[tuple[str, tuple], int] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            elif into.type != family.type:
                continue
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                at = index.get(key)
                if at is None:
                    index[key] = len(into.samples)
                    into.samples.append(sample)
                else:
                    old = into.samples[at]
                    into.samples[at] = old._replace(value=old.value + sample.value)
    return list(merged.values())


def render(*extra: str | bytes, jobs: bool | None = None) -> bytes:
    """Prometheus text (0.0.4) of this process, merged with ``extra`` texts (the manager's
    ``metrics_text()``). ``jobs``: include the job metrics (default: when this process has used them)."""
    own = generate_latest(REGISTRY)
    if jobs or (jobs is None and _jobs_used):
        own += generate_latest(JOB_REGISTRY)
    texts = [t.decode() if isinstance(t, bytes) else t for t in extra if t]
    if not texts:
        return own
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(_merge([own.decode(), *texts])))
    return generate_latest(registry)


install_s3_error_listener()

__all__ = ["CONTENT_TYPE", "HttpMetricsMiddleware", "dispatch_state", "gpu_time", "http_request",
           "install_s3_error_listener", "job_state_changed", "observe_stage", "observe_timings", "render",
           "route_template", "s3_error", "set_jobs", "set_queue_depth", "video_done", "windows_done"]
