"""The application's arguments (``args:`` in serve_config.yaml), with ``${VAR:-default}`` read from the
environment of the process that builds the app. S3 credentials are never arguments: every replica reads
``SONIC_S3_ACCESS_KEY`` / ``SONIC_S3_SECRET_KEY`` from its own environment."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from deployments.storage import DEFAULT_BUCKET, S3Settings, Storage
from deployments.weights_store import ensure_local_weights

log = logging.getLogger(__name__)

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
DEFAULT_CONFIG = Path(__file__).with_name("serve_config.yaml")


def expand_env(value: Any, env: dict | None = None) -> Any:
    """``${VAR}`` / ``${VAR:-default}`` in strings (recursively in lists and dicts)."""
    env = os.environ if env is None else env
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [expand_env(v, env) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v, env) for k, v in value.items()}
    return value


@dataclass
class AppConfig:
    weights: str = "/models/sonic"          # local path or s3://bucket/prefix
    s3_endpoint: str = ""                   # empty: $SONIC_S3_ENDPOINT
    s3_bucket: str = DEFAULT_BUCKET
    dtype: str = "fp16"                     # on GPU; CPU replicas always compute in fp32
    device: str = "auto"
    weights_cache: str = ""                 # where s3:// weights are synced on each node
    torch_threads: int = 0                  # 0: leave torch's default
    diffusion_queue_per_replica: int = 0    # units queued per Diffusion replica beyond its max_ongoing_requests
    max_active_jobs: int = 32               # jobs the manager runs at once; the rest wait in state queued
    unit_retries: int = 2                   # retries of a window/decode unit lost with its replica
    # Admission (the JobManager decides; refusals are 429/503 with Retry-After). Tenant records in S3 or the
    # API keys file may override the per-tenant numbers.
    tenant_max_running: int = 4             # a tenant's jobs running at once
    tenant_max_queued: int = 200            # a tenant's jobs waiting to run
    tenant_submits_per_minute: int = 120    # a tenant's submissions per rolling minute
    max_queued_jobs: int = 2000             # all tenants' waiting jobs: beyond this, 503
    checkpoint_every: int = 1               # persist latents to S3 every N denoising steps (0: never)
    checkpoint_interval_s: float = 10.0     # ... at most once per this many seconds (0: no limit); always the last
    manager_lease_s: int = 30               # a silent JobManager's jobs are adopted by another after this
    api_keys_file: str = ""                 # YAML/JSON tenants + keys file (see docs/api.md); "" = S3 only
    webhook_allow: str = ""                 # comma-separated hosts/CIDRs webhooks may reach despite SSRF rules
    public_s3_endpoint: str = ""            # scheme://host:port clients use for presigned URLs ("" = s3_endpoint)
    presign_expiry_s: int = 900             # lifetime of presigned upload and download URLs
    retention_days: int = 30                # S3 lifecycle expiry of inputs/outputs/checkpoints (0: keep)

    @classmethod
    def from_args(cls, args: dict[str, Any] | None) -> AppConfig:
        args = expand_env(dict(args or {}))
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(args) - set(known))
        if unknown:
            raise ValueError(f"unknown application args: {unknown} (known: {sorted(known)})")
        values: dict[str, Any] = {}
        for name, value in args.items():
            default = known[name].default
            if isinstance(default, bool):
                values[name] = str(value).lower() in ("1", "true", "yes", "on")
            elif isinstance(default, int):
                values[name] = int(value) if str(value) != "" else default
            elif isinstance(default, float):
                values[name] = float(value) if str(value) != "" else default
            else:
                values[name] = str(value)
        config = cls(**values)
        if config.dtype not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"dtype must be fp32, fp16 or bf16, got {config.dtype!r}")
        return config

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def s3_settings(self) -> S3Settings:
        return S3Settings.from_env(self.s3_endpoint or None)

    def storage(self) -> Storage:
        return Storage(self.s3_settings(), self.s3_bucket)


@dataclass
class StageRuntime:
    weights: Path
    device: str
    dtype: torch.dtype


def stage_runtime(config: AppConfig) -> StageRuntime:
    """What every stage replica resolves at start: local weights (synced from S3 if needed), device, dtype."""
    from sonic_core.engine import resolve_device, resolve_dtype

    if config.torch_threads > 0:
        torch.set_num_threads(config.torch_threads)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype)
    if device == "cpu" and dtype != torch.float32:
        log.info("device is CPU: computing in fp32 instead of %s", config.dtype)
        dtype = torch.float32
    weights = ensure_local_weights(config.weights, config.weights_cache or None, config.s3_settings())
    return StageRuntime(weights, device, dtype)
