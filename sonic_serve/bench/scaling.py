"""``sonic-serve bench scaling``: a SIMULATION of how the real JobManager and FairDispatcher spread one job (and a
stream of jobs) over 1…N Diffusion replicas whose unit costs come from a FLOP model (see simulated_diffusion)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from deployments.config import AppConfig
from sonic_serve.bench.report import Report, Table
from sonic_serve.bench.sim_app import frames_for
from sonic_serve.bench.sim_cluster import SimCluster, manager_step_costs
from sonic_serve.bench.simulated_diffusion import SimConfig

WINDOW = 25
DECODE_CHUNK = 8
TARGETS = {8: 0.90, 16: 0.80}
BUSY_TARGET = 0.95


def schedule_sigmas(steps: int) -> list[float]:
    """The real SVD-xt Euler schedule's sigmas (steps + 1 values)."""
    from sonic_core.sampler import make_schedule
    from sonic_core.tiny_weights import SCHEDULER_CONFIG

    schedule = make_schedule(SCHEDULER_CONFIG, steps)
    return [float(s.sigma) for s in schedule.steps] + [float(schedule.steps[-1].sigma_next)]


def ideal_seconds(frames: int, steps: int, replicas: int, sim: SimConfig) -> float:
    """Makespan with no overhead: the job's window-steps spread evenly over N replicas (the manager's wavefront
    has no step barrier), but no shorter than the chain of one window per step; then decode chunks
    list-scheduled on N replicas (decode starts after the last step)."""
    windows = math.ceil(frames / WINDOW)
    denoise = max(steps * windows / replicas, steps) * sim.window_s()
    loads = [0.0] * replicas
    for start in range(0, frames, DECODE_CHUNK):
        i = loads.index(min(loads))
        loads[i] += sim.decode_s(min(DECODE_CHUNK, frames - start))
    return denoise + max(loads)


def read_intervals(log_dir: Path) -> list[tuple[str, str, str, float, float]]:
    rows = []
    for path in log_dir.glob("*.tsv"):
        for line in path.read_text().splitlines():
            replica, kind, job, start, end = line.split("\t")
            rows.append((replica, kind, job, float(start), float(end)))
    return rows


def idle_gaps(intervals: list[tuple[str, str, str, float, float]], since: float = 0.0) -> list[float]:
    """Per replica, the idle time between one unit's end and its next unit's start (seconds)."""
    by_replica: dict[str, list[tuple[float, float]]] = {}
    for replica, _, _, start, end in intervals:
        if start >= since:
            by_replica.setdefault(replica, []).append((start, end))
    gaps = []
    for spans in by_replica.values():
        spans.sort()
        gaps += [max(0.0, b[0] - a[1]) for a, b in zip(spans, spans[1:], strict=False)]
    return gaps


def median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def busy_fraction(intervals: list[tuple[str, str, str, float, float]], replicas: int, since: float = 0.0) -> float:
    """Sum of unit time over replicas x span (first unit start to last unit end), for units started after
    ``since`` (wall clock)."""
    intervals = [r for r in intervals if r[3] >= since]
    if not intervals:
        return float("nan")
    start = min(r[3] for r in intervals)
    end = max(r[4] for r in intervals)
    busy = sum(r[4] - r[3] for r in intervals)
    return busy / (replicas * (end - start)) if end > start else float("nan")


def diffusion_seconds(record: dict[str, Any]) -> float:
    timings = record["timings_s"]
    return float(timings["denoise"]) + float(timings["decode"])


def run(args: Any) -> Report:
    replica_counts = sorted({int(x) for x in str(args.replicas).split(",") if x.strip()})
    if not replica_counts or replica_counts[0] < 1:
        raise ValueError("--replicas wants positive counts, e.g. 1,2,4,8,16")
    cluster = SimCluster(args, schedule_sigmas(args.steps))
    sim = cluster.sim_config(Path("."))
    frames = frames_for(args.clip_seconds)
    windows = math.ceil(frames / WINDOW)
    result: dict[str, Any] = {"simulated": 1}
    cluster.start()
    try:
        table, times, ideal = _efficiency(cluster, args, replica_counts, frames, windows, sim)
        base, top = replica_counts[0], replica_counts[-1]
        efficiency = {n: times[base] * base / (n * times[n]) for n in replica_counts}
        result["efficiency"] = ",".join(f"{n}:{efficiency[n]:.3f}" for n in replica_counts)
        for n in replica_counts:
            result[f"efficiency_{n}"] = round(efficiency[n], 4)
        notes = [
            "SIMULATION: Diffusion replicas sleep for the modelled GPU time of each unit (one 25-frame 512² "
            f"window-step with 3 CFG branches = {sim.window_tflop:g} TFLOP, VAE decode {sim.decode_tflop_per_frame:g} "
            f"TFLOP per frame, at {args.gpu_tflops:g} TFLOP/s: {sim.window_s() / args.time_scale:.3f} s per "
            "window-step before time scaling). The JobManager, FairDispatcher, Serve routing, object store and "
            "S3 record writes are the real ones; encode, fusion and post-processing are instant stand-ins.",
            "T = the job's `timings_s.denoise + decode` (as the manager measured them); efficiency = "
            f"T{base}·{base} / (N·T_N). Ideal = no overhead: steps·windows/N window-times (windows of consecutive "
            "steps overlap: the manager's wavefront has no step barrier) plus list-scheduled decode chunks.",
        ]
        if base != 1:
            notes.append(f"1 replica was not measured: T1 is taken as {base}·T{base}.")
        for n, target in TARGETS.items():
            if n in efficiency:
                met = "met" if efficiency[n] >= target else "NOT met"
                notes.append(f"target efficiency ≥ {target:.2f} at {n} replicas: {met} ({efficiency[n]:.3f}).")
        costs = manager_step_costs(cluster.storage, frames, args.steps, args.min_resolution // 8)
        cost_table, per_step = _cost_table(costs, args.steps)
        result["step_manager_ms"] = round(1000 * per_step, 1)
        every = args.checkpoint_every if args.checkpoint_every is not None else AppConfig().checkpoint_every
        interval = AppConfig().checkpoint_interval_s
        serial = per_step - costs["checkpoint"] + (costs["checkpoint"] / every if every > 0 else 0.0)
        lost = times[top] - ideal[top]
        notes.append(f"Where the time goes at {top} replicas: {lost:.1f} s beyond the ideal, "
                     f"{1000 * lost / args.steps:.0f} ms per step. The manager's own work per step (table below, "
                     f"with a checkpoint every {every} step(s): about {1000 * serial:.0f} ms; the app writes at most "
                     f"one per {interval:g} s, plus the last) runs while windows compute — merging "
                     "window by window on its event loop, checkpoint and record uploads in threads — so it costs only "
                     "where it delays the next dispatch; the rest is Serve routing, the object store, and units "
                     "waiting in Serve's router retry backoff (25 ms doubling to 0.5 s) when every replica's slots "
                     "are full ('idle gap').")
        tables = [table, cost_table]
        if args.stream_jobs:
            stream, busy = _stream(cluster, args, top, sim)
            tables.append(stream)
            result["busy"] = round(busy, 4)
            met = "met" if busy >= BUSY_TARGET else "NOT met"
            notes.append(f"target busy ≥ {BUSY_TARGET:.2f} under a stream of jobs: {met} ({busy:.3f}); busy = unit "
                         "time on all replicas / (N × first unit start to last unit end).")
    finally:
        cluster.stop()
    overrides = whatif(args)
    if overrides:
        notes.insert(0, f"WHAT-IF run, not the app's configuration: {overrides}.")
        return Report("scaling-whatif", f"`bench scaling` what-if ({overrides}; SIMULATION)", tables, notes, result)
    return Report("scaling", "`bench scaling` (SIMULATION: modelled GPU time, real manager and dispatcher)",
                  tables, notes, result)


def _efficiency(cluster: SimCluster, args: Any, replica_counts: list[int], frames: int, windows: int,
                sim: SimConfig) -> tuple[Table, dict[int, float], dict[int, float]]:
    """One job of the clip per replica count (the fastest of ``--repeat``): the table, T_N and ideal T_N."""
    title = (f"SIMULATION — {args.clip_seconds:g} s clip ({frames} frames, {windows} windows/step), {args.steps} "
             f"steps, {args.gpu_tflops:g} TFLOP/s per replica, time scale {args.time_scale:g}")
    table = Table(title, ["replicas", "denoise s", "decode s", "T s", "job wall s", "ideal T s", "speed-up",
                          "efficiency", "ideal efficiency", "busy", "idle gap p50 ms"])
    times: dict[int, float] = {}
    ideal: dict[int, float] = {}
    for n in replica_counts:
        log_dir = cluster.root / f"n{n}"
        cluster.deploy(n, log_dir)
        # warm-up: a one-step job with a window per replica (routers, connections, code paths)
        cluster.run_jobs([min(2.0 * n, args.clip_seconds)], 1)
        best = None
        for _ in range(max(1, args.repeat)):      # the least disturbed of the repeats
            since, start = time.time(), time.perf_counter()
            (record,) = cluster.run_jobs([args.clip_seconds], args.steps)
            wall = time.perf_counter() - start
            if best is None or diffusion_seconds(record) < diffusion_seconds(best[0]):
                best = (record, wall, since, time.time())
        record, wall, since, until = best
        times[n] = diffusion_seconds(record)
        ideal[n] = ideal_seconds(frames, args.steps, n, sim)
        intervals = [r for r in read_intervals(log_dir) if r[4] <= until]
        timings = record["timings_s"]
        table.add(n, timings["denoise"], timings["decode"], times[n], wall, ideal[n], None, None, None,
                  busy_fraction(intervals, n, since), 1000 * median(idle_gaps(intervals, since)))
        if n != replica_counts[-1] or not args.stream_jobs:
            cluster.undeploy()
    base = replica_counts[0]
    for row in table.rows:
        n = row[0]
        row[6] = times[base] * base / times[n]
        row[7] = times[base] * base / (n * times[n])
        row[8] = ideal[base] * base / (n * ideal[n])
    return table, times, ideal


def _cost_table(costs: dict[str, float], steps: int) -> tuple[Table, float]:
    per_step = costs["merge"] + costs["slice"] + costs["checkpoint"] + costs["record"]
    table = Table(f"The manager's own work per denoising step of this job (same code, same S3, measured here; "
                  f"latents {costs['latents_mb']:.1f} MB fp16)", ["work", "ms per step", "s per job"])
    for name, label in (("merge", "merge_windows"), ("slice", "slice the next step's windows"),
                        ("checkpoint", "one latents checkpoint to S3"),
                        ("record", "job record to S3 (all placements)")):
        table.add(label, 1000 * costs[name], costs[name] * steps)
    table.add("sum (off the critical path: overlaps the windows)", 1000 * per_step, per_step * steps)
    return table, per_step


def _stream(cluster: SimCluster, args: Any, replicas: int, sim: SimConfig) -> tuple[Table, float]:
    """A stream of jobs on the deployment left up by :func:`_efficiency`: the table and the busy fraction."""
    log_dir = cluster.root / f"n{replicas}"
    since = time.time()
    clips = [args.stream_clip_seconds] * args.stream_jobs
    start = time.perf_counter()
    records = cluster.run_jobs(clips, args.steps, gap_s=args.stream_gap_s * args.time_scale)
    wall = time.perf_counter() - start
    cluster.undeploy()
    intervals = read_intervals(log_dir)
    busy = busy_fraction(intervals, replicas, since)
    work = sum(ideal_seconds(frames_for(c), args.steps, 1, sim) for c in clips)
    table = Table(f"SIMULATION — stream of {args.stream_jobs} jobs of {args.stream_clip_seconds:g} s, "
                  f"{args.stream_gap_s:g} s apart, {replicas} replicas",
                  ["jobs", "replicas", "wall s", "modelled work s", "work/(N·wall)", "busy", "idle gap p50 ms"])
    table.add(len(records), replicas, wall, work, work / (replicas * wall), busy,
              1000 * median(idle_gaps(intervals, since)))
    return table, busy


def whatif(args: Any) -> str:
    """The options that change the app's own configuration, as text ('' when none)."""
    changes = []
    if args.queue_per_replica is not None:
        changes.append(f"diffusion_queue_per_replica={args.queue_per_replica}")
    if args.replica_queue is not None and args.replica_queue != 1:
        changes.append(f"Diffusion max_ongoing_requests={1 + args.replica_queue} (the app's: 2)")
    if args.checkpoint_every is not None:
        changes.append(f"checkpoint_every={args.checkpoint_every}")
    if args.router_max_backoff_s is not None:
        changes.append(f"Serve router max backoff {args.router_max_backoff_s:g} s")
    return ", ".join(changes)
