"""Wall-clock timings of a job's stages, as reported in its metadata."""

from __future__ import annotations

import time


class LapTimer:
    """``lap(name)`` records the seconds since the previous lap (or since creation) under ``name``."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._clock, 3)
        self._clock = now
