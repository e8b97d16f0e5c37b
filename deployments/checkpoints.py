"""Denoising checkpoints in S3: the latents after step k, so a job resumes there after a crash or restart.

Granularity: every ``checkpoint_every`` denoising steps, at most once per ``checkpoint_interval_s`` (AppConfig),
and always after the last step. Encode and fusion are not checkpointed: they are deterministic and cheap next to
denoising, so a resumed job runs them again and gets the same conditioning. Decode and post-process restart
from the final latents' checkpoint.
"""

from __future__ import annotations

import io

import torch

from deployments.storage import Keys, Storage

LATENTS = "latents.pt"


def save_latents(storage: Storage, tenant: str, job_id: str, steps_done: int, latents: torch.Tensor) -> dict:
    """Persist ``latents`` (after ``steps_done`` steps); returns the record's ``checkpoint`` entry."""
    buffer = io.BytesIO()
    torch.save({"steps_done": steps_done, "latents": latents.detach().cpu().contiguous()}, buffer)
    key = Keys.checkpoint(tenant, job_id, LATENTS)
    info = storage.put_bytes(key, buffer.getvalue())
    return {"steps_done": steps_done, "key": key, "bytes": info.size, "shape": list(latents.shape)}


def load_latents(storage: Storage, entry: dict | None, shape: tuple[int, ...]) -> tuple[int, torch.Tensor] | None:
    """(steps done, latents) of the checkpoint a record's entry names, if it is there and fits ``shape``."""
    if not entry or not entry.get("key"):
        return None
    if not storage.exists(entry["key"]):
        return None
    saved = torch.load(io.BytesIO(storage.get_bytes(entry["key"])), map_location="cpu", weights_only=True)
    latents = saved["latents"]
    if tuple(latents.shape) != tuple(shape):
        return None
    # The object may be newer than the record's entry (the upload overlaps the next step): it says itself
    # how many steps it holds.
    return int(saved["steps_done"]), latents


def drop_checkpoints(storage: Storage, tenant: str, job_id: str) -> None:
    for item in storage.list(Keys.checkpoint(tenant, job_id, "")):
        storage.delete(item.key)
