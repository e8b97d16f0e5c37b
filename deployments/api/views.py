"""What clients see of a job record: the public fields, links, and presigned result URLs once it succeeded."""

from __future__ import annotations

from typing import Any

from deployments.jobs import SUCCEEDED, now, public_view

from .context import Services

# output key name -> (result field, download file name suffix)
OUTPUTS = {"video_key": ("video_url", ".mp4"), "poster_key": ("poster_url", ".jpg"),
           "metadata_key": ("metadata_url", ".json")}


def job_links(job_id: str) -> dict[str, str]:
    base = f"/v1/jobs/{job_id}"
    return {"self": base, "events": f"{base}/events", "result": f"{base}/result", "poster": f"{base}/poster",
            "metadata": f"{base}/metadata"}


def result_links(services: Services, record: dict[str, Any]) -> dict[str, Any] | None:
    output = record.get("output") or {}
    if record.get("state") != SUCCEEDED or not output.get("video_key"):
        return None
    expiry = services.config.presign_expiry_s
    links: dict[str, Any] = {}
    for key_name, (field, suffix) in OUTPUTS.items():
        key = output.get(key_name)
        links[field] = services.signer.presigned_get(key, expiry, record["id"] + suffix) if key else None
    links["expires_at"] = round(now() + expiry, 3)
    return links


def job_view(services: Services, record: dict[str, Any]) -> dict[str, Any]:
    view = public_view(record)
    view["links"] = job_links(record["id"])
    view["result"] = result_links(services, record)
    return view
