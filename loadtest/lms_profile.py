"""What the simulated LMS back ends send, read from the environment (no locust import: unit-testable).

Every knob is an env var (see loadtest/README.md); the defaults model a production morning of teachers
uploading lecture clips: mostly short clips, some medium, a few long ones.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ClipClass:
    """A share of the traffic (``weight``) whose audio lasts ``lo``-``hi`` seconds (uniform)."""

    name: str
    weight: float
    lo: float
    hi: float


DEFAULT_MIX = (ClipClass("short", 70, 2, 10), ClipClass("medium", 25, 10, 60), ClipClass("long", 5, 60, 300))
DEFAULT_PRESETS = {"quality": 0.7, "fast": 0.3}
PROGRESS_MODES = ("poll", "sse")
UPLOAD_MODES = ("multipart", "presigned")
SHAPES = ("", "morning")
SERVER_MIN_SECONDS = 0.2      # the API refuses shorter recordings

# The morning burst as (fraction of the run, fraction of the peak users), linearly interpolated: a few early
# uploads, the rush before the first lessons, a plateau, then a long tail.
MORNING_BURST = ((0.0, 0.1), (0.15, 0.4), (0.25, 1.0), (0.55, 1.0), (0.75, 0.4), (0.9, 0.15), (1.0, 0.15))


class SettingsError(ValueError):
    """An env var has a bad value; the message names it."""


def _json(env: Mapping[str, str], name: str, default: Any) -> Any:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{name} is not JSON: {exc}") from None


def _number(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, not {raw!r}") from None
    if value < 0:
        raise SettingsError(f"{name} must be >= 0")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, choices[0]).strip().lower()
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(c or '(empty)' for c in choices)}, not {value!r}")
    return value


def parse_mix(raw: Any) -> tuple[ClipClass, ...]:
    """``{"short": [weight, lo_s, hi_s], ...}`` -> clip classes."""
    if not isinstance(raw, dict) or not raw:
        raise SettingsError('SONIC_LOAD_MIX must be a JSON object like {"short": [70, 2, 10]}')
    mix = []
    for name, spec in raw.items():
        if not (isinstance(spec, list) and len(spec) == 3 and all(isinstance(v, int | float) for v in spec)):
            raise SettingsError(f"SONIC_LOAD_MIX[{name!r}] must be [weight, min_seconds, max_seconds]")
        weight, lo, hi = map(float, spec)
        if weight < 0 or lo <= 0 or hi < lo:
            raise SettingsError(f"SONIC_LOAD_MIX[{name!r}]: need weight >= 0 and 0 < min <= max")
        mix.append(ClipClass(str(name), weight, lo, hi))
    if not sum(c.weight for c in mix):
        raise SettingsError("SONIC_LOAD_MIX weights sum to 0")
    return tuple(mix)


def parse_presets(raw: Any) -> dict[str, float]:
    if isinstance(raw, str):
        raw = {raw: 1.0}
    if not isinstance(raw, dict) or not raw or any(not isinstance(w, int | float) or w < 0 for w in raw.values()):
        raise SettingsError('SONIC_LOAD_PRESETS must be a preset name or {"quality": 0.7, "fast": 0.3}')
    if not sum(raw.values()):
        raise SettingsError("SONIC_LOAD_PRESETS weights sum to 0")
    return {str(k): float(v) for k, v in raw.items()}


def _presets(env: Mapping[str, str]) -> dict[str, float]:
    """``SONIC_LOAD_PRESETS``: one preset name, or JSON weights."""
    raw = env.get("SONIC_LOAD_PRESETS", "").strip()
    if raw and not raw.startswith("{"):
        return parse_presets(raw)
    return parse_presets(_json(env, "SONIC_LOAD_PRESETS", DEFAULT_PRESETS))


@dataclass
class Settings:
    api_key: str = ""
    mix: tuple[ClipClass, ...] = DEFAULT_MIX
    presets: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PRESETS))
    params: dict[str, Any] = field(default_factory=dict)     # sent with every job, over the preset
    min_seconds: float = 1.0
    max_seconds: float | None = None
    scale: float = 1.0
    progress: str = "poll"
    poll_s: float = 2.0
    upload: str = "multipart"
    wait_min_s: float = 1.0
    wait_max_s: float = 10.0
    job_timeout_s: float = 1800.0
    backpressure_max_s: float = 600.0
    list_weight: int = 1
    shape: str = ""
    idempotency: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        params = _json(env, "SONIC_LOAD_PARAMS", {})
        if not isinstance(params, dict):
            raise SettingsError("SONIC_LOAD_PARAMS must be a JSON object")
        wait = _json(env, "SONIC_LOAD_WAIT", [1, 10])
        if not (isinstance(wait, list) and len(wait) == 2 and 0 <= wait[0] <= wait[1]):
            raise SettingsError("SONIC_LOAD_WAIT must be [min_seconds, max_seconds]")
        settings = cls(
            api_key=env.get("SONIC_API_KEY", "").strip(),
            mix=parse_mix(_json(env, "SONIC_LOAD_MIX", None)) if env.get("SONIC_LOAD_MIX", "").strip() else DEFAULT_MIX,
            presets=_presets(env),
            params=params,
            min_seconds=_number(env, "SONIC_LOAD_MIN_SECONDS", 1.0),
            max_seconds=_number(env, "SONIC_LOAD_MAX_SECONDS", None),
            scale=_number(env, "SONIC_LOAD_SCALE", 1.0),
            progress=_choice(env, "SONIC_LOAD_PROGRESS", PROGRESS_MODES),
            poll_s=_number(env, "SONIC_LOAD_POLL_S", 2.0),
            upload=_choice(env, "SONIC_LOAD_UPLOAD", UPLOAD_MODES),
            wait_min_s=float(wait[0]),
            wait_max_s=float(wait[1]),
            job_timeout_s=_number(env, "SONIC_LOAD_JOB_TIMEOUT_S", 1800.0),
            backpressure_max_s=_number(env, "SONIC_LOAD_BACKPRESSURE_MAX_S", 600.0),
            list_weight=int(_number(env, "SONIC_LOAD_LIST_WEIGHT", 1)),
            shape=_choice(env, "SONIC_LOAD_SHAPE", SHAPES),
            idempotency=env.get("SONIC_LOAD_IDEMPOTENCY", "1").strip().lower() not in ("0", "false", "no"),
        )
        if settings.min_seconds < SERVER_MIN_SECONDS:
            raise SettingsError(f"SONIC_LOAD_MIN_SECONDS must be at least {SERVER_MIN_SECONDS}")
        if settings.max_seconds is not None and settings.max_seconds < settings.min_seconds:
            raise SettingsError("SONIC_LOAD_MAX_SECONDS is below SONIC_LOAD_MIN_SECONDS")
        return settings

    def seconds(self, raw: float) -> float:
        """A drawn clip length after scaling and clamping, to 0.1 s."""
        value = max(self.min_seconds, raw * self.scale)
        if self.max_seconds is not None:
            value = min(value, self.max_seconds)
        return round(value, 1)

    def longest(self) -> float:
        return self.seconds(max(c.hi for c in self.mix))

    def pick_clip(self, rng: random.Random) -> tuple[str, float]:
        """(clip class name, audio seconds) for one job."""
        (clip,) = rng.choices(self.mix, weights=[c.weight for c in self.mix])
        return clip.name, self.seconds(rng.uniform(clip.lo, clip.hi))

    def pick_preset(self, rng: random.Random) -> str:
        (preset,) = rng.choices(list(self.presets), weights=list(self.presets.values()))
        return preset


def burst_users(elapsed_s: float, total_s: float, peak: int, curve=MORNING_BURST) -> int | None:
    """Users wanted ``elapsed_s`` into a burst run of ``total_s`` peaking at ``peak``; None once it is over."""
    if elapsed_s >= total_s:
        return None
    at = max(0.0, elapsed_s / total_s)
    for (t0, u0), (t1, u1) in zip(curve, curve[1:], strict=False):
        if t0 <= at <= t1:
            share = u0 + (u1 - u0) * (at - t0) / (t1 - t0) if t1 > t0 else u1
            return max(1, round(peak * share))
    return max(1, round(peak * curve[-1][1]))
