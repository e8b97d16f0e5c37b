"""Denoising as a wavefront: each window starts as soon as the windows of the previous step it reads are back.

A step's windows tile the clip and the next step's windows are shifted by 7 frames, so a window of step n+1
reads two (at the wrap, three) windows of step n. Waiting for a whole step before starting the next leaves
replicas idle at every step boundary: for the last, partly filled wave of windows, and while the manager
merges and slices. Here windows of consecutive steps overlap in time and the result is the same, bit for bit
(see :class:`sonic_core.sampler.StepMerge`).

Pure asyncio over caller-supplied coroutines: no Ray import, so it is unit-tested on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import torch

from sonic_core.sampler import StepMerge, window_dependencies

# (step position, window index, frames, latents slice) -> the unit's outcome
RunWindow = Callable[[int, int, list[int], torch.Tensor], Awaitable[Any]]


class Wavefront:
    """Runs steps ``first .. total-1`` of one job's denoising.

    ``plan(n)`` gives step n's windows (frame lists); ``run_window`` runs one window and returns an outcome
    whose latents ``result_of(outcome)`` gives. Callbacks, all on the event loop: ``on_step_start(n, windows)``
    before the step's first window is sent, ``on_window(n, index, frames, outcome)`` as each returns, and
    ``on_step_done(n, latents)`` once the step is merged (steps complete in order).
    """

    def __init__(self, num_frames: int, total_steps: int, plan: Callable[[int], list[list[int]]],
                 run_window: RunWindow, result_of: Callable[[Any], torch.Tensor],
                 on_step_start: Callable[[int, list[list[int]]], None] | None = None,
                 on_window: Callable[[int, int, list[int], Any], None] | None = None,
                 on_step_done: Callable[[int, torch.Tensor], None] | None = None):
        self.num_frames = num_frames
        self.total_steps = total_steps
        self._plan = plan
        self._run_window = run_window
        self._result_of = result_of
        self._on_step_start = on_step_start or (lambda n, windows: None)
        self._on_window = on_window or (lambda n, index, frames, outcome: None)
        self._on_step_done = on_step_done or (lambda n, latents: None)
        self._windows: dict[int, list[list[int]]] = {}
        self._merges: dict[int, StepMerge] = {}
        self._waiting: dict[int, list[int]] = {}          # per step: inputs still missing, per window
        self._dependents: dict[int, list[list[int]]] = {}  # per step: windows of the next step reading each window
        self._sent: dict[int, int] = {}
        self._tasks: dict[asyncio.Task, tuple[int, int]] = {}
        self.max_steps_in_flight = 0                      # most distinct steps with windows running at once

    async def run(self, first: int, latents: torch.Tensor) -> torch.Tensor:
        """Denoise ``latents`` (the state after ``first`` steps) to the end; returns the final latents."""
        if first >= self.total_steps:
            return latents
        self._merges[first - 1] = StepMerge.of(latents)
        self._add_step(first)
        for index in range(len(self._windows[first])):
            self._send(first, index)
        result = latents
        try:
            while self._tasks:
                done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    step, index = self._tasks.pop(task)
                    outcome = task.result()
                    finished = self._window_done(step, index, outcome)
                    if finished is not None:
                        result = finished
        finally:
            await self._cancel_all()
        return result

    # -- bookkeeping ------------------------------------------------------------------------------

    def _add_step(self, step: int) -> None:
        """Plan ``step`` and link it to the previous step's windows."""
        windows = self._windows[step] = self._plan(step)
        self._merges[step] = StepMerge(self.num_frames, windows)
        self._sent[step] = 0
        if step - 1 in self._windows:
            needs = window_dependencies(self.num_frames, self._windows[step - 1], windows)
            self._waiting[step] = [len(n) for n in needs]
            dependents: list[list[int]] = [[] for _ in self._windows[step - 1]]
            for index, inputs in enumerate(needs):
                for source in inputs:
                    dependents[source].append(index)
            self._dependents[step - 1] = dependents
        else:
            self._waiting[step] = [0] * len(windows)

    def _send(self, step: int, index: int) -> None:
        if self._sent[step] == 0:
            if step + 1 < self.total_steps:
                self._add_step(step + 1)     # so this step's windows know their dependents when they return
            self._on_step_start(step, self._windows[step])
        frames = self._windows[step][index]
        source = self._merges[step - 1]
        latents = source.take(frames)
        self._sent[step] += 1
        if self._sent[step] == len(self._windows[step]):
            del self._merges[step - 1]       # every reader of the previous step has its slice
        task = asyncio.get_running_loop().create_task(self._run_window(step, index, frames, latents))
        self._tasks[task] = (step, index)
        self.max_steps_in_flight = max(self.max_steps_in_flight, len({s for s, _ in self._tasks.values()}))

    def _window_done(self, step: int, index: int, outcome: Any) -> torch.Tensor | None:
        merge = self._merges[step]
        merge.add(index, self._result_of(outcome))
        frames = self._windows[step][index]
        self._on_window(step, index, frames, outcome)
        readers = self._dependents[step][index] if step in self._dependents else []
        for reader in readers:
            waiting = self._waiting[step + 1]
            waiting[reader] -= 1
            if waiting[reader] == 0:
                self._send(step + 1, reader)
        if not merge.complete:
            return None
        latents = merge.latents()
        self._dependents.pop(step, None)
        self._waiting.pop(step, None)
        self._on_step_done(step, latents)
        return latents if step == self.total_steps - 1 else None

    async def _cancel_all(self) -> None:
        """On failure or cancellation: stop waiting for the windows still out (their results are dropped)."""
        tasks = list(self._tasks)
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
