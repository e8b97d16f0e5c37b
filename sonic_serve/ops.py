"""Operate a running Sonic Serve RayService through the Kubernetes API.

``sonic-serve ops status`` reports the RayService conditions, the Serve application and
deployment statuses KubeRay mirrors into the object, and replicas per stage. Replica counts come
from Ray Serve's REST API (``/api/serve/applications/`` on the head's dashboard port), reached
through the API server's service proxy, so no port-forward is needed; when that proxy is not
allowed (RBAC or NetworkPolicy) the report says so and still lists the configured bounds.

``sonic-serve ops scale STAGE --min N --max M`` reads ``spec.serveConfigV2`` (a YAML string),
changes that deployment's ``autoscaling_config`` and patches the string back with a JSON patch
whose ``test`` operation makes the write fail instead of overwriting a concurrent change. KubeRay
applies serveConfigV2 changes in place: Ray Serve adjusts the replica bounds without restarting
anything. A later ``helm upgrade`` that renders a different serveConfigV2 replaces the live
value, so make lasting changes with ``helm upgrade --set stages.<stage>.minReplicas=...``; the
result of ``scale`` carries those flags.

The functions take a ``kubernetes.client.CustomObjectsApi``; the CLI builds one from the
kubeconfig (or the in-cluster service account).
"""

from __future__ import annotations

import copy
import json
import os
import sys
from typing import Any

import yaml

GROUP = "ray.io"
VERSION = "v1"
PLURAL = "rayservices"
DASHBOARD_PORT = 8265
JSON_PATCH = "application/json-patch+json"

# Helm values key -> Serve deployment name (the chart's `stages.<key>`).
STAGES: dict[str, str] = {
    "audio": "AudioEncoder",
    "image": "ImageEncoder",
    "fusion": "Fusion",
    "diffusion": "Diffusion",
    "postprocess": "PostProcess",
    "manager": "JobManager",
    "ingress": "Ingress",
}


class OpsError(RuntimeError):
    """A request the RayService cannot satisfy (unknown stage, bad bounds, missing config)."""


def resolve_stage(stage: str) -> tuple[str, str]:
    """Map a stage key or Serve deployment name (any case) to ``(key, deployment)``."""
    wanted = stage.strip().lower()
    for key, deployment in STAGES.items():
        if wanted in (key, deployment.lower()):
            return key, deployment
    choices = ", ".join(f"{k} ({d})" for k, d in STAGES.items())
    raise OpsError(f"unknown stage {stage!r}; choose one of: {choices}")


def get_rayservice(api, namespace: str, name: str) -> dict:
    return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def _serve_config(obj: dict) -> dict:
    text = (obj.get("spec") or {}).get("serveConfigV2")
    if not text:
        raise OpsError(f"RayService {obj['metadata']['name']} has no spec.serveConfigV2")
    cfg = yaml.safe_load(text)
    if not isinstance(cfg, dict) or not cfg.get("applications"):
        raise OpsError("spec.serveConfigV2 holds no Serve applications")
    return cfg


def _find_deployment(cfg: dict, deployment: str) -> tuple[str, dict]:
    for app in cfg["applications"]:
        for dep in app.get("deployments") or []:
            if dep.get("name") == deployment:
                return app.get("name", ""), dep
    raise OpsError(f"deployment {deployment} is not in spec.serveConfigV2")


def serve_applications(api, namespace: str, name: str, timeout_s: float = 10.0) -> dict:
    """Ray Serve's ``GET /api/serve/applications/`` through the API server's service proxy.

    The head Service KubeRay creates for a RayService is ``<name>-head-svc`` and follows the
    active RayCluster.
    """
    from kubernetes import client

    core = client.CoreV1Api(api.api_client)
    response = core.connect_get_namespaced_service_proxy_with_path(
        f"{name}-head-svc:{DASHBOARD_PORT}",
        namespace,
        "api/serve/applications/",
        _preload_content=False,
        _request_timeout=timeout_s,
    )
    return json.loads(response.data)


def _condition_view(cond: dict) -> dict:
    return {k: cond.get(k) for k in ("type", "status", "reason", "message", "lastTransitionTime")}


def _replica_view(detail: dict | None) -> dict | None:
    if detail is None:
        return None
    states: dict[str, int] = {}
    for replica in detail.get("replicas") or []:
        state = replica.get("state", "UNKNOWN")
        states[state] = states.get(state, 0) + 1
    return {"running": states.get("RUNNING", 0), "target": detail.get("target_num_replicas"), "states": states}


def status(api, namespace: str, name: str, *, replicas: bool = True) -> dict:
    """Conditions, application status and per-stage replicas of one RayService.

    ``replicas=False`` skips the Serve REST call (the report then carries only the configured
    replica bounds).
    """
    obj = get_rayservice(api, namespace, name)
    st = obj.get("status") or {}
    conditions = [_condition_view(c) for c in st.get("conditions") or []]
    by_type = {c["type"]: c for c in conditions}
    active = st.get("activeServiceStatus") or {}
    pending = st.get("pendingServiceStatus") or {}
    app_statuses = active.get("applicationStatuses") or {}

    serve_detail: dict | None = None
    replica_source = "skipped"
    if replicas:
        try:
            serve_detail = serve_applications(api, namespace, name)
            replica_source = "serve-api"
        except Exception as exc:  # RBAC, NetworkPolicy or a head that is not up yet
            reason = getattr(exc, "reason", None) or type(exc).__name__
            replica_source = f"unavailable: {getattr(exc, 'status', '') or ''} {reason}".replace("  ", " ").strip()

    cfg = _serve_config(obj)
    deployment_to_key = {d: k for k, d in STAGES.items()}
    stages = []
    for app in cfg["applications"]:
        app_name = app.get("name", "")
        app_status = app_statuses.get(app_name) or {}
        dep_statuses = app_status.get("serveDeploymentStatuses") or {}
        details = {}
        if serve_detail:
            details = ((serve_detail.get("applications") or {}).get(app_name) or {}).get("deployments") or {}
        for dep in app.get("deployments") or []:
            dep_name = dep["name"]
            autoscaling = dep.get("autoscaling_config") or {}
            options = dep.get("ray_actor_options") or {}
            dep_status = dep_statuses.get(dep_name) or {}
            stages.append(
                {
                    "stage": deployment_to_key.get(dep_name),
                    "application": app_name,
                    "deployment": dep_name,
                    "status": dep_status.get("status"),
                    "message": dep_status.get("message") or "",
                    "min_replicas": autoscaling.get("min_replicas", dep.get("num_replicas")),
                    "max_replicas": autoscaling.get("max_replicas", dep.get("num_replicas")),
                    "target_ongoing_requests": autoscaling.get("target_ongoing_requests"),
                    "num_gpus": options.get("num_gpus", 0),
                    "replicas": _replica_view(details.get(dep_name)) if serve_detail else None,
                }
            )

    ready = by_type.get("Ready", {}).get("status") == "True"
    return {
        "name": name,
        "namespace": namespace,
        "ready": ready,
        "serviceStatus": st.get("serviceStatus") or "",
        "numServeEndpoints": st.get("numServeEndpoints", 0),
        "upgradeInProgress": by_type.get("UpgradeInProgress", {}).get("status") == "True",
        "upgradeStrategy": ((obj.get("spec") or {}).get("upgradeStrategy") or {}).get("type"),
        "conditions": conditions,
        "activeCluster": active.get("rayClusterName"),
        "pendingCluster": pending.get("rayClusterName"),
        "applications": {
            app: {"status": s.get("status"), "message": s.get("message") or ""} for app, s in app_statuses.items()
        },
        "stages": stages,
        "replicaSource": replica_source,
    }


def scale(
    api,
    namespace: str,
    name: str,
    stage: str,
    min_replicas: int | None,
    max_replicas: int | None,
    *,
    dry_run: bool = False,
) -> dict:
    """Set a stage's Serve autoscaling bounds in the RayService's serveConfigV2.

    Either bound may be None to keep the current one. A stage with a fixed ``num_replicas``
    becomes autoscaled, starting from that count for the bound not given.
    """
    key, deployment = resolve_stage(stage)
    if min_replicas is None and max_replicas is None:
        raise OpsError("give --min, --max or both")
    if min_replicas is not None and min_replicas < 0:
        raise OpsError("--min must be 0 or more")
    if max_replicas is not None and max_replicas < 1:
        raise OpsError("--max must be 1 or more")

    obj = get_rayservice(api, namespace, name)
    old_text = obj["spec"]["serveConfigV2"]
    cfg = _serve_config(obj)
    _, dep = _find_deployment(cfg, deployment)

    before = copy.deepcopy(dep.get("autoscaling_config")) if "autoscaling_config" in dep else None
    before_fixed = dep.get("num_replicas") if isinstance(dep.get("num_replicas"), int) else None
    autoscaling = dict(dep.get("autoscaling_config") or {})
    if before_fixed is not None:
        autoscaling.setdefault("min_replicas", before_fixed)
        autoscaling.setdefault("max_replicas", before_fixed)
        del dep["num_replicas"]
    if min_replicas is not None:
        autoscaling["min_replicas"] = min_replicas
    if max_replicas is not None:
        autoscaling["max_replicas"] = max_replicas
    lo = autoscaling.get("min_replicas", 1)
    hi = autoscaling.get("max_replicas", 1)
    if lo > hi:
        raise OpsError(f"{deployment}: min_replicas {lo} would be above max_replicas {hi}")
    dep["autoscaling_config"] = autoscaling

    new_text = yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)
    patch = [
        {"op": "test", "path": "/spec/serveConfigV2", "value": old_text},
        {"op": "replace", "path": "/spec/serveConfigV2", "value": new_text},
    ]
    result: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "stage": key,
        "deployment": deployment,
        "before": before if before is not None else {"num_replicas": before_fixed},
        "after": autoscaling,
        "dryRun": dry_run,
        "helmSet": [
            f"stages.{key}.{field}={autoscaling[cfg_key]}"
            for field, cfg_key in (("minReplicas", "min_replicas"), ("maxReplicas", "max_replicas"))
            if cfg_key in autoscaling
        ],
    }
    if dry_run:
        result["patch"] = patch
        return result
    patched = api.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, patch, _content_type=JSON_PATCH
    )
    result["resourceVersion"] = (patched.get("metadata") or {}).get("resourceVersion")
    return result


# --- command line --------------------------------------------------------------------------


def _api_from_args(args):
    from kubernetes import client, config

    try:
        config.load_kube_config(config_file=args.kubeconfig, context=args.context)
    except Exception:
        if args.kubeconfig or args.context:
            raise
        config.load_incluster_config()
    return client.CustomObjectsApi()


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def format_status(report: dict) -> str:
    lines = [
        f"RayService {report['namespace']}/{report['name']}: "
        f"{'READY' if report['ready'] else 'NOT READY'}, {report['numServeEndpoints']} serve endpoint(s), "
        f"upgradeStrategy {report['upgradeStrategy'] or '-'}"
    ]
    for c in report["conditions"]:
        lines.append(f"  {c['type']}={c['status']} ({c['reason']}): {c['message']}")
    lines.append(
        f"  active cluster: {report['activeCluster'] or '-'}   pending cluster: {report['pendingCluster'] or '-'}"
    )
    for app, s in report["applications"].items():
        lines.append(f"  application {app}: {s['status']}{(' - ' + s['message']) if s['message'] else ''}")
    header = ("STAGE", "DEPLOYMENT", "STATUS", "REPLICAS", "MIN", "MAX", "GPUS")
    rows = []
    for s in report["stages"]:
        r = s["replicas"]
        replicas = f"{r['running']}/{_fmt(r['target'])}" if r else "?"
        rows.append(
            (
                s["stage"] or "-",
                s["deployment"],
                s["status"] or "-",
                replicas,
                _fmt(s["min_replicas"]),
                _fmt(s["max_replicas"]),
                _fmt(s["num_gpus"]),
            )
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        lines.append("  " + "  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())
    if report["replicaSource"] != "serve-api":
        lines.append(f"  replicas: Serve API {report['replicaSource']}")
    for s in report["stages"]:
        if s["message"]:
            lines.append(f"  {s['deployment']}: {s['message']}")
    return "\n".join(lines)


def _cmd_status(args) -> int:
    api = _api_from_args(args)
    report = status(api, args.namespace, args.name, replicas=not args.no_replicas)
    print(json.dumps(report, indent=2) if args.json else format_status(report))
    return 1 if args.check and not report["ready"] else 0


def _cmd_scale(args) -> int:
    api = _api_from_args(args)
    try:
        result = scale(api, args.namespace, args.name, args.stage, args.min, args.max, dry_run=args.dry_run)
    except OpsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        verb = "would set" if result["dryRun"] else "set"
        print(f"{verb} {result['deployment']} autoscaling {result['before']} -> {result['after']}")
        print("keep it across helm upgrades with: " + " ".join(f"--set {s}" for s in result["helmSet"]))
    return 0


def _add_common(parser) -> None:
    parser.add_argument(
        "-n",
        "--namespace",
        default=os.environ.get("SONIC_NAMESPACE", "sonic-serve"),
        help="namespace of the RayService (default: $SONIC_NAMESPACE or sonic-serve)",
    )
    parser.add_argument(
        "--name",
        default=os.environ.get("SONIC_RAYSERVICE", "sonic-serve"),
        help="RayService name, the Helm release's full name (default: $SONIC_RAYSERVICE or sonic-serve)",
    )
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--context", default=None, help="kubeconfig context")
    parser.add_argument("--json", action="store_true", help="print JSON")


def register(subparsers) -> None:
    """Add the ``ops`` command tree (``status``, ``scale``) to an argparse subparsers object.

    Each leaf sets ``func``: call ``args.func(args)`` and exit with the int it returns.
    """
    ops = subparsers.add_parser("ops", help="inspect and scale a deployed RayService (kubernetes API)")
    commands = ops.add_subparsers(dest="ops_command", metavar="{status,scale}")
    commands.required = True

    st = commands.add_parser("status", help="RayService conditions, Serve status, replicas per stage")
    _add_common(st)
    st.add_argument("--no-replicas", action="store_true", help="skip the Serve API call for replica counts")
    st.add_argument("--check", action="store_true", help="exit 1 when the RayService is not Ready")
    st.set_defaults(func=_cmd_status)

    sc = commands.add_parser("scale", help="set a stage's Serve autoscaling bounds in serveConfigV2")
    sc.add_argument("stage", help="stage key or deployment name: " + ", ".join(STAGES))
    sc.add_argument("--min", type=int, default=None, help="autoscaling_config.min_replicas")
    sc.add_argument("--max", type=int, default=None, help="autoscaling_config.max_replicas")
    sc.add_argument("--dry-run", action="store_true", help="print the change without patching")
    _add_common(sc)
    sc.set_defaults(func=_cmd_scale)
