"""Pydantic models of the API's bodies, for validation and for a rich OpenAPI document.

Job parameters are validated by :meth:`deployments.jobs.JobParams.from_dict` (one source of truth); the
:class:`JobParams` model here documents them and is kept equal to the dataclass by a test.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from sonic_core.engine import DEFAULT_SEED

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
REF_MARK = "x-ref"   # replaced by a real $ref when the OpenAPI document is built (see app._openapi)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Open(BaseModel):
    """Response models: documented fields; records may carry more."""

    model_config = ConfigDict(extra="allow")


# -- problems ---------------------------------------------------------------------------------------------


class FieldError(BaseModel):
    field: str = Field(description="The request field at fault (`image`, `audio`, `steps`, `items[2].image_key`)")
    message: str = Field(description="What is wrong with it")
    fix: str = Field(description="What to change")


class Problem(BaseModel):
    """RFC 7807 problem details (``application/problem+json``)."""

    type: str = Field(description="Stable URI naming the kind of error, https://sonic-serve.dev/problems/<slug>")
    title: str
    status: int
    detail: str = Field(description="Human-readable explanation of this occurrence")
    instance: str | None = Field(None, description="The request path")
    errors: list[FieldError] = Field(default_factory=list)


# -- job parameters ---------------------------------------------------------------------------------------


class JobParams(Strict):
    """Generation parameters. Every field is optional; the defaults reproduce the reference (preset
    ``quality``). As multipart form fields they are strings (`"true"`, `"25"`)."""

    preset: Literal["quality", "fast"] = Field("quality", description="`quality`: 25 steps; `fast`: 15 steps")
    steps: int | None = Field(None, ge=1, le=100, description="Denoising steps (overrides the preset)")
    inference_steps: int | None = Field(None, ge=1, le=100, description="Another name of `steps`")
    min_resolution: int = Field(512, ge=64, le=1536, multiple_of=64, description="Short side of the video, px")
    dynamic_scale: float = Field(1.0, ge=0, le=4, description="Scales both motion buckets (expressiveness)")
    motion_scale: float = Field(1.0, ge=0, le=4, description="Scales the head-motion bucket")
    seed: int = Field(DEFAULT_SEED, ge=0, lt=2**63, description="Noise seed: same inputs + seed = same video")
    noise_strength: float = Field(1.0, gt=0, le=1)
    interpolate: bool | None = Field(None, description="RIFE to 25 fps (default on); see `fps`")
    guidance_image: float = Field(2.0, ge=0, le=20, description="Classifier-free guidance on the portrait")
    guidance_audio: float = Field(7.5, ge=0, le=20, description="Classifier-free guidance on the speech")
    temporal_smoothing: float = Field(0.0, ge=0, le=1, description="Smooths per-frame motion (0: off)")
    face_bbox: str | None = Field(None, description="`x,y,w,h` in image pixels: skip face detection",
                                  examples=["180,60,140,170"])
    framing: Literal["full", "crop", "vertical"] = Field(
        "full", description="Whole image, square crop around the face, or 9:16 for phones")
    expand_ratio: float = Field(0.5, ge=0, le=2, description="Margin of the `crop` framing, in face sizes")
    duration_s: float | None = Field(None, ge=0.2, le=1800, description="Trim or pad the speech to this length")
    crf: int = Field(18, ge=0, le=51, description="H.264 quality (lower: better, bigger)")
    keep_resolution: bool = Field(False, description="Scale the video back to the framed portrait's size")
    lip_sync: bool = Field(False, description="Measure the audio/video offset and correct it when muxing")
    fps: Literal[25, 12.5] | None = Field(None, description="25 (interpolated) or 12.5 (as generated)")
    webhook_url: str | None = Field(None, max_length=2048,
                                    description="POSTed signed job.succeeded / job.failed / job.cancelled events")
    metadata: dict[str, Any] | None = Field(None, description="Your JSON object (≤ 16 KiB), echoed back")


# validated by JobParams.from_dict, documented as the JobParams model
ParamsField = Annotated[dict[str, Any], WithJsonSchema({REF_MARK: "JobParams"})]


class JobCreate(Strict):
    """A job from uploaded files (keys from ``POST /v1/uploads``)."""

    image_key: str = Field(max_length=512, description="`image.key` of one of your uploads",
                           examples=["uploads/acme/u18c2f0a1b2c3d4e5f6a7b8c/image"])
    audio_key: str = Field(max_length=512, description="`audio.key` of one of your uploads")
    params: ParamsField = Field(default_factory=dict)


class JobForm(BaseModel):
    """``multipart/form-data``: the two files, plus parameters as form fields or one `params` JSON field."""

    model_config = ConfigDict(extra="allow", json_schema_extra={
        "additionalProperties": {"type": "string", "description": "any JobParams field, as text"}})

    image: bytes = Field(json_schema_extra={"format": "binary", "type": "string"},
                         description="Portrait: PNG, JPEG or WebP, short side ≥ 256 px, ≤ 25 MiB")
    audio: bytes = Field(json_schema_extra={"format": "binary", "type": "string"},
                         description="Speech: WAV, MP3, M4A/AAC, OGG/Opus or FLAC, 0.2 s-30 min, ≤ 200 MiB")
    params: str | None = Field(None, description="JobParams as a JSON object")


# -- uploads -----------------------------------------------------------------------------------------------


class UploadFile(Strict):
    filename: str | None = Field(None, max_length=255, description="Original file name (kept for reference)")
    content_type: str | None = Field(None, max_length=127, examples=["image/png"])


class UploadCreate(Strict):
    """Ask for presigned PUT URLs; send at least one of `image` and `audio`."""

    image: UploadFile | None = None
    audio: UploadFile | None = None


class UploadTarget(BaseModel):
    key: str = Field(description="Pass it as `image_key` / `audio_key` when creating jobs")
    url: str = Field(description="Presigned S3 URL: PUT the file's bytes here before `expires_at`")
    method: Literal["PUT"] = "PUT"
    headers: dict[str, str] = Field(default_factory=dict, description="Headers to send with the PUT")


class Upload(BaseModel):
    upload_id: str
    expires_at: float = Field(description="Unix time after which the URLs and the upload can no longer be used")
    image: UploadTarget | None = None
    audio: UploadTarget | None = None


# -- jobs --------------------------------------------------------------------------------------------------


class Progress(Open):
    stage: str = Field(description="queued, encode, fusion, denoise, decode, postprocess or done")
    done: int = Field(description="Steps (denoise) or chunks (decode) done in this stage")
    total: int
    fraction: float = Field(ge=0, le=1, description="Overall progress, 0-1")


class HistoryEntry(Open):
    state: JobState
    at: float


class JobError(Open):
    type: str
    message: str
    field: str | None = None
    fix: str | None = None


class JobLinks(BaseModel):
    self: str
    events: str
    result: str
    poster: str
    metadata: str


class JobResult(BaseModel):
    video_url: str = Field(description="Presigned GET of the MP4")
    poster_url: str = Field(description="Presigned GET of the poster JPEG")
    metadata_url: str = Field(description="Presigned GET of the metadata JSON")
    expires_at: float


class Job(Open):
    id: str = Field(description="Time-ordered job id", examples=["j18c2f0a1b2c9f3e2d1c0b4a5"])
    state: JobState
    stage: str
    progress: Progress
    params: JobParams
    metadata: dict[str, Any] | None = None
    error: JobError | None = None
    warnings: list[str] = Field(default_factory=list)
    timings_s: dict[str, float] = Field(default_factory=dict)
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    history: list[HistoryEntry] = Field(default_factory=list)
    output: dict[str, Any] | None = Field(None, description="Sizes, frames, duration of the result")
    links: JobLinks
    result: JobResult | None = Field(None, description="Present when the job succeeded")


class JobList(BaseModel):
    jobs: list[Job]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null at the end")


# -- batches -----------------------------------------------------------------------------------------------


class BatchCreate(Strict):
    items: list[JobCreate] = Field(min_length=1, max_length=100)


class BatchItem(BaseModel):
    index: int
    status: int = Field(description="202 accepted, else the HTTP status this item alone would have had")
    job: Job | None = None
    error: Problem | None = None


class Batch(Open):
    batch_id: str
    created_at: float
    accepted: int
    rejected: int
    items: list[BatchItem]
    states: dict[str, int] | None = Field(None, description="Jobs per state (GET only)")


# -- other -------------------------------------------------------------------------------------------------


class Preview(BaseModel):
    width: int = Field(description="Upright image width, px")
    height: int
    face_bbox: list[float] = Field(description="[x, y, w, h] of the chosen face")
    crop_box: list[int] = Field(description="[x0, y0, x1, y1] of the part the video shows")
    faces: int = Field(description="Faces found (the largest is used)")
    framing: str
    expand_ratio: float
    warnings: list[str] = Field(default_factory=list)


class Quotas(BaseModel):
    max_running: int
    max_queued: int
    submits_per_minute: int


class Tenant(BaseModel):
    tenant: str
    quotas: Quotas
    webhook_secret: str | None = Field(description="Key of the `Sonic-Signature` HMAC on your webhooks")


class Health(Open):
    status: str
    s3: bool


EXTRA_MODELS = (Problem, JobParams, JobCreate, JobForm, UploadCreate, BatchCreate)
