"""The Serve application: ``import_path: deployments.app:build_app`` (see serve_config.yaml).

    Ingress ─► JobManager ─┬─► AudioEncoder ─┐
       │                   ├─► ImageEncoder ─┴─► Fusion
       │                   ├─► Diffusion  (windows and decode chunks, many replicas)
       │                   └─► PostProcess (RIFE, encode, mux, upload)
       └─► ImageEncoder.preview (face box and crop for the web page)
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from deployments.config import AppConfig
from deployments.diffusion import Diffusion
from deployments.encoders import AudioEncoder, Fusion, ImageEncoder
from deployments.ingress import Ingress
from deployments.manager import JobManager
from deployments.postprocess import PostProcess

DEPLOYMENTS = ("AudioEncoder", "ImageEncoder", "Fusion", "Diffusion", "PostProcess", "JobManager", "Ingress")


def build_app(args: dict[str, Any] | None = None) -> Application:
    config = AppConfig.from_args(args).to_dict()
    image = ImageEncoder.bind(config)
    manager = JobManager.bind(config, AudioEncoder.bind(config), image, Fusion.bind(config),
                              Diffusion.bind(config), PostProcess.bind(config))
    return Ingress.bind(config, manager, image)
