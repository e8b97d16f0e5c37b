"""The job manager deployment: drives every job through the stage deployments.

1. audio and image encode run concurrently (each replica reads its input from S3);
2. fusion (its inputs go replica to replica as ObjectRefs, never through this process);
3. per denoising step, the step's windows run in parallel on Diffusion replicas and are merged here, in plan
   order, exactly as the single-process loop merges them;
4. decode chunks run in parallel on Diffusion replicas; their frames stay in the object store;
5. PostProcess streams the chunks through RIFE into the MP4 and uploads it.

Windows and decode chunks of all jobs go through one :class:`FairDispatcher`, which interleaves jobs
round-robin and keeps the Diffusion replicas just full. The job record in S3 is the source of truth: this
deployment writes it at every stage change and step (state, stage, step k/N, timings, placement of every
window), and the ingress reads it from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from typing import Any

from ray import serve

from deployments import logs, metrics, telemetry
from deployments.admission import Admission, Limits
from deployments.checkpoints import drop_checkpoints, load_latents, save_latents
from deployments.common import LatestOnly, error_info, is_lost_worker, replica_name, root_cause
from deployments.config import AppConfig
from deployments.dispatch import FairDispatcher, RefWatcher
from deployments.jobs import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, TERMINAL, JobParams, now, set_state
from deployments.storage import Keys
from deployments.wavefront import Wavefront
from sonic_core.decode import decode_chunks
from sonic_core.face import parse_face_bbox
from sonic_core.sampler import plan_windows
from stages.timing import LapTimer

log = logging.getLogger("sonic.manager")

# Share of the overall progress bar per stage.
_WEIGHTS = {"encode": 0.05, "fusion": 0.03, "denoise": 0.72, "decode": 0.08, "postprocess": 0.12}
_ORDER = ["encode", "fusion", "denoise", "decode", "postprocess"]
ENDED_MEMORY = 64   # recently ended jobs announced to Diffusion replicas with every request
STATUS_POLL_S = 5.0
HEARTBEAT_PREFIX = "managers/"   # managers/{replica}.json: {"at": unix time}, rewritten every few seconds


def overall_fraction(stage: str, done: int, total: int) -> float:
    if stage == "done":
        return 1.0
    if stage not in _WEIGHTS:
        return 0.0
    before = sum(_WEIGHTS[s] for s in _ORDER[:_ORDER.index(stage)])
    return round(before + _WEIGHTS[stage] * (done / total if total else 0.0), 4)


class JobFailed(Exception):
    pass


class JobCancelled(Exception):
    pass


@serve.deployment(name="JobManager", num_replicas=1, max_ongoing_requests=256, graceful_shutdown_timeout_s=600,
                  ray_actor_options={"num_cpus": 0.5})
class JobManager:
    def __init__(self, config: dict[str, Any], audio, image, fusion, diffusion, postprocess):
        self.config = AppConfig(**config)
        self.storage = self.config.storage()
        self.audio, self.image, self.fusion, self.post = audio, image, fusion, postprocess
        self.diffusion = diffusion
        self.dispatcher = FairDispatcher(self._diffusion_capacity)
        self.watcher = RefWatcher()
        self.tasks: dict[str, asyncio.Task] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.cancelling: set[str] = set()
        self._write_locks: dict[str, asyncio.Lock] = {}
        self.ended: deque[str] = deque(maxlen=ENDED_MEMORY)
        self.diffusion_replicas = 1
        self.diffusion_max_ongoing = 1
        self.admission = Admission(
            Limits(self.config.tenant_max_running, self.config.tenant_max_queued,
                   self.config.tenant_submits_per_minute),
            max_queued_total=self.config.max_queued_jobs, max_running_total=self.config.max_active_jobs,
            limits_for=lambda tenant: self.tenants.quotas(tenant))
        self.tenants = TenantSettings(self.storage, self.config)
        self.outbox = make_outbox(self.storage, self.config)
        self._background: list[asyncio.Task] = []
        self._recovered = asyncio.Event()
        self.replica = replica_name()
        logs.configure_json_logging(os.environ.get("SONIC_LOG_LEVEL", "INFO"), replica=self.replica)
        telemetry.setup_tracing()
        metrics.install_s3_error_listener()
        try:
            self.app_name = serve.get_replica_context().app_name
        except Exception:  # noqa: BLE001
            self.app_name = "sonic"
        with contextlib.suppress(RuntimeError):   # started here when the constructor runs on the event loop,
            self._started()                       # else by the first request or health check

    # -- capacity of the Diffusion deployment ------------------------------------------------------

    def _diffusion_capacity(self) -> int:
        per_replica = self.diffusion_max_ongoing + self.config.diffusion_queue_per_replica
        return max(1, self.diffusion_replicas) * max(1, per_replica)

    def _count_running(self) -> int | None:
        try:
            app = serve.status().applications.get(self.app_name)
            states = app.deployments["Diffusion"].replica_states if app else {}
            return int(sum(n for state, n in states.items() if str(getattr(state, "value", state)) == "RUNNING"))
        except Exception:  # noqa: BLE001 - keep the last known count
            log.debug("serve.status() failed", exc_info=True)
            return None

    async def _watch_capacity(self) -> None:
        while True:
            running = await asyncio.to_thread(self._count_running)
            if running and running != self.diffusion_replicas:
                log.info("Diffusion replicas running: %d -> %d", self.diffusion_replicas, running)
                self.diffusion_replicas = running
                self.dispatcher.poke()
            await asyncio.sleep(STATUS_POLL_S)

    def _started(self) -> None:
        """Start the background loops once, on the replica's event loop (raises RuntimeError off it)."""
        loop = asyncio.get_running_loop()
        if self._background:
            return
        self._background = [loop.create_task(self._watch_capacity()), loop.create_task(self._heartbeat()),
                            loop.create_task(self._recover_forever()),
                            loop.create_task(self.outbox.run(asyncio.Event()))]

    async def check_health(self) -> None:
        """Serve's health check (every few seconds): also starts the loops after a restart, so unfinished jobs
        resume without waiting for a request."""
        self._started()

    # -- records ---------------------------------------------------------------------------------

    async def _save(self, record: dict[str, Any]) -> None:
        record["updated_at"] = now()
        lock = self._write_locks.setdefault(record["id"], asyncio.Lock())
        async with lock:
            snapshot = dict(record)
            await asyncio.to_thread(self.storage.put_json, Keys.job(record["tenant"], record["id"]), snapshot)

    @staticmethod
    def _set_progress(record: dict[str, Any], stage: str, done: int = 0, total: int = 0) -> None:
        record["stage"] = stage
        record["progress"] = {"stage": stage, "done": done, "total": total,
                              "fraction": overall_fraction(stage, done, total)}

    async def _stage(self, record: dict[str, Any], stage: str, done: int = 0, total: int = 0) -> None:
        self._set_progress(record, stage, done, total)
        await self._save(record)

    async def _load(self, tenant: str, job_id: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.storage.get_json, Keys.job(tenant, job_id))

    async def _finish(self, record: dict[str, Any], state: str, **fields: Any) -> None:
        """A job ends: write the terminal record, queue its webhook, then drop its resume marker (in this
        order, so a crash in between is repaired by :meth:`_recover`)."""
        old = record.get("state")
        set_state(record, state, **fields)
        await self._save(record)
        metrics.job_state_changed(old, state)
        logs.log_generation(log, record)
        await self._ended_cleanup(record)

    async def _ended_cleanup(self, record: dict[str, Any]) -> None:
        tenant, job_id = record["tenant"], record["id"]
        await asyncio.to_thread(self.outbox.enqueue, record, f"job.{record['state']}")
        await asyncio.to_thread(drop_checkpoints, self.storage, tenant, job_id)
        await asyncio.to_thread(self.storage.delete, Keys.active(tenant, job_id))
        self.admission.remove(tenant, job_id)
        if record.get("started_at") and record.get("finished_at"):
            self.admission.observe_job_seconds(record["finished_at"] - record["started_at"])
        self._start_next()

    # -- API -------------------------------------------------------------------------------------

    async def admit(self, tenant: str) -> dict[str, Any]:
        """May ``tenant`` submit a job now? ``{"ok": True, "ticket"}`` or a refusal (status 429/503,
        ``retry_after_s``). Called by the ingress before it stores the inputs."""
        self._started()
        with contextlib.suppress(Exception):   # S3 away: decide on the cached quotas
            await asyncio.to_thread(self.tenants.refresh, tenant)
        return self.admission.admit(tenant).to_dict()

    async def submit(self, tenant: str, job_id: str, ticket: str | None = None) -> dict[str, Any]:
        """Queue the job (its record and inputs are already in S3); it starts when the tenant's and the
        service's running limits allow. Returns at once."""
        self._started()
        if job_id in self.tasks or self.admission.is_queued(tenant, job_id):
            return {"id": job_id, "accepted": False, "reason": "already queued or running"}
        record = await self._load(tenant, job_id)
        if record is None:
            raise KeyError(f"no job {job_id} for tenant {tenant}")
        if record["state"] in TERMINAL:
            return {"id": job_id, "accepted": False, "reason": f"job is {record['state']}"}
        record["owner"] = self.replica
        telemetry.job_trace(record)
        await self._save(record)
        self.admission.enqueue(tenant, job_id, ticket)
        metrics.job_state_changed(None, QUEUED)
        self._start_next()
        return {"id": job_id, "accepted": True}

    async def cancel(self, tenant: str, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job: queued ones end at once; a running one stops dispatching and ends
        when its in-flight units (at most two per Diffusion replica) return."""
        self._started()
        task = self.tasks.get(job_id)
        if task is not None and self.records.get(job_id, {}).get("tenant") == tenant:
            self.cancelling.add(job_id)
            self.dispatcher.cancel_job(job_id, JobCancelled("cancelled"))
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.shield(task)
            record = await self._load(tenant, job_id) or {}
            return {"id": job_id, "state": record.get("state", CANCELLED), "cancelled": True}
        record = await self._load(tenant, job_id)
        if record is None:
            raise KeyError(f"no job {job_id} for tenant {tenant}")
        if record["state"] in TERMINAL:
            return {"id": job_id, "state": record["state"], "cancelled": False}
        self.admission.remove(tenant, job_id)
        await self._finish(record, CANCELLED, error={"type": "cancelled", "message": "cancelled by the client"})
        return {"id": job_id, "state": CANCELLED, "cancelled": True}

    async def run(self, tenant: str, job_id: str, capture_frames: bool = False) -> dict[str, Any]:
        """Run the job now (no admission) and wait for it: the final record, plus (``capture_frames``) the raw
        float32 frames [N, H, W, 3] that went into the encoder. For tests and benchmarks."""
        self._started()
        record = await self._load(tenant, job_id)
        if record is None:
            raise KeyError(f"no job {job_id} for tenant {tenant}")
        task = asyncio.get_running_loop().create_task(self._run_guarded(record, capture=capture_frames))
        self.tasks[job_id] = task
        return await task

    async def active(self) -> dict[str, Any]:
        return {
            "jobs": {job_id: {"stage": r.get("stage"), "progress": r.get("progress")}
                     for job_id, r in self.records.items()},
            "queued": self.admission.queued_total(),
            "diffusion": {"replicas": self.diffusion_replicas, "capacity": self._diffusion_capacity(),
                          "in_flight": self.dispatcher.in_flight, "pending": self.dispatcher.pending()},
        }

    async def finished_spans(self, job_id: str) -> list[dict[str, Any]]:
        """This replica's ended spans of one job's trace (``OTEL_TRACES_EXPORTER=memory`` only; for tests)."""
        spans = telemetry.finished_spans()
        traces = {s["trace_id"] for s in spans if s["attributes"].get("job_id") == job_id}
        return [s for s in spans if s["trace_id"] in traces]

    async def dispatch_order(self) -> list[str]:
        return list(self.dispatcher.dispatched)

    async def wait_recovered(self) -> bool:
        """True once the unfinished jobs found at start-up are queued again (for tests and readiness)."""
        self._started()
        await self._recovered.wait()
        return True

    async def metrics_text(self) -> str:
        queued = self.admission.queued_total()
        metrics.set_queue_depth(queued)
        metrics.set_jobs({"queued": queued, "running": len(self.tasks)})
        metrics.dispatch_state(self.dispatcher.in_flight, self.dispatcher.pending())
        return metrics.render(jobs=True).decode()

    # -- scheduling and recovery ---------------------------------------------------------------------

    def _start_next(self) -> None:
        while (picked := self.admission.next_to_start()) is not None:
            tenant, job_id = picked
            task = asyncio.get_running_loop().create_task(self._start(tenant, job_id))
            self.tasks[job_id] = task

    async def _start(self, tenant: str, job_id: str) -> dict[str, Any]:
        record = await self._load(tenant, job_id)
        if record is None or record["state"] in TERMINAL:
            self.tasks.pop(job_id, None)
            self.admission.remove(tenant, job_id)
            self._start_next()
            return {"record": record}
        return await self._run_guarded(record, capture=False)

    async def _heartbeat(self) -> None:
        """Tell other manager replicas (a rolling update, a restart) that this one still owns its jobs."""
        key = f"{HEARTBEAT_PREFIX}{self.replica}.json"
        while True:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.storage.put_json, key, {"at": now(), "replica": self.replica})
            await asyncio.sleep(max(1.0, self.config.manager_lease_s / 4))

    async def _owner_alive(self, owner: str | None) -> bool:
        if not owner or owner == self.replica:
            return False
        beat = await asyncio.to_thread(self.storage.get_json, f"{HEARTBEAT_PREFIX}{owner}.json")
        return bool(beat) and now() - float(beat.get("at", 0)) < self.config.manager_lease_s

    async def _recover_forever(self) -> None:
        while True:
            await self._recover()
            await asyncio.sleep(max(1.0, self.config.manager_lease_s / 2))

    async def _recover(self) -> None:
        """Adopt every job marked active in S3 that no live manager owns: jobs of a manager that died, or of a
        previous run of the app. Terminal ones still marked (a crash mid-finish) get their cleanup."""
        try:
            markers = await asyncio.to_thread(self.storage.list, "active/")
            for marker in markers:
                _, tenant, job_id = marker.key.split("/", 2)
                if job_id in self.tasks or self.admission.is_queued(tenant, job_id):
                    continue
                record = await self._load(tenant, job_id)
                if record is None:
                    await asyncio.to_thread(self.storage.delete, marker.key)
                elif record["state"] in TERMINAL:
                    await self._ended_cleanup(record)
                elif not await self._owner_alive(record.get("owner")):
                    log.info("adopting job %s of tenant %s (was %s/%s, owner %s)", job_id, tenant,
                             record["state"], record.get("stage"), record.get("owner"))
                    record["owner"] = self.replica
                    await self._save(record)
                    self.admission.enqueue(tenant, job_id)
            self._start_next()
        except Exception:  # noqa: BLE001 - tried again on the next round; jobs stay marked
            log.exception("recovery of unfinished jobs failed")
        finally:
            self._recovered.set()

    # -- the pipeline ------------------------------------------------------------------------------

    async def _run_guarded(self, record: dict[str, Any], capture: bool) -> dict[str, Any]:
        job_id = record["id"]
        self.records[job_id] = record
        with logs.job_context(job_id, record["tenant"]):
            return await self._run_traced(record, capture)

    async def _run_traced(self, record: dict[str, Any], capture: bool) -> dict[str, Any]:
        job_id = record["id"]
        try:
            with telemetry.attach(record.get("trace")), telemetry.span(
                    "job", job_id=job_id, tenant=record["tenant"], attempt=int(record.get("attempts", 0)) + 1):
                return await self._run(record, capture)
        except (asyncio.CancelledError, JobCancelled):
            self.dispatcher.cancel_job(job_id)
            if job_id not in self.cancelling:
                raise              # the replica is shutting down: the job stays marked and resumes later
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            log.info("job %s cancelled", job_id)
            await self._finish(record, CANCELLED, error={"type": "cancelled", "message": "cancelled by the client"})
            return {"record": record}
        except Exception as exc:  # noqa: BLE001 - the job fails, the manager goes on
            cause = root_cause(exc)
            log.warning("job %s failed: %s: %s", job_id, type(cause).__name__, cause)
            self.dispatcher.cancel_job(job_id, JobFailed(str(cause)))
            with contextlib.suppress(Exception):
                await self._finish(record, FAILED, error=error_info(exc))
            return {"record": record}
        finally:
            if job_id not in self.ended:
                self.ended.append(job_id)
            self.cancelling.discard(job_id)
            self.tasks.pop(job_id, None)
            self.records.pop(job_id, None)
            self._write_locks.pop(job_id, None)

    async def _with_retries(self, what: str, call):
        attempts = 1 + max(0, self.config.unit_retries)
        for attempt in range(1, attempts + 1):
            try:
                return await call()
            except Exception as exc:
                if attempt == attempts or not is_lost_worker(root_cause(exc)):
                    raise
                log.warning("%s lost its replica (%s); retry %d/%d", what, type(exc).__name__, attempt,
                            attempts - 1)
                await asyncio.sleep(0.5 * attempt)
        raise AssertionError("unreachable")

    async def _run(self, record: dict[str, Any], capture: bool) -> dict[str, Any]:
        job_id = record["id"]
        params = JobParams(**record["params"])
        settings = params.settings()
        timer = LapTimer()
        lap, timings = timer.lap, timer.timings

        resumed = record["state"] == RUNNING or bool(record.get("checkpoint"))
        old_state = record["state"]
        set_state(record, RUNNING, started_at=record.get("started_at") or now(), error=None, timings_s=timings,
                  placement={"windows": [], "decode": [], "conditioning_loads": {}},
                  attempts=int(record.get("attempts", 0)) + 1, owner=self.replica)
        if resumed:
            record["history"][-1]["resumed"] = True
        metrics.job_state_changed(old_state, RUNNING)
        telemetry.set_attributes(steps=settings.steps, resolution=settings.min_resolution, resumed=resumed)
        await self._stage(record, "encode")

        facts, fused_ref = await self._encode_and_fuse(record, params, settings, lap)
        telemetry.set_attributes(frames=facts["num_frames"])
        with telemetry.span("denoise", job_id=job_id, steps=settings.steps):
            latents = await self._denoise(record, settings, fused_ref)
        del fused_ref
        lap("denoise")
        post = await self._decode_and_postprocess(record, params, settings, facts, latents, capture, lap)
        record["timings_s"] = timings
        record["stage"] = "done"
        record["progress"] = {"stage": "done", "done": 1, "total": 1, "fraction": 1.0}
        metrics.observe_timings(timings)
        metrics.video_done(float(post["output"].get("duration_s") or 0.0))
        await self._finish(record, SUCCEEDED, output=post["output"], finished_at=now())
        result: dict[str, Any] = {"record": record}
        if capture:
            result["frames"] = post["frames"]
        return result

    async def _encode_and_fuse(self, record: dict[str, Any], params: JobParams, settings, lap):
        """Stages 1-2: audio and image encode concurrently, then fusion. Payloads stay in the object store;
        returns the facts for the record and the fused conditioning's ObjectRef."""
        face = parse_face_bbox(params.face_bbox) if params.face_bbox else None
        with telemetry.span("encode", job_id=record["id"]):
            audio_resp = self.audio.encode.remote(record["inputs"]["audio"], params.duration_s)
            image_resp = self.image.encode.remote(record["inputs"]["image"], face, params.framing,
                                                  params.expand_ratio, settings.min_resolution)
            audio_ref, image_ref = await asyncio.gather(audio_resp._to_object_ref(), image_resp._to_object_ref())
            await asyncio.gather(self.watcher.wait(audio_ref), self.watcher.wait(image_ref))
        lap("encode")

        # describe() surfaces encode errors and gives the record its facts.
        await self._stage(record, "fusion")
        with telemetry.span("fusion", job_id=record["id"]):
            facts = await self.fusion.describe.remote(audio_ref, image_ref)
            record["warnings"] = list(dict.fromkeys([*record.get("warnings", []), *facts["warnings"]]))
            record["video"] = {"size": facts["size"], "face_bbox": facts["face_bbox"],
                               "crop_box": facts["crop_box"], "frames_generated": facts["num_frames"]}
            fused_ref = await self.fusion.fuse.remote(
                audio_ref, image_ref, settings.dynamic_scale, settings.motion_scale, settings.temporal_smoothing,
            )._to_object_ref()
            await self.watcher.wait(fused_ref)
        lap("fusion")
        return facts, fused_ref

    async def _denoise(self, record: dict[str, Any], settings, fused_ref):
        """Stage 3: the job's windows on Diffusion replicas as a wavefront (each window starts once the windows
        of the previous step it reads are back); resumes from the record's checkpoint and writes one every
        ``checkpoint_every`` steps, in the background. Returns the final latents."""
        job_id = record["id"]
        fused_box = [fused_ref]
        carrier = telemetry.inject()
        prepared = await self.dispatcher.submit(job_id, lambda: self._with_retries(
            f"{job_id} prepare", lambda: self.diffusion.prepare.remote(
                job_id, fused_box, settings.seed, settings.steps, settings.noise_strength,
                settings.guidance_image, settings.guidance_audio, trace=carrier)))
        self.diffusion_max_ongoing = prepared.max_ongoing_requests
        self.dispatcher.poke()
        schedule, latents, frames_total = prepared.schedule, prepared.latents, prepared.num_frames
        loads = record["placement"]["conditioning_loads"]
        loads[prepared.replica] = loads.get(prepared.replica, 0) + 1
        total_steps = len(schedule.steps)
        first_step = 0
        restored = await asyncio.to_thread(load_latents, self.storage, record.get("checkpoint"),
                                           tuple(latents.shape))
        if restored is not None:
            first_step, latents = restored
            log.info("job %s resumes denoising at step %d/%d from its checkpoint", job_id, first_step, total_steps)
        await self._stage(record, "denoise", first_step, total_steps)

        step_spans: dict[int, Any] = {}
        step_carriers: dict[int, dict[str, str]] = {}
        checkpoints = LatestOnly(lambda state: self._checkpoint(record, *state))
        last_checkpoint = time.monotonic()
        progress = LatestOnly(self._save)

        def run_window(n: int, index: int, frames: list[int], slice_):
            step, trace = schedule.steps[n], step_carriers[n]
            return self.dispatcher.submit(job_id, lambda: self._with_retries(
                f"{job_id} window", lambda: self.diffusion.denoise.remote(
                    job_id, fused_box, step, frames, slice_, tuple(self.ended), trace=trace)))

        def step_started(n: int, windows: list[list[int]]) -> None:
            span = step_spans[n] = telemetry.start_span("denoise.step", job_id=job_id, step=n,
                                                        window_count=len(windows))
            step_carriers[n] = telemetry.carrier_of(span)

        def window_done(n: int, index: int, frames: list[int], outcome) -> None:
            metrics.windows_done(1, outcome.seconds)
            replica = outcome.result.replica
            record["placement"]["windows"].append(
                {"step": n, "window": index, "first_frame": frames[0], "replica": replica,
                 "loaded_conditioning": outcome.loaded_conditioning, "seconds": round(outcome.seconds, 4)})
            if outcome.loaded_conditioning:
                loads[replica] = loads.get(replica, 0) + 1

        def step_done(n: int, merged) -> None:
            nonlocal last_checkpoint
            step_spans.pop(n).end()
            step_carriers.pop(n, None)
            if self._checkpoint_due(n + 1, total_steps, time.monotonic() - last_checkpoint):
                last_checkpoint = time.monotonic()
                checkpoints.submit((n + 1, merged))
            self._set_progress(record, "denoise", n + 1, total_steps)
            progress.submit(record)

        wavefront = Wavefront(frames_total, total_steps, lambda n: plan_windows(frames_total, schedule.steps[n].index),
                              run_window, lambda outcome: outcome.result.latents, step_started, window_done,
                              step_done)
        try:
            latents = await wavefront.run(first_step, latents)
            await checkpoints.flush()
            await progress.flush()
        finally:
            for span in step_spans.values():
                span.end()
            checkpoints.cancel()
            progress.cancel()
        # The conditioning is no longer needed: every later Diffusion request announces it, so replicas
        # evict it; the caller drops the last reference, so the object store frees the FusedJob.
        self.ended.append(job_id)
        fused_box[0] = None
        return latents

    def _checkpoint_due(self, steps_done: int, total_steps: int, since_last_s: float) -> bool:
        """Every ``checkpoint_every`` steps, at most once per ``checkpoint_interval_s``; always after the last."""
        every = self.config.checkpoint_every
        if every <= 0:
            return False
        if steps_done == total_steps:
            return True
        return steps_done % every == 0 and since_last_s >= self.config.checkpoint_interval_s

    async def _checkpoint(self, record: dict[str, Any], steps_done: int, latents) -> None:
        """Persist the latents after ``steps_done`` steps; the record names the checkpoint from its next write."""
        record["checkpoint"] = await asyncio.to_thread(save_latents, self.storage, record["tenant"], record["id"],
                                                       steps_done, latents)

    async def _decode_and_postprocess(self, record: dict[str, Any], params: JobParams, settings, facts: dict,
                                      latents, capture: bool, lap) -> dict[str, Any]:
        """Stages 4-5: decode chunks in parallel (frames go from Diffusion to PostProcess through the object
        store), then RIFE, encode, mux and upload. The frames are never fetched here, so a chunk lost with its
        replica only shows in PostProcess: then both phases run again from the latents still held here."""
        job_id = record["id"]
        job_info = {
            "tenant": record["tenant"], "id": job_id, "audio_key": record["inputs"]["audio"],
            "duration_s": params.duration_s, "size": facts["size"], "framed_size": facts["framed_size"],
            "face_xywh": facts["face_xywh"], "lip_sync": params.lip_sync,
            "keep_resolution": params.keep_resolution, "interpolate": settings.interpolate, "crf": params.crf,
            "warnings": facts["warnings"], "timings_s": record["timings_s"],
            "parameters": {**settings.__dict__, "framing": params.framing, "expand_ratio": params.expand_ratio,
                           "face_bbox": facts["face_bbox"]},
        }
        attempts = 1 + max(0, self.config.unit_retries)
        for attempt in range(1, attempts + 1):
            try:
                chunk_refs = await self._decode(record, latents)
                lap("decode")
                await self._stage(record, "postprocess")
                with telemetry.span("postprocess", job_id=job_id):
                    post = await self.post.run.remote(job_info, list(chunk_refs), capture, trace=telemetry.inject())
                break
            except Exception as exc:
                if attempt == attempts or not is_lost_worker(root_cause(exc)):
                    raise
                log.warning("%s: decode/postprocess lost a replica (%s); running both again", job_id,
                            type(root_cause(exc)).__name__)
            finally:
                chunk_refs = None
        metrics.gpu_time("decode", sum(post.get("decode_seconds", [])))
        record["placement"]["decode"] = [{"chunk": i, "replica": r} for i, r in enumerate(post["decode_replicas"])]
        record["placement"]["postprocess"] = post["replica"]
        lap("postprocess")
        return post

    async def _decode(self, record: dict[str, Any], latents) -> list:
        """Dispatch every decode chunk; ObjectRefs of the frames, in order, once all are computed."""
        job_id = record["id"]
        chunks = decode_chunks(latents.shape[1])
        await self._stage(record, "decode", 0, len(chunks))
        done = 0

        async def decode_unit(index: int, start: int, stop: int, carrier: dict[str, str]):
            nonlocal done
            chunk_latents = latents[0, start:stop].clone()  # a view would pickle the whole tensor

            async def attempt():
                with telemetry.attach(carrier), telemetry.span("decode.chunk", job_id=job_id, chunk=index,
                                                               frames=stop - start):
                    ref = await self.diffusion.decode.remote(chunk_latents, tuple(self.ended),
                                                             trace=telemetry.inject(), chunk=index,
                                                             job_id=job_id)._to_object_ref()
                    await self.watcher.wait(ref)
                return ref

            ref = await self._with_retries(f"{job_id} decode", attempt)
            done += 1
            await self._stage(record, "decode", done, len(chunks))
            return ref

        with telemetry.span("decode", job_id=job_id, chunks=len(chunks)):
            carrier = telemetry.inject()
            return list(await asyncio.gather(*(
                self.dispatcher.submit(job_id, lambda i=i, c=c: decode_unit(i, c.start, c.stop, carrier))
                for i, c in enumerate(chunks))))

    async def __del__(self):
        """On scale-down or redeploy, let running jobs finish (bounded by graceful_shutdown_timeout_s)."""
        tasks = [t for t in self.tasks.values() if not t.done()]
        if tasks:
            log.info("shutting down: waiting for %d running job(s)", len(tasks))
            await asyncio.gather(*tasks, return_exceptions=True)
        self.watcher.stop()
        if self._monitor is not None:
            self._monitor.cancel()


def make_outbox(storage, config: AppConfig):
    """The webhook outbox the manager feeds and drains (pending deliveries live in S3)."""
    from deployments.webhooks import WebhookOutbox, tenant_webhook_secret

    tenants = TenantSettings(storage, config)

    def secret_for(tenant: str) -> str:
        entry = tenants.entry(tenant)
        return (entry.webhook_secret if entry is not None else None) or tenant_webhook_secret(tenant)

    return WebhookOutbox(storage, secret_for, allow=config.webhook_allow)


class TenantSettings:
    """Tenants' quotas and webhook secrets: AppConfig defaults, then the S3 tenant record's ``quotas``, then the
    API keys file / ``SONIC_API_KEYS`` entry (see docs/api.md) — the same order ``GET /v1/tenant`` shows.
    The file is re-read at most every ``reload_s``; S3 records are refreshed by :meth:`refresh`."""

    def __init__(self, storage, config: AppConfig, reload_s: float = 10.0, record_ttl_s: float = 60.0):
        self.storage, self.config = storage, config
        self.reload_s, self.record_ttl_s = reload_s, record_ttl_s
        self._entries: dict[str, Any] = {}
        self._entries_at = -1e9
        self._records: dict[str, tuple[float, dict | None]] = {}

    def entry(self, tenant: str):
        from deployments.auth import configured_tenants

        if time.monotonic() - self._entries_at > self.reload_s:
            try:
                self._entries = configured_tenants(self.config.api_keys_file or None)
            except (OSError, ValueError):
                log.exception("cannot read the tenants configuration; keeping the previous one")
            self._entries_at = time.monotonic()
        return self._entries.get(tenant)

    def refresh(self, tenant: str) -> None:
        """Re-read the tenant's S3 record if the cached one is stale (blocking: run it in a thread)."""
        cached = self._records.get(tenant)
        if cached is None or time.monotonic() - cached[0] > self.record_ttl_s:
            self._records[tenant] = (time.monotonic(), self.storage.get_json(Keys.tenant(tenant)))

    def quotas(self, tenant: str) -> dict[str, int]:
        from deployments.auth import config_quota_defaults, effective_quotas

        stored = self._records.get(tenant, (0.0, None))[1]
        return effective_quotas(config_quota_defaults(self.config), stored, self.entry(tenant))


__all__ = ["JobManager", "QUEUED", "overall_fraction"]
