"""The wavefront sampler schedule: same latents as step-by-step merging, whatever order windows return in."""

from __future__ import annotations

import asyncio
import random

import pytest
import torch

from deployments.common import LatestOnly
from deployments.wavefront import Wavefront
from sonic_core.sampler import StepMerge, merge_windows, plan_windows, window_dependencies

STEPS = 5


def window_fn(step: int, frames: list[int], x: torch.Tensor) -> torch.Tensor:
    """A nonlinear stand-in for one denoising window: depends on the step, the frames and every input value."""
    position = torch.tensor(frames, dtype=x.dtype).view(1, -1, 1, 1, 1)
    return torch.sin(x * 1.37 + step) * 0.9 + 0.01 * position + x.mean() * 0.1


def start_latents(frames: int) -> torch.Tensor:
    return torch.randn((1, frames, 4, 3, 2), generator=torch.Generator().manual_seed(frames))


def stepwise(frames: int, latents: torch.Tensor, first: int = 0) -> torch.Tensor:
    for step in range(first, STEPS):
        windows = plan_windows(frames, step)
        results = [window_fn(step, w, latents[:, w]) for w in windows]
        latents = merge_windows(frames, windows, results)
    return latents


async def wavefront(frames: int, latents: torch.Tensor, first: int = 0, seed: int = 0, fail_at=None):
    rng = random.Random(seed)
    events: list[tuple] = []

    async def run_window(step, index, window, x):
        await asyncio.sleep(rng.random() * 0.004)
        if (step, index) == fail_at:
            raise RuntimeError("replica lost")
        return window_fn(step, window, x)

    front = Wavefront(frames, STEPS, lambda n: plan_windows(frames, n), run_window, lambda out: out,
                      on_step_start=lambda n, windows: events.append(("start", n, len(windows))),
                      on_window=lambda n, index, window, out: events.append(("window", n, index)),
                      on_step_done=lambda n, merged: events.append(("done", n, merged.clone())))
    return await front.run(first, latents), events, front


@pytest.mark.parametrize("frames", [10, 25, 26, 49, 50, 77, 160, 301])
def test_wavefront_equals_step_by_step_merging_bit_for_bit(frames):
    latents = start_latents(frames)
    expected = stepwise(frames, latents)
    for seed in range(3):
        got, events, _ = asyncio.run(wavefront(frames, latents, seed=seed))
        assert torch.equal(got, expected), (frames, seed)
        done = [e for e in events if e[0] == "done"]
        assert [e[1] for e in done] == list(range(STEPS))           # steps complete in order
        assert torch.equal(done[-1][2], expected)
        windows = len(plan_windows(frames, 0))
        assert sum(1 for e in events if e[0] == "window") == windows * STEPS


def test_windows_of_consecutive_steps_overlap_in_time():
    frames = 301     # 13 windows per step
    _, events, front = asyncio.run(wavefront(frames, start_latents(frames), seed=1))
    assert front.max_steps_in_flight >= 2
    first_done = events.index(next(e for e in events if e[0] == "done" and e[1] == 0))
    assert any(e[0] == "window" and e[1] == 1 for e in events[:first_done]), "step 1 waited for all of step 0"


def test_resume_from_a_later_step_matches():
    frames = 77
    latents = start_latents(frames)
    after_two = stepwise(frames, latents)  # reference for a full run
    middle = latents
    for step in range(2):
        windows = plan_windows(frames, step)
        middle = merge_windows(frames, windows, [window_fn(step, w, middle[:, w]) for w in windows])
    got, events, _ = asyncio.run(wavefront(frames, middle, first=2))
    assert torch.equal(got, after_two)
    assert {e[1] for e in events if e[0] == "start"} == {2, 3, 4}


def test_a_failed_window_fails_the_run_and_leaves_nothing_running():
    frames = 160

    async def scenario():
        with pytest.raises(RuntimeError, match="replica lost"):
            await wavefront(frames, start_latents(frames), fail_at=(2, 3))
        await asyncio.sleep(0.02)
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    assert asyncio.run(scenario()) == []


def test_dependencies_are_the_previous_windows_covering_the_frames():
    frames = 60
    before, after = plan_windows(frames, 0), plan_windows(frames, 1)
    deps = window_dependencies(frames, before, after)
    for window, inputs in zip(after, deps, strict=True):
        covering = {i for i, w in enumerate(before) if set(w) & set(window)}
        assert set(inputs) == covering and len(inputs) >= 2


def test_step_merge_refuses_early_reads_and_double_adds():
    windows = plan_windows(50, 1)
    merge = StepMerge(50, windows)
    merge.add(0, torch.ones((1, 25, 1, 1, 1)))
    with pytest.raises(ValueError, match="before every window"):
        merge.take(windows[1])
    with pytest.raises(ValueError, match="already merged"):
        merge.add(0, torch.ones((1, 25, 1, 1, 1)))
    with pytest.raises(ValueError, match="not merged yet"):
        merge.latents()
    assert torch.equal(merge.take(windows[0][7:]), torch.ones((1, 18, 1, 1, 1)))


def test_latest_only_skips_stale_values_and_reports_failures():
    async def scenario():
        seen: list[int] = []

        async def slow(value):
            await asyncio.sleep(0.01)
            if value == "boom":
                raise OSError("S3 down")
            seen.append(value)

        latest = LatestOnly(slow)
        latest.submit(0)
        await asyncio.sleep(0)       # the run for 0 starts; 1..3 are replaced by 4 while it runs
        for value in range(1, 5):
            latest.submit(value)
        await latest.flush()
        assert seen == [0, 4]
        latest.submit("boom")
        with pytest.raises(OSError, match="S3 down"):
            await latest.flush()
        latest.submit(7)          # the failure was reported once; later values run again
        await latest.flush()
        assert seen == [0, 4, 7]

    asyncio.run(scenario())
