"""The manager's fair dispatcher and small pieces of the pipeline that run without Ray."""

from __future__ import annotations

import asyncio

import pytest

from deployments.config import AppConfig, expand_env
from deployments.dispatch import FairDispatcher
from deployments.jobs import JobParams, ParamError, new_job_id
from deployments.local_stack import load_config, localize
from deployments.manager import overall_fraction


async def _unit(log: list[str], job: str, seconds: float = 0.01) -> str:
    log.append(job)
    await asyncio.sleep(seconds)
    return job


def test_a_late_small_job_is_not_stuck_behind_a_big_one():
    async def main():
        slots = 2
        dispatcher = FairDispatcher(lambda: slots)
        started: list[str] = []
        big = [asyncio.ensure_future(dispatcher.submit("big", lambda: _unit(started, "big"))) for _ in range(40)]
        await asyncio.sleep(0)          # the big job's first units are already running
        small = [asyncio.ensure_future(dispatcher.submit("small", lambda: _unit(started, "small")))
                 for _ in range(3)]
        await asyncio.gather(*big, *small)
        return started, dispatcher

    started, dispatcher = asyncio.run(main())
    assert len(started) == 43 and dispatcher.in_flight == 0
    # round-robin: after the two units already running, every other unit is the small job's until it is done
    assert started[:8] == ["big", "big", "big", "small", "big", "small", "big", "small"]


def test_capacity_bounds_units_in_flight_and_grows():
    async def main():
        capacity = {"n": 3}
        dispatcher = FairDispatcher(lambda: capacity["n"])
        peak = {"now": 0, "max": 0}
        gate = asyncio.Event()

        async def unit():
            peak["now"] += 1
            peak["max"] = max(peak["max"], peak["now"])
            await gate.wait()
            peak["now"] -= 1

        tasks = [asyncio.ensure_future(dispatcher.submit(f"j{i % 4}", unit)) for i in range(20)]
        await asyncio.sleep(0.01)
        first_peak = peak["max"]
        capacity["n"] = 6
        dispatcher.poke()
        await asyncio.sleep(0.01)
        second_peak = peak["max"]
        gate.set()
        await asyncio.gather(*tasks)
        return first_peak, second_peak

    assert asyncio.run(main()) == (3, 6)


def test_failed_job_cancels_its_pending_units_only():
    async def main():
        dispatcher = FairDispatcher(lambda: 1)
        gate = asyncio.Event()

        async def blocked():
            await gate.wait()
            return "ok"

        running = asyncio.ensure_future(dispatcher.submit("a", blocked))
        doomed = [asyncio.ensure_future(dispatcher.submit("a", blocked)) for _ in range(3)]
        other = asyncio.ensure_future(dispatcher.submit("b", blocked))
        await asyncio.sleep(0)
        assert dispatcher.cancel_job("a", RuntimeError("job a failed")) == 3
        gate.set()
        results = await asyncio.gather(*doomed, return_exceptions=True)
        return await running, results, await other

    first, cancelled, other = asyncio.run(main())
    assert first == "ok" and other == "ok"
    assert all(isinstance(r, RuntimeError) for r in cancelled)


def test_job_params_from_form_strings_and_validation():
    params = JobParams.from_dict({"steps": "2", "min_resolution": "128", "interpolate": "false", "seed": "5",
                                  "face_bbox": ""})
    settings = params.settings()
    assert (settings.steps, settings.min_resolution, settings.interpolate, settings.seed) == (2, 128, False, 5)
    assert JobParams.from_dict({"preset": "fast"}).settings().steps == 15
    for bad in ({"steps": 0}, {"min_resolution": 100}, {"framing": "wide"}, {"bogus": 1}, {"seed": "x"},
                {"face_bbox": "1,2,3"}):
        with pytest.raises(ParamError):
            JobParams.from_dict(bad)
    assert len({new_job_id() for _ in range(100)}) == 100


def test_app_args_expand_environment():
    env = {"SONIC_WEIGHTS": "s3://models/sonic"}
    assert expand_env("${SONIC_WEIGHTS:-/models/sonic}", env) == "s3://models/sonic"
    assert expand_env("${SONIC_DTYPE:-fp16}", env) == "fp16"
    config = AppConfig.from_args({"weights": "/w", "dtype": "fp32", "torch_threads": "2",
                                  "checkpoint_interval_s": "2.5", "diffusion_queue_per_replica": 0})
    assert (config.weights, config.torch_threads, config.checkpoint_interval_s) == ("/w", 2, 2.5)
    assert AppConfig.from_args({"checkpoint_interval_s": 0}).checkpoint_interval_s == 0.0
    with pytest.raises(ValueError):
        AppConfig.from_args({"nope": 1})


def test_serve_config_names_every_deployment_and_localizes():
    from deployments.app import DEPLOYMENTS

    config = load_config()
    (app,) = config["applications"]
    assert app["import_path"] == "deployments.app:build_app"
    assert [d["name"] for d in app["deployments"]] == list(DEPLOYMENTS)
    for dep in app["deployments"]:
        assert dep["graceful_shutdown_timeout_s"] > 20, dep["name"]    # Ray's default would cut long work
        assert "ray_actor_options" in dep and "max_ongoing_requests" in dep
    local = localize(config, args={"weights": "/w"}, replicas={"Diffusion": 2})
    deps = {d["name"]: d for d in local["applications"][0]["deployments"]}
    assert all(d["ray_actor_options"]["num_gpus"] == 0 for d in deps.values())
    assert deps["Diffusion"]["autoscaling_config"]["min_replicas"] == 2
    assert local["http_options"]["host"] == "127.0.0.1"


def test_overall_progress_is_monotonic():
    points = [overall_fraction(s, d, t) for s, d, t in
              [("encode", 0, 0), ("fusion", 0, 0), ("denoise", 0, 4), ("denoise", 4, 4), ("decode", 1, 2),
               ("postprocess", 0, 0), ("done", 1, 1)]]
    assert points == sorted(points) and points[-1] == 1.0


def test_build_app_reads_the_yaml_args_from_the_environment(monkeypatch):
    from ray.serve import Application

    from deployments.app import build_app

    monkeypatch.setenv("SONIC_WEIGHTS", "s3://models/sonic")
    for name in ("SONIC_DTYPE", "SONIC_S3_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    (app,) = load_config()["applications"]
    assert isinstance(build_app(app["args"]), Application)
    config = AppConfig.from_args(app["args"])
    assert (config.weights, config.dtype, config.s3_bucket) == ("s3://models/sonic", "fp16", "sonic")
