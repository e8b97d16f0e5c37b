"""``sonic-serve bench overhead``: the same tiny job in one process (``LocalPipeline``) and through the Serve
pipeline (``LocalStack``: the real app, a local Ray and an embedded S3 server); per-window dispatch latency of the
Diffusion deployment; object-store bytes per denoising step."""

from __future__ import annotations

import asyncio
import math
import pickle
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from sonic_serve.bench.inputs import astronaut_png, cache_dir, speech_wav, tiny_weights
from sonic_serve.bench.report import Report, Table

TARGET_P50_MS = 5.0
THREADS = 1          # torch intra-op threads: the single process and every replica alike


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def single_process(weights: Path, image: Path, audio: Path, settings, out: Path) -> tuple[float, dict]:
    """Wall time of the second (warm) run of the job in this process."""
    import torch

    from stages.local import JobInputs, LocalPipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        pipeline = LocalPipeline(weights, "cpu", torch.float32)
        walls, info = [], {}
        for n in range(2):
            start = time.perf_counter()
            result = pipeline.generate(JobInputs(image=image, audio=audio), settings, out / f"local-{n}.mp4")
            walls.append(time.perf_counter() - start)
            info = result.info
    finally:
        torch.set_num_threads(threads)
    return walls[-1], info


def makespan(durations: list[float], replicas: int) -> float:
    """Longest-first list scheduling of ``durations`` on ``replicas`` (what a step's windows need at best)."""
    loads = [0.0] * max(1, replicas)
    for d in sorted(durations, reverse=True):
        loads[loads.index(min(loads))] += d
    return max(loads)


def step_compute_bound(windows: list[dict[str, Any]], replicas: int) -> float:
    """The denoising compute of a job with no overhead: per step, its windows' replica times list-scheduled."""
    steps: dict[int, list[float]] = {}
    for w in windows:
        steps.setdefault(w["step"], []).append(float(w["seconds"]))
    return sum(makespan(s, replicas) for s in steps.values())


async def probe_dispatch(job_id: str, fused_ref, prepared, units: int) -> dict[str, Any]:
    """Send ``units`` denoising windows to the Diffusion deployment one at a time, through a FairDispatcher as the
    manager does, and time each: assigned = the replica accepted the request (Serve's rejection protocol answers
    when the replica starts it); done = the result is here; replica = the unit's own ``seconds``."""
    from ray import serve

    from deployments.dispatch import FairDispatcher
    from sonic_core.sampler import plan_windows

    handle = serve.get_deployment_handle("Diffusion", "sonic")
    dispatcher = FairDispatcher(lambda: 1)
    floor = []
    for _ in range(units):      # the floor: a call without payload or work to the same replicas
        start = time.perf_counter()
        ref = await handle.cached_jobs.remote()._to_object_ref()
        assigned = time.perf_counter()
        await ref
        floor.append({"dispatch": assigned - start, "round_trip": time.perf_counter() - start})
    steps = prepared.schedule.steps
    latents = prepared.latents
    rows = []
    sizes: dict[str, int] = {}
    for n in range(units):
        step = steps[n % len(steps)]
        windows = plan_windows(prepared.num_frames, step.index)
        frames = windows[n % len(windows)]
        slice_ = latents[:, frames]

        async def unit(step=step, frames=frames, slice_=slice_):
            start = time.perf_counter()
            response = handle.denoise.remote(job_id, [fused_ref], step, frames, slice_, ())
            ref = await response._to_object_ref()
            assigned = time.perf_counter()
            outcome = await ref
            return start, assigned, time.perf_counter(), outcome

        start, assigned, done, outcome = await dispatcher.submit(job_id, unit)
        if n == 0:     # the first request may fetch the job's conditioning: not a dispatch cost, skip it
            sizes = {"slice": slice_.nbytes, "result": outcome.result.latents.nbytes,
                     "slice_pickled": len(pickle.dumps(slice_)),
                     "result_pickled": len(pickle.dumps(outcome.result.latents)),
                     "request_pickled": len(pickle.dumps((job_id, step, frames, slice_, ()))),
                     "windows_per_step": len(plan_windows(prepared.num_frames, 0))}
            continue
        rows.append({"dispatch": assigned - start, "round_trip": done - start, "replica": outcome.seconds,
                     "loaded": outcome.loaded_conditioning})
    return {"rows": rows, "sizes": sizes, "floor": floor}


def pipeline_run(args: Any, weights: Path, image: Path, audio: Path, home: Path) -> dict[str, Any]:
    from ray import serve

    from deployments.jobs import JobParams, create_job
    from deployments.local_stack import LocalStack
    from deployments.s3server import free_port

    replicas = {"Diffusion": args.diffusion_replicas, "AudioEncoder": 1, "ImageEncoder": 1, "Fusion": 1,
                "PostProcess": 1, "Ingress": 1}
    stack = LocalStack(home=home, weights=str(weights), num_cpus=4, http_port=free_port(), dtype="fp32",
                       replicas=replicas, extra_args={"torch_threads": THREADS, "device": "cpu"}, gpus=0)
    stack.start()
    try:
        storage = stack.storage()
        manager = serve.get_deployment_handle("JobManager", "sonic")
        params = JobParams.from_dict({"steps": args.steps, "min_resolution": args.min_resolution, "seed": 42})
        walls, record = [], {}
        for _ in range(2):           # the second run is the warm one
            start = time.perf_counter()
            record = create_job(storage, "local", params, image.read_bytes(), audio.read_bytes(), "portrait.png",
                                "speech.wav")
            result = manager.run.remote("local", record["id"]).result(timeout_s=1800)
            walls.append(time.perf_counter() - start)
            record = result["record"]
            if record["state"] != "succeeded":
                raise RuntimeError(f"pipeline job {record['state']}: {record.get('error')}")
        # the probe: the same job's conditioning and latents, through the real stages
        audio_ref = serve.get_deployment_handle("AudioEncoder", "sonic").encode.remote(
            record["inputs"]["audio"], None)._to_object_ref_sync()
        image_ref = serve.get_deployment_handle("ImageEncoder", "sonic").encode.remote(
            record["inputs"]["image"], None, "full", 0.5, args.min_resolution)._to_object_ref_sync()
        fused_ref = serve.get_deployment_handle("Fusion", "sonic").fuse.remote(
            audio_ref, image_ref)._to_object_ref_sync()
        diffusion = serve.get_deployment_handle("Diffusion", "sonic")
        probe_id = "bench-probe"
        prepared = diffusion.prepare.remote(probe_id, [fused_ref], 42, args.steps, 1.0, 2.0, 7.5).result()
        probe = asyncio.run(probe_dispatch(probe_id, fused_ref, prepared, args.probe_units + 1))
        diffusion.release.remote([probe_id]).result()
        return {"wall": walls[-1], "record": record, "probe": probe}
    finally:
        stack.stop()


def run(args: Any) -> Report:
    from sonic_core.engine import GenerationSettings

    root = cache_dir(args.cache_dir)
    weights = Path(args.weights) if args.weights else tiny_weights(root)
    image, audio = astronaut_png(root), speech_wav(root, args.seconds)
    settings = GenerationSettings(steps=args.steps, min_resolution=args.min_resolution, seed=42)
    work = Path(tempfile.mkdtemp(prefix="sonic-bench-overhead-"))
    try:
        local_wall, info = single_process(weights, image, audio, settings, work)
        piped = pipeline_run(args, weights, image, audio, work / "home")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    record, probe = piped["record"], piped["probe"]
    rows, sizes = probe["rows"], probe["sizes"]
    dispatch_ms = [1000 * r["dispatch"] for r in rows]
    unit_ms = [1000 * (r["round_trip"] - r["replica"]) for r in rows]
    replica_ms = [1000 * r["replica"] for r in rows]
    windows = record["placement"]["windows"]
    steps = len({w["step"] for w in windows})
    compute = step_compute_bound(windows, args.diffusion_replicas)
    step_overhead_ms = 1000 * (float(record["timings_s"]["denoise"]) - compute) / steps
    per_step = sizes["windows_per_step"] * (sizes["slice"] + sizes["result"])
    per_step_pickled = sizes["windows_per_step"] * (sizes["request_pickled"] + sizes["result_pickled"])
    p50, p95 = percentile(dispatch_ms, 0.5), percentile(dispatch_ms, 0.95)

    frames = info["frames"]
    title = (f"Tiny job: {args.seconds:g} s speech ({frames} output frames), {args.steps} steps, "
             f"{args.min_resolution} px, fp32 CPU, {THREADS} torch thread per process, "
             f"{args.diffusion_replicas} Diffusion replicas")
    walls = Table(title, ["run", "wall s", "notes"])
    walls.add("single process (LocalPipeline)", local_wall, "second (warm) run; model loading excluded")
    walls.add("pipeline (LocalStack, real app)", piped["wall"],
              "second run; S3 upload + JobManager.run until succeeded")
    walls.add("difference", piped["wall"] - local_wall, "")
    timings = record["timings_s"]
    walls.add("pipeline stages", sum(float(v) for v in timings.values()),
              ", ".join(f"{k} {float(v):.2f}" for k, v in timings.items()))

    lat = Table(f"Diffusion units sent one at a time ({len(rows)} windows, after a warm-up window)",
                ["measure", "p50 ms", "p95 ms", "max ms"])
    lat.add("dispatch: handle call -> replica accepted it", p50, p95, max(dispatch_ms))
    lat.add("overhead per unit: round trip - replica time", percentile(unit_ms, 0.5), percentile(unit_ms, 0.95),
            max(unit_ms))
    lat.add("replica time (`seconds`)", percentile(replica_ms, 0.5), percentile(replica_ms, 0.95), max(replica_ms))
    floor_dispatch = [1000 * r["dispatch"] for r in probe["floor"]]
    floor_rt = [1000 * r["round_trip"] for r in probe["floor"]]
    lat.add("floor: no-op call (`cached_jobs`), dispatch", percentile(floor_dispatch, 0.5),
            percentile(floor_dispatch, 0.95), max(floor_dispatch))
    lat.add("floor: no-op call, round trip", percentile(floor_rt, 0.5), percentile(floor_rt, 0.95), max(floor_rt))

    data = Table("Object-store bytes per denoising step (tensors actually sent)",
                 ["item", "bytes", "per step"])
    data.add("latent slice sent per window", sizes["slice"], sizes["windows_per_step"] * sizes["slice"])
    data.add("result latents per window", sizes["result"], sizes["windows_per_step"] * sizes["result"])
    data.add("request pickled (slice + step + frames)", sizes["request_pickled"],
             sizes["windows_per_step"] * sizes["request_pickled"])
    data.add("result pickled", sizes["result_pickled"], sizes["windows_per_step"] * sizes["result_pickled"])

    met = "met" if p50 <= TARGET_P50_MS else "NOT met"
    notes = [
        f"dispatch p50 target ≤ {TARGET_P50_MS:g} ms: {met} ({p50:.2f} ms).",
        "Dispatch is measured in the benchmark process with the Diffusion deployment's handle and a "
        "FairDispatcher, as the manager sends a window: from `.remote()` until the request was assigned, which "
        "with Serve's rejection protocol (max_ongoing_requests set) is when the replica accepted it and starts "
        "it, plus that small reply. The job record's `placement.windows[].seconds` is the replica's own time, so "
        "it cannot give the manager-side latency: it needs a manager-side `dispatched_at` and the replica's "
        "`started_at` (wall clock) per window.",
        "The floor rows are a no-op method of the same deployment, called the same way: what Serve's handle path "
        "costs here without our payload or code.",
        f"Per step of the job: denoise time minus the step's window times list-scheduled on the replicas = "
        f"{step_overhead_ms:.1f} ms (dispatch of the step's windows, Serve's retry backoff for units queued "
        "behind a busy replica, results back, merge, checkpoint and record written to S3).",
        f"The single process runs with {THREADS} torch thread; the pipeline has {args.diffusion_replicas} "
        f"Diffusion replica(s) of {THREADS} thread each, plus encoders and post-processing in their own "
        "processes.",
        f"{sizes['windows_per_step']} windows per step; per step the object store moves {per_step / 1e6:.3f} MB of "
        f"latents ({per_step_pickled / 1e6:.3f} MB pickled, with the requests' other arguments). At 512² fp16 a "
        "window's slice is 25·4·64·64·2 B = 0.82 MB each way.",
    ]
    result = {"local_s": round(local_wall, 3), "pipeline_s": round(piped["wall"], 3),
              "floor_dispatch_p50_ms": round(percentile(floor_dispatch, 0.5), 3),
              "dispatch_p50_ms": round(p50, 3), "dispatch_p95_ms": round(p95, 3),
              "unit_overhead_p50_ms": round(percentile(unit_ms, 0.5), 3),
              "step_overhead_ms": round(step_overhead_ms, 1), "bytes_per_step": per_step,
              "target_met": int(p50 <= TARGET_P50_MS)}
    return Report("overhead", "`bench overhead` (tiny weights, CPU)", [walls, lat, data], notes, result)
