"""Job parameters and job records (JSON in S3, the source of truth for a job's state).

A record is a plain dict so that the ingress, the manager and later API layers (idempotency, webhooks, SSE)
can add fields without a schema migration; :func:`new_record` fixes the fields every record has.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from deployments.storage import Keys, Storage
from sonic_core.engine import DEFAULT_SEED, PRESETS, GenerationSettings
from sonic_core.face import parse_face_bbox

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
# Stages in the order a job passes them (``stage`` in the record).
STAGES = ("queued", "encode", "fusion", "denoise", "decode", "postprocess", "done")
MAX_METADATA_BYTES = 16 << 10


class ParamError(ValueError):
    """A request parameter is out of range; ``field`` names it (like the media layer's MediaError)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}

    def __reduce__(self):
        return type(self), (self.field, self.message)


@dataclass
class JobParams:
    """What a client may set for one job. Defaults reproduce the reference (preset ``quality``)."""

    preset: str = "quality"
    steps: int | None = None
    min_resolution: int = 512
    dynamic_scale: float = 1.0
    motion_scale: float = 1.0
    seed: int = DEFAULT_SEED
    noise_strength: float = 1.0
    interpolate: bool | None = None
    guidance_image: float = 2.0
    guidance_audio: float = 7.5
    temporal_smoothing: float = 0.0
    face_bbox: str | None = None       # "x,y,w,h" in source pixels: skip face detection
    framing: str = "full"              # full | crop | vertical
    expand_ratio: float = 0.5
    duration_s: float | None = None    # trim or pad the audio
    crf: int = 18
    keep_resolution: bool = False
    lip_sync: bool = False             # estimate the audio/video offset and correct it at mux time
    fps: float | None = None           # 25 (RIFE-interpolated) or 12.5 (as generated); sets ``interpolate``
    webhook_url: str | None = None     # POSTed job.succeeded / job.failed / job.cancelled (signed)
    metadata: dict | None = None       # free-form JSON object echoed back in the record and webhooks

    # ``inference_steps`` is accepted as another name of ``steps``.
    ALIASES: ClassVar[dict[str, str]] = {"inference_steps": "steps"}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> JobParams:
        """Parse and validate (strings from a form are converted); unknown names are an error."""
        known = {f.name: f for f in fields(cls)}
        raw = dict(raw)
        for alias, name in cls.ALIASES.items():
            if alias in raw:
                if name in raw and raw[name] not in (None, "") and raw[name] != raw[alias]:
                    raise ParamError(alias, f"`{alias}` and `{name}` disagree; send one of them")
                raw[name] = raw.pop(alias)
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ParamError(unknown[0], f"unknown parameter (known: {', '.join(known)})")
        values: dict[str, Any] = {}
        for name, value in raw.items():
            if value is None or value == "":
                continue
            kind = str(known[name].type)
            try:
                if "dict" in kind:
                    values[name] = _json_object(name, value)
                elif "bool" in kind:
                    values[name] = _boolean(name, value)
                elif "int" in kind:
                    values[name] = _integer(value)
                elif "float" in kind:
                    if isinstance(value, bool):
                        raise TypeError
                    values[name] = float(value)
                else:
                    values[name] = str(value)
            except ParamError:
                raise
            except (TypeError, ValueError, OverflowError):
                raise ParamError(name, f"not a valid {kind.split(' ')[0]}: {str(value)[:80]!r}") from None
        params = cls(**values)
        params.validate()
        return params

    def validate(self) -> None:
        def check(ok: bool, name: str, message: str) -> None:
            if not ok:
                raise ParamError(name, message)

        check(self.preset in PRESETS, "preset", f"must be one of {', '.join(PRESETS)}")
        check(self.steps is None or 1 <= self.steps <= 100, "steps", "must be 1-100")
        check(64 <= self.min_resolution <= 1536 and self.min_resolution % 64 == 0, "min_resolution",
              "must be a multiple of 64 in 64-1536")
        check(0 <= self.dynamic_scale <= 4, "dynamic_scale", "must be in 0-4")
        check(0 <= self.motion_scale <= 4, "motion_scale", "must be in 0-4")
        check(0 <= self.seed < 2**63, "seed", "must be a non-negative 63-bit integer")
        check(0 < self.noise_strength <= 1, "noise_strength", "must be in (0, 1]")
        check(0 <= self.guidance_image <= 20, "guidance_image", "must be in 0-20")
        check(0 <= self.guidance_audio <= 20, "guidance_audio", "must be in 0-20")
        check(0 <= self.temporal_smoothing <= 1, "temporal_smoothing", "must be in 0-1")
        check(self.framing in ("full", "crop", "vertical"), "framing", "must be full, crop or vertical")
        check(0 <= self.expand_ratio <= 2, "expand_ratio", "must be in 0-2")
        check(0 <= self.crf <= 51, "crf", "must be 0-51")
        check(self.duration_s is None or 0.2 <= self.duration_s <= 1800, "duration_s", "must be 0.2-1800 seconds")
        check(self.fps is None or self.fps in (12.5, 25.0), "fps", "must be 25 or 12.5")
        check(self.fps is None or self.interpolate is None or self.interpolate == (self.fps == 25.0), "fps",
              "contradicts `interpolate` (25 fps is interpolated, 12.5 fps is not); send one of them")
        if self.webhook_url is not None:
            check(len(self.webhook_url) <= 2048 and self.webhook_url.lower().startswith(("http://", "https://")),
                  "webhook_url", "must be an http:// or https:// URL of at most 2048 characters")
        if self.metadata is not None:
            try:
                encoded = json.dumps(self.metadata, ensure_ascii=False).encode("utf-8")
            except (UnicodeEncodeError, RecursionError, ValueError):
                raise ParamError("metadata", "must be valid Unicode JSON of limited depth") from None
            check(len(encoded) <= MAX_METADATA_BYTES, "metadata", f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
        if self.face_bbox:
            try:
                parse_face_bbox(self.face_bbox)
            except ValueError as exc:
                raise ParamError("face_bbox", str(exc)) from None

    def settings(self) -> GenerationSettings:
        """The engine settings: the preset, then every explicitly set value."""
        settings = GenerationSettings(**PRESETS[self.preset])
        for name in ("min_resolution", "dynamic_scale", "motion_scale", "seed", "noise_strength",
                     "guidance_image", "guidance_audio", "temporal_smoothing"):
            setattr(settings, name, getattr(self, name))
        if self.steps is not None:
            settings.steps = self.steps
        if self.interpolate is not None:
            settings.interpolate = self.interpolate
        if self.fps is not None:
            settings.interpolate = self.fps == 25.0
        return settings

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(name)


def _integer(value: Any) -> int:
    """An int from an int, an integral float or a decimal string; never from a bool."""
    if isinstance(value, bool):
        raise TypeError("bool")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("fraction")
        return int(value)
    return int(str(value).strip())


def _json_object(name: str, value: Any) -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ParamError(name, "must be a JSON object") from None
        except RecursionError:
            raise ParamError(name, "is nested too deeply") from None
    if not isinstance(value, dict):
        raise ParamError(name, "must be a JSON object")
    return value


def new_job_id() -> str:
    """Time-ordered, unguessable: ``j`` + 11 hex digits of milliseconds + 12 random hex digits."""
    return f"j{int(time.time() * 1000):011x}{secrets.token_hex(6)}"


def now() -> float:
    return round(time.time(), 3)


def new_record(job_id: str, tenant: str, params: JobParams, inputs: dict[str, str],
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    t = now()
    return {
        "id": job_id,
        "tenant": tenant,
        "state": QUEUED,
        "stage": "queued",
        "progress": {"stage": "queued", "done": 0, "total": 0, "fraction": 0.0},
        "params": params.to_dict(),
        "inputs": inputs,
        "output": None,
        "error": None,
        "warnings": [],
        "created_at": t,
        "updated_at": t,
        "started_at": None,
        "finished_at": None,
        "timings_s": {},
        "placement": {},
        "metadata": params.metadata,
        "history": [{"state": QUEUED, "at": t}],
        **(extra or {}),
    }


def set_state(record: dict[str, Any], state: str, **fields: Any) -> None:
    """Move ``record`` to ``state`` (appending to its ``history``) and set other fields with it."""
    at = now()
    record.update(state=state, **fields)
    if state in TERMINAL:
        record.setdefault("finished_at", at)
        record["finished_at"] = record["finished_at"] or at
    record.setdefault("history", []).append({"state": state, "at": at})


def public_view(record: dict[str, Any]) -> dict[str, Any]:
    """What an API client sees of a record (S3 keys of inputs and outputs stay server-side)."""
    hidden = {"inputs", "trace", "owner", "checkpoint"}
    view = {k: v for k, v in record.items() if k not in hidden}
    if record.get("output"):
        view["output"] = {k: v for k, v in record["output"].items() if not k.endswith("_key")}
    return view


def _suffix(filename: str | None) -> str:
    suffix = Path(filename or "").suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ".bin"


def create_job(storage: Storage, tenant: str, params: JobParams, image: bytes, audio: bytes,
               image_name: str | None = None, audio_name: str | None = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Upload the inputs and write the queued record; the manager is told separately."""
    job_id = new_job_id()
    inputs = {"image": Keys.input(tenant, job_id, "image" + _suffix(image_name)),
              "audio": Keys.input(tenant, job_id, "audio" + _suffix(audio_name))}
    storage.put_bytes(inputs["image"], image)
    storage.put_bytes(inputs["audio"], audio)
    record = new_record(job_id, tenant, params, inputs, extra)
    storage.put_json(Keys.job(tenant, job_id), record)
    mark_active(storage, tenant, job_id)
    return record


def mark_active(storage: Storage, tenant: str, job_id: str) -> None:
    """Index of unfinished jobs: the JobManager resumes every job marked here when it (re)starts."""
    storage.put_bytes(Keys.active(tenant, job_id), b"")
