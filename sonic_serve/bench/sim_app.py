"""SIMULATION ONLY: the Serve app that ``bench scaling`` drives. The real :class:`deployments.manager.JobManager`
(and so the real :class:`FairDispatcher`) bound to :class:`SimulatedDiffusion` and to light stand-ins for the
encoders, fusion and post-processing, which return the few facts and payloads the manager needs at once (their
cost is not modelled: the benchmark is about the Diffusion replicas)."""

from __future__ import annotations

from typing import Any

from ray import serve

from sonic_serve.bench.simulated_diffusion import SimulatedDiffusion

APP_NAME = "sonic-bench-sim"
LIGHT = {"num_cpus": 0.01}


def frames_for(seconds: float) -> int:
    """Frames Sonic makes from ``seconds`` of 16 kHz audio: (L // 640) // 2, 12.5 fps."""
    return (int(round(seconds * 16000)) // 640) // 2


@serve.deployment(name="AudioEncoder", ray_actor_options=LIGHT)
class SimAudioEncoder:
    async def encode(self, audio_key: str, duration_s: float | None = None) -> dict[str, Any]:
        if not duration_s:
            raise ValueError("the simulation needs duration_s (the clip length)")
        return {"num_frames": frames_for(duration_s), "num_samples": int(duration_s * 16000)}


@serve.deployment(name="ImageEncoder", ray_actor_options=LIGHT)
class SimImageEncoder:
    async def encode(self, image_key: str, face_bbox=None, framing: str = "full", expand_ratio: float = 0.5,
                     min_resolution: int = 512) -> dict[str, Any]:
        return {"size": [min_resolution, min_resolution]}


@serve.deployment(name="Fusion", ray_actor_options=LIGHT)
class SimFusion:
    async def describe(self, audio: dict[str, Any], image: dict[str, Any]) -> dict[str, Any]:
        width, height = image["size"]
        return {"size": [width, height], "framed_size": [width, height], "face_bbox": [0, 0, width, height],
                "face_xywh": [0, 0, width, height], "crop_box": [0, 0, width, height],
                "num_samples": audio["num_samples"], "num_frames": audio["num_frames"], "warnings": []}

    async def fuse(self, audio: dict[str, Any], image: dict[str, Any], dynamic_scale: float = 1.0,
                   motion_scale: float = 1.0, temporal_smoothing: float = 0.0) -> dict[str, Any]:
        return {"num_frames": audio["num_frames"]}


@serve.deployment(name="PostProcess", ray_actor_options=LIGHT)
class SimPostProcess:
    async def run(self, job: dict[str, Any], chunk_refs: list, capture: bool = False,
                  trace: dict | None = None) -> dict[str, Any]:
        """Fetch every decoded chunk in order (as the real one streams them), write nothing."""
        frames, replicas, seconds = 0, [], []
        for ref in chunk_refs:
            chunk = await ref
            frames += int(chunk.frames.shape[0])
            replicas.append(chunk.replica)
            seconds.append(round(float(chunk.seconds), 4))
        return {"output": {"frames": frames, "simulated": True, "video_key": None, "poster_key": None,
                           "metadata_key": None, "bytes": 0},
                "replica": "sim-postprocess", "decode_replicas": replicas, "decode_seconds": seconds,
                "seconds": 0.0}


def build_sim_app(manager_config: dict[str, Any], sim_config: dict[str, Any], replicas: int,
                  manager_env: dict[str, str] | None = None, replica_queue: int = 1):
    """``manager_env``: environment of the manager's process (where Serve's router runs). ``replica_queue``: units
    a Diffusion replica accepts beyond the one it runs (they wait inside the replica; the app's is 1)."""
    from deployments.manager import JobManager

    diffusion = SimulatedDiffusion.options(num_replicas=replicas, max_ongoing_requests=1 + replica_queue).bind(
        sim_config)
    options = dict(LIGHT, runtime_env={"env_vars": manager_env}) if manager_env else LIGHT
    return JobManager.options(ray_actor_options=options).bind(
        manager_config, SimAudioEncoder.bind(), SimImageEncoder.bind(), SimFusion.bind(), diffusion,
        SimPostProcess.bind())


__all__ = ["APP_NAME", "build_sim_app", "frames_for"]
