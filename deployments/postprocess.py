"""Stage deployment 4: RIFE per decoded chunk, lip-sync estimate, H.264/AAC encode and mux, upload of the MP4
(plus poster and metadata) to S3. Wraps :class:`stages.postprocess.PostProcessStage` and ``encode_stream``.

The decoded chunks arrive as ObjectRefs (nested, so Ray does not resolve them all at once) and are streamed in
order: fetch chunk i, interpolate it together with chunk i-1's last frame, encode, drop it. Memory stays at
one chunk whatever the video's length; the result is frame-for-frame the single-process stream.

Tracing: ``run`` takes an optional ``trace`` carrier and opens ``postprocess.run`` with its phases under it:
``postprocess.audio`` (fetch and decode the speech), ``postprocess.encode`` (RIFE, encode and mux of the whole
stream; inside it one ``postprocess.fetch`` per decoded chunk, the wait for its frames), ``postprocess.upload``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import serve

from deployments import telemetry
from deployments.common import replica_name, run_blocking
from deployments.config import AppConfig, stage_runtime
from deployments.logs import configure_json_logging, job_context
from deployments.storage import Keys

log = logging.getLogger(__name__)

TINY_NOTICE = ("made with TINY RANDOM weights: this video is noise, not a real model. "
               "Get real weights with `sonic-serve weights download DIR`.")


def encode_stats(stats: Any) -> dict[str, Any]:
    """The encoder's stats as JSON-able values (without the replica's temporary path)."""
    values = dataclasses.asdict(stats) if dataclasses.is_dataclass(stats) else dict(stats or {})
    values.pop("path", None)
    return values


@serve.deployment(name="PostProcess", max_ongoing_requests=4, graceful_shutdown_timeout_s=600,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 2},
                  ray_actor_options={"num_cpus": 1})
class PostProcess:
    def __init__(self, config: dict[str, Any]):
        from sonic_core.weights import WeightsLayout
        from stages.postprocess import PostProcessStage

        self.replica = replica_name()
        configure_json_logging(os.environ.get("SONIC_LOG_LEVEL", "INFO"), replica=self.replica)
        telemetry.setup_tracing()
        self.config = AppConfig(**config)
        runtime = stage_runtime(self.config)
        self.storage = self.config.storage()
        self.stage = PostProcessStage(runtime.weights, runtime.device)
        self.tiny = WeightsLayout(runtime.weights).is_tiny

    def _run(self, job: dict[str, Any], chunk_refs: list, capture: bool) -> dict[str, Any]:
        from sonic_core.face import FaceBox
        from stages.media.audio_in import load_audio
        from stages.media.encode import write_metadata
        from stages.postprocess import encode_stream, mouth_box

        start = time.perf_counter()
        tenant, job_id = job["tenant"], job["id"]
        with telemetry.span("postprocess.audio", job_id=job_id, replica=self.replica):
            audio = load_audio(self.storage.get_bytes(job["audio_key"]), duration_s=job.get("duration_s"))
        width, height = job["size"]
        interpolate = bool(job["interpolate"])
        fps = 25.0 if interpolate else 12.5
        out_size = tuple(job["framed_size"]) if job.get("keep_resolution") else None
        lip_box = (mouth_box(FaceBox(*job["face_xywh"]), tuple(job["framed_size"]), (width, height))
                   if job.get("lip_sync") else None)
        captured: list[np.ndarray] = []
        decode_replicas: list[str] = []
        decode_seconds: list[float] = []
        counted = {"frames": 0}

        def decoded():
            """Fetch chunk i, yield its frames, drop it."""
            for index, ref in enumerate(chunk_refs):
                with telemetry.span("postprocess.fetch", job_id=job_id, chunk=index, replica=self.replica):
                    chunk = ray.get(ref)
                decode_replicas.append(chunk.replica)
                decode_seconds.append(round(float(chunk.seconds), 4))
                frames = chunk.frames
                del chunk
                yield frames

        def frame_chunks():
            for array in self.stage.display_chunks(decoded(), interpolate):
                if capture:
                    captured.append(array.copy())
                counted["frames"] += len(array)
                yield array

        with tempfile.TemporaryDirectory(prefix=f"sonic-{job_id}-") as tmp:
            video, poster, metadata = Path(tmp) / "video.mp4", Path(tmp) / "poster.jpg", Path(tmp) / "metadata.json"
            with telemetry.span("postprocess.encode", job_id=job_id, resolution=f"{width}x{height}", fps=fps,
                                chunks=len(chunk_refs), replica=self.replica) as span:
                encoded = encode_stream(frame_chunks(), video, (width, height), fps, audio,
                                        crf=int(job.get("crf", 18)), out_size=out_size, poster=poster,
                                        lip_sync_box=lip_box)
                span.set_attribute("frames", counted["frames"])
            stats = encode_stats(encoded.stats)
            frames_out = counted["frames"]
            info = {
                "job_id": job_id,
                "duration_s": audio.duration_s,
                "frames": frames_out,
                "fps": fps,
                "width": width,
                "height": height,
                "parameters": job.get("parameters", {}),
                "lip_sync_offset_s": encoded.lip_sync_estimate_s,
                "lip_sync_applied_s": encoded.lip_sync_applied_s,
                "timings_s": job.get("timings_s", {}),
                "tiny_weights": self.tiny,
                "warnings": job.get("warnings", []),
                "encoder": stats,
            }
            if self.tiny:
                info["notice"] = TINY_NOTICE
            write_metadata(metadata, info)
            keys = {name: Keys.output(tenant, job_id, path.name) for name, path in
                    (("video", video), ("poster", poster), ("metadata", metadata))}
            with telemetry.span("postprocess.upload", job_id=job_id, replica=self.replica) as span:
                uploaded = {
                    "video": self.storage.put_file(keys["video"], video, "video/mp4"),
                    "poster": self.storage.put_file(keys["poster"], poster, "image/jpeg"),
                    "metadata": self.storage.put_file(keys["metadata"], metadata, "application/json"),
                }
                span.set_attribute("bytes", uploaded["video"].size)
        output = {
            "video_key": keys["video"], "poster_key": keys["poster"], "metadata_key": keys["metadata"],
            "bytes": uploaded["video"].size, "frames": frames_out, "fps": fps, "width": stats.get("width", width),
            "height": stats.get("height", height), "duration_s": audio.duration_s, "tiny_weights": self.tiny,
            "lip_sync_offset_s": encoded.lip_sync_estimate_s, "lip_sync_applied_s": encoded.lip_sync_applied_s,
            "encoder": stats,
        }
        if self.tiny:
            output["notice"] = TINY_NOTICE
        result: dict[str, Any] = {"output": output, "replica": self.replica, "decode_replicas": decode_replicas,
                                  "decode_seconds": decode_seconds, "seconds": time.perf_counter() - start}
        log.info("video written: %d frames, %.2f s, %d bytes in %.2f s", frames_out, audio.duration_s,
                 output["bytes"], result["seconds"], extra={"video_key": keys["video"]})
        if capture:
            result["frames"] = np.concatenate(captured) if captured else np.zeros((0, height, width, 3), np.float32)
        return result

    async def run(self, job: dict[str, Any], chunk_refs: list, capture: bool = False,
                  trace: dict | None = None) -> dict[str, Any]:
        """``job``: tenant, id, audio_key, duration_s, size, framed_size, face_xywh, keep_resolution, lip_sync,
        interpolate, crf, parameters, warnings, timings_s. ``chunk_refs``: ObjectRefs of the decoded chunks, in
        order (inside a list, so Ray hands them over unresolved). ``trace``: the caller's trace carrier."""
        with telemetry.attach(trace), job_context(job.get("id"), job.get("tenant")), telemetry.span(
                "postprocess.run", job_id=job.get("id"), tenant=job.get("tenant"), chunks=len(chunk_refs),
                replica=self.replica):
            return await run_blocking(self._run, job, list(chunk_refs), capture)
