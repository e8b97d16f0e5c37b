"""Everything on one machine: a local Ray, an embedded S3 server and the Serve app from serve_config.yaml.

Used by ``sonic-serve up`` and by the pipeline tests. The YAML stays the single source of the app and its
deployments; :func:`localize` only fits it to the machine (no GPU: ``num_gpus`` 0; small CPU shares; replica
caps), and the app args point at the local weights and S3 server.
"""

from __future__ import annotations

import copy
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deployments.app import DEPLOYMENTS
from deployments.auth import authenticate, create_api_key, ensure_tenant
from deployments.config import DEFAULT_CONFIG
from deployments.s3server import EmbeddedS3, free_port
from deployments.storage import DEFAULT_BUCKET, S3Settings, Storage

log = logging.getLogger(__name__)

APP_NAME = "sonic"
LOCAL_TENANT = "local"
# Replica caps on one machine (each Diffusion replica holds a UNet and a VAE).
LOCAL_MAX_REPLICAS = {"Diffusion": 2, "JobManager": 1}
LOCAL_CPU_SHARE = 0.25


def sonic_home() -> Path:
    return Path(os.environ.get("SONIC_HOME") or Path.home() / ".sonic-serve").expanduser()


def load_config(path: str | Path = DEFAULT_CONFIG) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def localize(config: dict[str, Any], *, gpus: int = 0, args: dict[str, Any] | None = None,
             replicas: dict[str, int] | None = None, http_host: str = "127.0.0.1", http_port: int = 8000,
             app_name: str = APP_NAME) -> dict[str, Any]:
    """A copy of the Serve config fitted to one machine. ``replicas`` pins deployments to a fixed count."""
    config = copy.deepcopy(config)
    config["proxy_location"] = "HeadOnly"
    config.setdefault("http_options", {}).update(host=http_host, port=http_port)
    (app,) = [a for a in config["applications"] if a["name"] == app_name]
    app.setdefault("args", {}).update(args or {})
    for dep in app.get("deployments", []):
        actor = dep.setdefault("ray_actor_options", {})
        if not gpus:
            actor["num_gpus"] = 0
        actor["num_cpus"] = LOCAL_CPU_SHARE
        pinned = (replicas or {}).get(dep["name"])
        scaling = dep.get("autoscaling_config")
        if pinned is not None:
            # min = max (not num_replicas: the code's autoscaling default would win over it)
            dep.pop("num_replicas", None)
            dep["autoscaling_config"] = {**(scaling or {}), "min_replicas": pinned, "max_replicas": pinned,
                                         "initial_replicas": pinned}
        elif scaling:
            cap = LOCAL_MAX_REPLICAS.get(dep["name"], 1)
            scaling["max_replicas"] = max(scaling.get("min_replicas", 1), min(scaling.get("max_replicas", 1), cap))
            scaling["min_replicas"] = min(scaling.get("min_replicas", 1), scaling["max_replicas"])
    if gpus:
        _fit_gpu_shares(app.get("deployments", []), gpus)
    return config


def _fit_gpu_shares(deployments: list[dict[str, Any]], gpus: int) -> None:
    """Scale fractional GPU shares down so the minimum replicas of every stage fit on this machine's GPUs."""
    def replicas(dep: dict[str, Any]) -> int:
        return int((dep.get("autoscaling_config") or {}).get("min_replicas", dep.get("num_replicas", 1)))

    wanted = sum(float(d["ray_actor_options"].get("num_gpus", 0)) * replicas(d) for d in deployments)
    if wanted > gpus:
        factor = gpus / wanted
        for dep in deployments:
            share = float(dep["ray_actor_options"].get("num_gpus", 0))
            if share:
                dep["ray_actor_options"]["num_gpus"] = max(0.01, int(share * factor * 100) / 100)


def deploy(config: dict[str, Any], timeout_s: float = 600.0, app_name: str = APP_NAME) -> None:
    """What ``serve run serve_config.yaml`` does, on the already connected Ray; waits until RUNNING."""
    from ray import serve
    from ray.serve._private import api as serve_api
    from ray.serve.config import ProxyLocation
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_api.serve_start(http_options=schema.http_options.model_dump(),
                                   proxy_location=ProxyLocation(schema.proxy_location))
    client.deploy_apps(schema, _blocking=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications.get(app_name)
        if status is not None and str(getattr(status.status, "value", status.status)) == "RUNNING":
            return
        if status is not None and str(getattr(status.status, "value", status.status)) in ("DEPLOY_FAILED",
                                                                                          "UNHEALTHY"):
            raise RuntimeError(f"Serve app {app_name} {status.status}: {status.message}")
        time.sleep(1.0)
    raise TimeoutError(f"Serve app {app_name} not RUNNING after {timeout_s:.0f}s")


def ensure_api_key(storage: Storage, path: Path, tenant: str = LOCAL_TENANT) -> str:
    """The local tenant's key from ``path`` if still valid there, else a new one written to ``path`` (0600)."""
    if path.is_file():
        key = path.read_text().strip()
        found = authenticate(storage, key)
        if found and found.tenant == tenant:
            return key
    ensure_tenant(storage, tenant, label="local stack")
    key = create_api_key(storage, tenant, label="sonic-serve up")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def local_secret(home: Path, name: str = "webhook-secret") -> str:
    """A random secret kept in ``home`` (0600), created on first use: the local stack's webhook signing key."""
    path = home / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


@dataclass
class LocalStack:
    home: Path
    weights: str
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    num_cpus: int | None = None
    s3_settings: S3Settings | None = None  # an existing S3 server; None: start the embedded one
    s3_port: int = 0
    bucket: str = DEFAULT_BUCKET
    dtype: str = "fp32"
    replicas: dict[str, int] = field(default_factory=dict)
    extra_args: dict[str, Any] = field(default_factory=dict)
    config_path: Path = DEFAULT_CONFIG
    dashboard_port: int | None = None
    log_to_driver: bool = False
    gpus: int | None = None              # None: what Ray finds; 0: everything on CPU
    s3: EmbeddedS3 | None = field(default=None, init=False)
    settings: S3Settings | None = field(default=None, init=False)
    api_key: str | None = field(default=None, init=False)
    config: dict[str, Any] | None = field(default=None, init=False)
    _ray_started: bool = field(default=False, init=False)
    _saved_env: dict[str, str | None] = field(default_factory=dict, init=False)

    @property
    def url(self) -> str:
        return f"http://{self.http_host}:{self.http_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def storage(self) -> Storage:
        return Storage(self.settings, self.bucket)

    def start(self, timeout_s: float = 600.0) -> LocalStack:
        import ray

        self.home.mkdir(parents=True, exist_ok=True)
        try:
            if self.s3_settings is not None:
                self.settings = self.s3_settings
            else:
                self.s3 = EmbeddedS3(self.home / "s3", port=self.s3_port)
                self.settings = self.s3.start()
            env = {**self.settings.as_env(), "SONIC_S3_BUCKET": self.bucket,
                   "SONIC_WEBHOOK_SECRET": os.environ.get("SONIC_WEBHOOK_SECRET") or local_secret(self.home),
                   "SONIC_WEIGHTS_CACHE": os.environ.get("SONIC_WEIGHTS_CACHE") or str(self.home / "cache" / "weights")}
            self._saved_env = {name: os.environ.get(name) for name in env}
            os.environ.update(env)      # inherited by every Ray worker started below
            storage = self.storage()
            storage.ensure_bucket()
            self.dashboard_port = self.dashboard_port or free_port()
            ray.init(address="local", num_cpus=self.num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                     dashboard_port=self.dashboard_port, namespace="serve", log_to_driver=self.log_to_driver,
                     configure_logging=False)
            self._ray_started = True
            gpus = int(ray.cluster_resources().get("GPU", 0)) if self.gpus is None else self.gpus
            args = {"weights": str(self.weights), "s3_endpoint": self.settings.endpoint, "s3_bucket": self.bucket,
                    "dtype": self.dtype, **self.extra_args}
            self.config = localize(load_config(self.config_path), gpus=gpus, args=args, replicas=self.replicas,
                                   http_host=self.http_host, http_port=self.http_port)
            deploy(self.config, timeout_s)
            self.api_key = ensure_api_key(storage, self.home / "api-key")
        except BaseException:
            self.stop()
            raise
        return self

    def scale(self, deployment: str, replicas: int, timeout_s: float = 300.0) -> None:
        """Pin ``deployment`` to ``replicas`` replicas (a lightweight Serve update: nothing else restarts)."""
        assert self.config is not None, "start() first"
        (app,) = [a for a in self.config["applications"] if a["name"] == APP_NAME]
        (dep,) = [d for d in app["deployments"] if d["name"] == deployment]
        dep["autoscaling_config"] = {**(dep.get("autoscaling_config") or {}), "min_replicas": replicas,
                                     "max_replicas": replicas, "initial_replicas": replicas}
        self.replicas[deployment] = replicas
        deploy(self.config, timeout_s)

    def stop(self, hard: bool = False) -> None:
        """Shut Serve down gracefully (running jobs finish), or with ``hard`` stop Ray at once as a crash
        would (unfinished jobs resume on the next start)."""
        import ray

        if self._ray_started and hard:
            ray.shutdown()
            self._ray_started = False
        if self._ray_started:
            try:
                from ray import serve

                serve.shutdown()
            except Exception:  # noqa: BLE001 - shutting down anyway
                log.debug("serve.shutdown failed", exc_info=True)
            ray.shutdown()
            self._ray_started = False
        if self.s3 is not None:
            self.s3.stop()
            self.s3 = None
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env = {}

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["DEPLOYMENTS", "LocalStack", "localize", "deploy", "ensure_api_key", "sonic_home"]
