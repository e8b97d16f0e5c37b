"""`sonic-serve ops` against recorded API objects served by a tiny local Kubernetes API server.

No cluster runs in CI, so the test starts an HTTP server on 127.0.0.1 that answers the real
Kubernetes API paths the official ``kubernetes`` client uses:

* ``/apis/ray.io/v1/namespaces/{ns}/rayservices/{name}`` (GET, and PATCH with a JSON patch that
  the server applies, honouring ``test`` operations like the API server does), serving the
  RayService objects in tests/data/k8s/rayservice-*.json (KubeRay 1.5 status layout, spec
  rendered from the Helm chart);
* ``/api/v1/namespaces/{ns}/services/{name}-head-svc:8265/proxy/api/serve/applications/``,
  serving tests/data/k8s/serve-applications.json, recorded from Ray Serve's REST API
  (``GET /api/serve/applications/``) of a local Ray cluster running the same seven deployments.

The client side is the unmodified ``kubernetes.client.CustomObjectsApi``.
"""

from __future__ import annotations

import argparse
import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from sonic_serve import ops

DATA = Path(__file__).parent / "data" / "k8s"
NS = "sonic-serve"
NAME = "sonic-serve"
RS_PATH = f"/apis/ray.io/v1/namespaces/{NS}/rayservices/{NAME}"
PROXY_PATH = f"/api/v1/namespaces/{NS}/services/{NAME}-head-svc:8265/proxy/api/serve/applications/"


def load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def _pointer_parts(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def apply_json_patch(doc: dict, patch: list[dict]) -> dict:
    """RFC 6902 subset the API server applies here: test, replace, add, remove."""
    doc = copy.deepcopy(doc)
    for op in patch:
        *parents, leaf = _pointer_parts(op["path"])
        target = doc
        for part in parents:
            target = target[part]
        if op["op"] == "test":
            if target.get(leaf) != op["value"]:
                raise ValueError(f"testing value {op['path']} failed")
        elif op["op"] in ("replace", "add"):
            if op["op"] == "replace" and leaf not in target:
                raise ValueError(f"replace operation does not apply: doc is missing path: {op['path']}")
            target[leaf] = op["value"]
        elif op["op"] == "remove":
            del target[leaf]
        else:
            raise ValueError(f"unsupported op {op['op']}")
    return doc


class FakeKubeAPI:
    """State and request log of the local API server."""

    def __init__(self, rayservice: dict, serve_apps: dict | None, proxy_status: int = 200):
        self.rayservice = rayservice
        self.serve_apps = serve_apps
        self.proxy_status = proxy_status
        self.requests: list[tuple[str, str]] = []
        self.patches: list[tuple[str, list]] = []
        self.after_get = None  # hook: simulate a concurrent writer

    def status(self, code: int, reason: str, message: str) -> tuple[int, dict]:
        return code, {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }

    def handle(self, method: str, path: str, headers, body: bytes) -> tuple[int, dict]:
        self.requests.append((method, path))
        if path == RS_PATH and method == "GET":
            obj = copy.deepcopy(self.rayservice)
            if self.after_get:
                self.after_get(self)
                self.after_get = None
            return 200, obj
        if path == RS_PATH and method == "PATCH":
            content_type = headers.get("Content-Type", "")
            patch = json.loads(body)
            self.patches.append((content_type, patch))
            if content_type != "application/json-patch+json" or not isinstance(patch, list):
                return self.status(415, "UnsupportedMediaType", f"unexpected patch type {content_type}")
            try:
                updated = apply_json_patch(self.rayservice, patch)
            except ValueError as exc:
                return self.status(422, "Invalid", str(exc))
            updated["metadata"]["resourceVersion"] = str(int(updated["metadata"]["resourceVersion"]) + 1)
            updated["metadata"]["generation"] += 1
            self.rayservice = updated
            return 200, copy.deepcopy(updated)
        if path == PROXY_PATH and method == "GET":
            if self.proxy_status != 200:
                return self.status(self.proxy_status, "Forbidden", 'services "sonic-serve-head-svc:8265" is forbidden')
            return 200, self.serve_apps
        if path.startswith("/apis/ray.io/v1/"):
            return self.status(404, "NotFound", "rayservices.ray.io not found")
        return self.status(404, "NotFound", "the server could not find the requested resource")


@pytest.fixture
def kube(request):
    params = getattr(request, "param", {})
    state = FakeKubeAPI(
        load(params.get("rayservice", "rayservice-running.json")),
        load("serve-applications.json"),
        proxy_status=params.get("proxy_status", 200),
    )

    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            code, payload = state.handle(self.command, unquote(urlsplit(self.path).path), self.headers, body)
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PATCH = _serve

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
    api_client = client.ApiClient(configuration)
    state.api = client.CustomObjectsApi(api_client)
    state.host = configuration.host
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        api_client.close()


def stage(report: dict, deployment: str) -> dict:
    return next(s for s in report["stages"] if s["deployment"] == deployment)


# --- status -------------------------------------------------------------------------------


def test_status_reports_conditions_applications_and_replicas(kube):
    report = ops.status(kube.api, NS, NAME)
    assert report["ready"] is True and report["serviceStatus"] == "Running"
    assert report["numServeEndpoints"] == 3
    assert report["upgradeInProgress"] is False and report["upgradeStrategy"] == "None"
    assert [(c["type"], c["status"], c["reason"]) for c in report["conditions"]] == [
        ("Ready", "True", "NonZeroServeEndpoints"),
        ("UpgradeInProgress", "False", "NoPendingCluster"),
    ]
    assert report["activeCluster"] == "sonic-serve-x7k2p" and report["pendingCluster"] is None
    assert report["applications"] == {"sonic": {"status": "RUNNING", "message": ""}}
    assert report["replicaSource"] == "serve-api"
    assert [s["stage"] for s in report["stages"]] == list(ops.STAGES)

    diffusion = stage(report, "Diffusion")
    assert diffusion["status"] == "HEALTHY"
    assert (diffusion["min_replicas"], diffusion["max_replicas"], diffusion["num_gpus"]) == (1, 16, 1)
    assert diffusion["replicas"] == {"running": 2, "target": 2, "states": {"RUNNING": 2}}
    manager = stage(report, "JobManager")
    assert (manager["min_replicas"], manager["max_replicas"]) == (1, 1)
    assert manager["replicas"]["running"] == 1
    assert ("GET", PROXY_PATH) in kube.requests

    text = ops.format_status(report)
    assert "READY" in text and "sonic-serve-x7k2p" in text
    assert any(line.split()[:4] == ["diffusion", "Diffusion", "HEALTHY", "2/2"] for line in text.splitlines())


@pytest.mark.parametrize("kube", [{"rayservice": "rayservice-upgrading.json"}], indirect=True)
def test_status_during_a_new_cluster_upgrade(kube):
    report = ops.status(kube.api, NS, NAME)
    assert report["upgradeInProgress"] is True and report["upgradeStrategy"] == "NewCluster"
    assert report["pendingCluster"] == "sonic-serve-m4d9w"
    assert report["ready"] is True  # the active cluster keeps serving
    text = ops.format_status(report)
    assert "UpgradeInProgress=True (BothActivePendingClustersExist)" in text


@pytest.mark.parametrize("kube", [{"proxy_status": 403}], indirect=True)
def test_status_without_service_proxy_access_still_reports(kube):
    report = ops.status(kube.api, NS, NAME)
    assert report["replicaSource"] == "unavailable: 403 Forbidden"
    assert all(s["replicas"] is None for s in report["stages"])
    assert stage(report, "Diffusion")["max_replicas"] == 16
    assert "replicas: Serve API unavailable: 403 Forbidden" in ops.format_status(report)


def test_status_without_replicas_skips_the_proxy(kube):
    report = ops.status(kube.api, NS, NAME, replicas=False)
    assert report["replicaSource"] == "skipped"
    assert ("GET", PROXY_PATH) not in kube.requests


def test_status_of_a_missing_rayservice_raises_not_found(kube):
    with pytest.raises(ApiException) as info:
        ops.status(kube.api, NS, "nope")
    assert info.value.status == 404


# --- scale --------------------------------------------------------------------------------


def _served_config(kube) -> dict:
    return yaml.safe_load(kube.rayservice["spec"]["serveConfigV2"])


def _deployment(cfg: dict, name: str) -> dict:
    return next(d for a in cfg["applications"] for d in a["deployments"] if d["name"] == name)


def test_scale_patches_serve_config_v2_with_a_guarded_json_patch(kube):
    original = copy.deepcopy(kube.rayservice)
    before_cfg = yaml.safe_load(original["spec"]["serveConfigV2"])
    result = ops.scale(kube.api, NS, NAME, "diffusion", 2, 8)

    ((content_type, patch),) = kube.patches
    assert content_type == "application/json-patch+json"
    assert [p["op"] for p in patch] == ["test", "replace"]
    assert patch[0] == {"op": "test", "path": "/spec/serveConfigV2", "value": original["spec"]["serveConfigV2"]}
    assert patch[1]["path"] == "/spec/serveConfigV2"

    after_cfg = _served_config(kube)
    assert _deployment(after_cfg, "Diffusion")["autoscaling_config"] == {
        "min_replicas": 2,
        "max_replicas": 8,
        "target_ongoing_requests": 1,
    }
    # Everything else in the Serve config, including the ${...} args, is unchanged.
    expected = copy.deepcopy(before_cfg)
    _deployment(expected, "Diffusion")["autoscaling_config"].update(min_replicas=2, max_replicas=8)
    assert after_cfg == expected
    assert {k: v for k, v in kube.rayservice["spec"].items() if k != "serveConfigV2"} == {
        k: v for k, v in original["spec"].items() if k != "serveConfigV2"
    }

    assert result["stage"] == "diffusion" and result["deployment"] == "Diffusion"
    assert result["before"] == {"min_replicas": 1, "max_replicas": 16, "target_ongoing_requests": 1}
    assert result["after"]["min_replicas"] == 2 and result["after"]["max_replicas"] == 8
    assert result["resourceVersion"] == str(int(original["metadata"]["resourceVersion"]) + 1)
    assert result["helmSet"] == ["stages.diffusion.minReplicas=2", "stages.diffusion.maxReplicas=8"]


def test_scale_one_bound_keeps_the_other(kube):
    ops.scale(kube.api, NS, NAME, "PostProcess", None, 3)
    cfg = _deployment(_served_config(kube), "PostProcess")["autoscaling_config"]
    assert (cfg["min_replicas"], cfg["max_replicas"]) == (1, 3)


def test_scale_turns_a_fixed_replica_count_into_autoscaling(kube):
    result = ops.scale(kube.api, NS, NAME, "manager", None, 3)
    dep = _deployment(_served_config(kube), "JobManager")
    assert "num_replicas" not in dep
    assert dep["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3}
    assert result["before"] == {"num_replicas": 1}


def test_scale_refuses_to_overwrite_a_concurrent_change(kube):
    def concurrent_writer(state):
        cfg = yaml.safe_load(state.rayservice["spec"]["serveConfigV2"])
        _deployment(cfg, "Fusion")["max_ongoing_requests"] = 16
        state.rayservice["spec"]["serveConfigV2"] = yaml.safe_dump(cfg)

    kube.after_get = concurrent_writer
    with pytest.raises(ApiException) as info:
        ops.scale(kube.api, NS, NAME, "diffusion", 2, 8)
    assert info.value.status == 422
    cfg = _served_config(kube)
    assert _deployment(cfg, "Fusion")["max_ongoing_requests"] == 16  # the other writer's change survives
    assert _deployment(cfg, "Diffusion")["autoscaling_config"]["max_replicas"] == 16


@pytest.mark.parametrize(
    "stage_name, lo, hi, message",
    [
        ("diffusion", 5, 2, "min_replicas 5 would be above max_replicas 2"),
        ("diffusion", 20, None, "min_replicas 20 would be above max_replicas 16"),
        ("vocoder", 1, 2, "unknown stage 'vocoder'"),
        ("diffusion", None, None, "give --min, --max or both"),
        ("diffusion", -1, 2, "--min must be 0 or more"),
        ("diffusion", 0, 0, "--max must be 1 or more"),
    ],
)
def test_scale_rejects_bad_requests_without_patching(kube, stage_name, lo, hi, message):
    with pytest.raises(ops.OpsError, match=message.replace("(", r"\(")):
        ops.scale(kube.api, NS, NAME, stage_name, lo, hi)
    assert kube.patches == []


def test_scale_dry_run_sends_nothing(kube):
    result = ops.scale(kube.api, NS, NAME, "audio", 0, 2, dry_run=True)
    assert kube.patches == [] and result["dryRun"] is True
    assert result["after"]["min_replicas"] == 0
    assert [p["op"] for p in result["patch"]] == ["test", "replace"]


# --- command line -------------------------------------------------------------------------


@pytest.fixture
def cli(kube, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "local", "cluster": {"server": kube.host}}],
                "users": [{"name": "local", "user": {"token": "test-token"}}],
                "contexts": [{"name": "local", "context": {"cluster": "local", "user": "local", "namespace": NS}}],
                "current-context": "local",
            }
        )
    )
    parser = argparse.ArgumentParser(prog="sonic-serve")
    ops.register(parser.add_subparsers(dest="command"))

    def run(*argv: str) -> int:
        args = parser.parse_args([*argv, "--kubeconfig", str(kubeconfig)])
        return args.func(args)

    return run


def test_cli_status_json(cli, kube, capsys):
    assert cli("ops", "status", "-n", NS, "--name", NAME, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ready"] is True and stage(report, "Diffusion")["replicas"]["running"] == 2


def test_cli_status_check_fails_when_not_ready(cli, kube, capsys):
    for cond in kube.rayservice["status"]["conditions"]:
        if cond["type"] == "Ready":
            cond.update(status="False", reason="ZeroServeEndpoints", message="Number of serve endpoints dropped to 0")
    assert cli("ops", "status", "--check") == 1
    assert "NOT READY" in capsys.readouterr().out


def test_cli_scale(cli, kube, capsys):
    assert cli("ops", "scale", "diffusion", "--min", "1", "--max", "3") == 0
    out = capsys.readouterr().out
    assert "--set stages.diffusion.minReplicas=1 --set stages.diffusion.maxReplicas=3" in out
    assert _deployment(_served_config(kube), "Diffusion")["autoscaling_config"]["max_replicas"] == 3
    assert cli("ops", "scale", "diffusion", "--min", "9", "--max", "3") == 2
    assert "error:" in capsys.readouterr().err
