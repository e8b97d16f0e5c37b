"""Sonic Serve load test: LMS back ends submitting lesson clips, following them and downloading the videos.

    SONIC_API_KEY=sk_... locust -f loadtest/locustfile.py --headless -u 20 -r 2 -t 10m \
        --host http://127.0.0.1:8000 --csv out/load --html out/load.html

Every knob is an env var (loadtest/README.md). Besides the HTTP requests, each job is recorded as
``JOB e2e``: submit (including back-pressure waits) -> terminal state -> result downloaded; a job that fails,
times out or cannot be downloaded is a failure of that row.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin

import requests
from lms_media import Media
from lms_profile import Settings, burst_users
from locust import HttpUser, LoadTestShape, between, events, task
from locust.runners import MasterRunner

log = logging.getLogger("sonic.load")

SETTINGS = Settings.from_env()
MEDIA = Media(SETTINGS.longest())

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
BACKPRESSURE = (429, 503)
REDIRECTS = (301, 302, 303, 307, 308)
TIMEOUT = (10, 120)              # connect, read (s)
SSE_READ_TIMEOUT = 90            # a silent event stream is reopened after this long
MAX_POLL_ERRORS = 5
RETRY_AFTER_CAP_S = 120


class Refused(Exception):
    """A request failed (already recorded under its own name)."""


class JobFailed(Exception):
    """The job did not produce a downloadable video."""


@events.init.add_listener
def _prepare(environment, **_kwargs) -> None:
    if isinstance(environment.runner, MasterRunner):
        return                   # workers send the requests
    if not SETTINGS.api_key:
        raise SystemExit("sonic load test: set SONIC_API_KEY to an API key of the service under test")
    started = time.perf_counter()
    MEDIA.portrait()
    MEDIA.wav(SETTINGS.longest())
    log.info("media ready in %.1fs (%s speech, clips up to %.1fs, progress by %s, uploads by %s)",
             time.perf_counter() - started, MEDIA.speech_source, SETTINGS.longest(), SETTINGS.progress,
             SETTINGS.upload)


def retry_after(response: requests.Response) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date); None without one."""
    raw = (response.headers.get("Retry-After") or "").strip()
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(raw).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def reason(response: requests.Response) -> str:
    """A short, aggregatable failure reason: status and problem slug (no job ids)."""
    if response.status_code == 0:
        return f"no response: {type(getattr(response, 'error', None)).__name__}"
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    slug = ""
    if isinstance(body, dict):
        detail = body.get("detail")
        slug = str(body.get("type") or "").rsplit("/", 1)[-1] or (
            str(detail.get("code", "")) if isinstance(detail, dict) else "")
    return f"HTTP {response.status_code} {slug}".strip()


def sse_events(response: requests.Response) -> Iterator[tuple[str, str]]:
    """(event, data) of a text/event-stream; comments come as ("comment", text) so callers can check the time,
    a reconnection delay as ("retry", ms)."""
    event, data, buffer = "message", [], b""
    for chunk in response.iter_content(chunk_size=None):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            if not line:
                if data:
                    yield event, "\n".join(data)
                event, data = "message", []
            elif line.startswith(":"):
                yield "comment", line[1:]
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
                elif name == "retry" and value.isdigit():
                    yield "retry", value


def is_mp4(head: bytes) -> bool:
    return len(head) >= 8 and head[4:8] == b"ftyp"


class LmsBackend(HttpUser):
    """One LMS back end: submits a teacher's clip, follows the job, downloads the video, waits, repeats."""

    wait_time = between(SETTINGS.wait_min_s, SETTINGS.wait_max_s)

    def on_start(self) -> None:
        self.auth = {"Authorization": f"Bearer {SETTINGS.api_key}"}
        self.rng = random.Random()

    # -- tasks ---------------------------------------------------------------------------------------------
    @task(10)
    def lesson_video(self) -> None:
        clip, seconds = SETTINGS.pick_clip(self.rng)
        preset = SETTINGS.pick_preset(self.rng)
        params = {"preset": preset, **SETTINGS.params,
                  "metadata": {"source": "loadtest", "clip": clip, "course": f"course-{self.rng.randrange(40)}"}}
        started = time.perf_counter()
        try:
            job = self._submit(params, MEDIA.wav(seconds))
            record = self._follow(job["id"], time.monotonic() + SETTINGS.job_timeout_s)
            if record["state"] != "succeeded":
                error = record.get("error") or {}
                raise JobFailed(f"job {record['state']}: {error.get('type') or error.get('field') or 'unknown'}")
            size = self._download(job["id"])
        except (Refused, JobFailed) as exc:
            self._record_job(started, exc)
        except Exception as exc:  # noqa: BLE001 - a malformed answer fails the job, visibly
            log.exception("job flow broke")
            self._record_job(started, JobFailed(f"client error: {type(exc).__name__}"))
        else:
            self._record_job(started, None, size, seconds, record)

    @task(SETTINGS.list_weight)
    def dashboard(self) -> None:
        """The LMS refreshing its list of recent jobs."""
        with contextlib.suppress(Refused):      # already recorded as a failure
            self._call("GET", "/v1/jobs?limit=20", "/v1/jobs (list)")

    # -- one request, with back-pressure -------------------------------------------------------------------
    def _call(self, method: str, url: str, name: str, *, expect: tuple[int, ...] = (200,),
              **kwargs: Any) -> requests.Response:
        """An API request, repeated while the service pushes back (429/503 with Retry-After: recorded as
        ``<name> [429 back-pressure]``, not as an error). Other unexpected answers are failures: Refused."""
        headers = {**self.auth, **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", TIMEOUT)
        give_up = time.monotonic() + SETTINGS.backpressure_max_s
        while True:
            with self.client.request(method, url, name=name, catch_response=True, headers=headers,
                                     **kwargs) as response:
                if response.status_code in expect:
                    response.success()
                    return response
                wait = retry_after(response) if response.status_code in BACKPRESSURE else None
                if wait is None or time.monotonic() + min(wait, RETRY_AFTER_CAP_S) > give_up:
                    why = reason(response) + ("" if wait is None else " (back-pressure outlasted the budget)")
                    response.failure(why)
                    raise Refused(why)
                response.request_meta["name"] = f"{name} [{response.status_code} back-pressure]"
                response.success()
            time.sleep(min(wait, RETRY_AFTER_CAP_S) * self.rng.uniform(1.0, 1.2))

    # -- job steps -----------------------------------------------------------------------------------------
    def _submit(self, params: dict[str, Any], audio: bytes) -> dict[str, Any]:
        headers = {"Idempotency-Key": uuid.uuid4().hex} if SETTINGS.idempotency else {}
        if SETTINGS.upload == "presigned":
            image_key, audio_key = self._upload(audio)
            response = self._call("POST", "/v1/jobs", "/v1/jobs", expect=(200, 201, 202), headers=headers,
                                  json={"image_key": image_key, "audio_key": audio_key, "params": params})
        else:
            files = {"image": ("portrait.png", MEDIA.portrait(), "image/png"),
                     "audio": ("lesson.wav", audio, "audio/wav")}
            response = self._call("POST", "/v1/jobs", "/v1/jobs", expect=(200, 201, 202), headers=headers,
                                  files=files, data={"params": json.dumps(params)})
        return response.json()

    def _upload(self, audio: bytes) -> tuple[str, str]:
        """Presigned uploads: ask for two PUT URLs, then send the files straight to S3."""
        slots = self._call("POST", "/v1/uploads", "/v1/uploads", expect=(200, 201),
                           json={"image": {"filename": "portrait.png", "content_type": "image/png"},
                                 "audio": {"filename": "lesson.wav", "content_type": "audio/wav"}}).json()
        for part, body in (("image", MEDIA.portrait()), ("audio", audio)):
            slot = slots[part]
            with self.client.request(slot.get("method", "PUT"), slot["url"], name="S3 presigned upload",
                                     data=body, headers=slot.get("headers") or {}, timeout=TIMEOUT,
                                     catch_response=True) as put:
                if put.status_code not in (200, 201, 204):
                    put.failure(reason(put))
                    raise Refused(reason(put))
                put.success()
        return slots["image"]["key"], slots["audio"]["key"]

    def _follow(self, job_id: str, deadline: float) -> dict[str, Any]:
        if SETTINGS.progress == "sse":
            return self._follow_events(job_id, deadline)
        return self._poll(job_id, deadline)

    def _get_job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}", "/v1/jobs/[id]").json()

    def _poll(self, job_id: str, deadline: float) -> dict[str, Any]:
        errors = 0
        while True:
            try:
                record = self._get_job(job_id)
                errors = 0
            except Refused:
                errors += 1
                if errors >= MAX_POLL_ERRORS:
                    raise JobFailed("lost track of the job (status requests keep failing)") from None
            else:
                if record["state"] in TERMINAL:
                    return record
            if time.monotonic() > deadline:
                raise JobFailed(f"not finished within {SETTINGS.job_timeout_s:.0f}s")
            time.sleep(SETTINGS.poll_s)

    def _follow_events(self, job_id: str, deadline: float) -> dict[str, Any]:
        """Server-sent events until a terminal state. Like a browser's EventSource, a stream that ends early
        (the server closes long ones) or drops is reopened after the server's ``retry`` delay; every stream
        starts with the current state."""
        reconnect_s = 3.0
        while time.monotonic() < deadline:
            response = self._call("GET", f"/v1/jobs/{job_id}/events", "/v1/jobs/[id]/events", stream=True,
                                  headers={"Accept": "text/event-stream"}, timeout=(10, SSE_READ_TIMEOUT))
            try:
                for event, data in sse_events(response):
                    if event == "retry":
                        reconnect_s = int(data) / 1000
                    elif event in ("progress", "state"):
                        record = json.loads(data)
                        if record.get("state") in TERMINAL:
                            return record
                    if time.monotonic() > deadline:
                        break
            except requests.RequestException as exc:
                log.info("event stream of a job dropped (%s); reopening", type(exc).__name__)
            finally:
                response.close()
            time.sleep(min(reconnect_s, 30.0))
        raise JobFailed(f"not finished within {SETTINGS.job_timeout_s:.0f}s")

    def _download(self, job_id: str) -> int:
        """The MP4: a redirect to a presigned S3 URL (followed without our API key), or the bytes themselves."""
        response = self._call("GET", f"/v1/jobs/{job_id}/result", "/v1/jobs/[id]/result",
                              expect=(200, *REDIRECTS), allow_redirects=False, stream=True)
        if response.status_code not in REDIRECTS:
            size, head = self._drain(response)
            if not is_mp4(head):
                raise JobFailed("result is not an MP4")
            return size
        location = urljoin(response.url, response.headers.get("Location", ""))
        response.close()
        started = time.perf_counter()
        with self.client.get(location, name="S3 presigned result", stream=True, timeout=TIMEOUT,
                             catch_response=True) as s3:
            if s3.status_code != 200:
                s3.failure(reason(s3))
                raise Refused(reason(s3))
            size, head = self._drain(s3)
            s3.request_meta.update(response_length=size, response_time=(time.perf_counter() - started) * 1000)
            if not is_mp4(head):
                s3.failure("not an MP4")
                raise JobFailed("result is not an MP4")
            s3.success()
        return size

    @staticmethod
    def _drain(response: requests.Response) -> tuple[int, bytes]:
        size, head = 0, b""
        try:
            for chunk in response.iter_content(chunk_size=1 << 16):
                if len(head) < 16:
                    head += chunk[: 16 - len(head)]
                size += len(chunk)
        except requests.RequestException as exc:
            raise JobFailed(f"download broke: {type(exc).__name__}") from None
        finally:
            response.close()
        return size, head

    # -- custom metrics ------------------------------------------------------------------------------------
    def _record_job(self, started: float, exc: Exception | None, size: int = 0, seconds: float = 0.0,
                    record: dict[str, Any] | None = None) -> None:
        """``JOB e2e`` for every job; for finished ones also the time per audio second, the server-side queue
        wait and each stage's time (``STAGE <name>``), all in ms."""
        total_ms = (time.perf_counter() - started) * 1000
        fire = self.environment.events.request.fire
        fire(request_type="JOB", name="e2e", response_time=total_ms, response_length=size, exception=exc,
             context={})
        if exc is not None or record is None:
            return
        fire(request_type="JOB", name="e2e per audio second", response_time=total_ms / max(seconds, 0.1),
             response_length=0, exception=None, context={})
        if record.get("started_at") and record.get("created_at"):
            fire(request_type="JOB", name="queue wait", response_time=1000 * (record["started_at"] -
                                                                             record["created_at"]),
                 response_length=0, exception=None, context={})
        for stage, spent in (record.get("timings_s") or {}).items():
            fire(request_type="STAGE", name=stage, response_time=1000 * float(spent), response_length=0,
                 exception=None, context={})


class MorningBurst(LoadTestShape):
    """Teachers uploading before the first lessons (SONIC_LOAD_SHAPE=morning): ramp from 10 % to 40 % of the
    peak, rush to the peak (-u), hold, fall back, long tail at 15 %; the curve spans -t (default 30 min)."""

    abstract = SETTINGS.shape != "morning"       # only offered to locust when selected
    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options if self.runner else None
        peak = int(getattr(options, "num_users", None) or 20)
        total = float(getattr(options, "run_time", None) or 1800)
        users = burst_users(self.get_run_time(), total, peak)
        if users is None:
            return None
        return users, max(1.0, float(getattr(options, "spawn_rate", None) or 1.0))
