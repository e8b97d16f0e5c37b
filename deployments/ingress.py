"""HTTP ingress: the API v1 (``deployments.api``, FastAPI) inside Serve.

The FastAPI app is built in each replica after the constructor (``__serve_build_asgi_app__``), around this
replica's services: S3 (the source of truth for jobs), a URL signer for the public S3 endpoint, the API key
ring (tenants file, ``SONIC_API_KEYS``, S3 key records) and the handles of the JobManager and ImageEncoder.
At start it creates the bucket if missing and sets the retention lifecycle rules.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ray import serve

from deployments import logs, telemetry
from deployments.api import Services, create_app
from deployments.auth import KeyRing
from deployments.common import replica_name
from deployments.config import AppConfig

log = logging.getLogger("sonic.ingress")

UPLOAD_RETENTION_DAYS = 1   # uploads and idempotency keys are short-lived whatever retention_days says


def retention_rules(config: AppConfig) -> dict[str, int]:
    """S3 lifecycle: prefix -> days (see docs/api.md, "Storage")."""
    days = max(0, config.retention_days)
    rules = {prefix: days for prefix in ("inputs/", "outputs/", "checkpoints/", "jobs/", "batches/",
                                         "webhooks/delivered/")}
    rules.update({"uploads/": UPLOAD_RETENTION_DAYS, "idempotency/": UPLOAD_RETENTION_DAYS})
    return rules


@serve.deployment(name="Ingress", max_ongoing_requests=512, graceful_shutdown_timeout_s=60,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 64},
                  ray_actor_options={"num_cpus": 0.25})
@serve.ingress()
class Ingress:
    def __init__(self, config: dict[str, Any], manager, image_encoder=None):
        self.config = AppConfig(**config)
        logs.configure_json_logging(os.environ.get("SONIC_LOG_LEVEL", "INFO"), replica=replica_name())
        telemetry.setup_tracing()
        storage = self.config.storage()
        storage.ensure_bucket()
        storage.apply_retention(retention_rules(self.config))
        self.services = Services(config=self.config, storage=storage,
                                 signer=storage.presigner(self.config.public_s3_endpoint),
                                 keys=KeyRing(storage, self.config.api_keys_file or None),
                                 manager=manager, image_encoder=image_encoder)
        log.info("API ready: %d configured tenant(s), public S3 endpoint %s", len(self.services.keys.tenants),
                 self.config.public_s3_endpoint or "(same as S3)")

    def __serve_build_asgi_app__(self):
        return create_app(self.services)
