"""The Helm chart (helm/sonic-serve) rendered with the real Helm engine and checked against schemas.

Rendering and linting use helm-python-sdk, which bundles Helm's Go SDK (v4) as a shared library,
so no helm binary and no cluster are needed. Every rendered core object is validated against the
Kubernetes OpenAPI schemas shipped with kubernetes-validate (strict: unknown fields fail, as they
do with kubectl's default server-side field validation). The RayService is validated with
jsonschema against tests/data/ray.io_rayservices.yaml, a HAND-WRITTEN SUBSET of the KubeRay v1.5
RayService CRD derived from the KubeRay v1 Go API types (see the header of that file); the core
types it embeds (pod templates, resources, security contexts, env) are validated against the
Kubernetes schemas. KubeRay's own admission rules that a schema cannot express (name length,
head without GPUs, replica bounds, labels its Services select on) are checked explicitly.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from sonic_serve.ops import STAGES  # values key -> Serve deployment name

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "sonic-serve"
SERVE_CONFIG = ROOT / "deployments" / "serve_config.yaml"
CHART_SERVE_CONFIG = CHART / "files" / "serve_config.yaml"
EXAMPLES = sorted((ROOT / "k8s" / "examples").glob("values-*.yaml"))
CRD_FILE = Path(__file__).parent / "data" / "ray.io_rayservices.yaml"
DOCKERFILE = ROOT / "Dockerfile"

# Oldest k3s line the chart supports (Chart.yaml kubeVersion) and a current one.
K8S_VERSIONS = ["1.28.0", "1.33.0"]
RELEASE = "sonic-serve"
NAMESPACE = "sonic-serve"


# A values file that switches on every optional path the defaults leave off.
EVERYTHING_ON = {
    "image": {"registry": "registry.campus.example:5000", "tag": "1.2.3"},
    "imagePullSecrets": ["campus-registry"],
    "rayService": {"upgradeStrategy": "NewCluster"},
    "tracing": {
        "enabled": True,
        "endpoint": "http://otel-collector.observability:4317",
        "samplingRatio": 0.25,
        "resourceAttributes": {"site": "campus"},
    },
    "ingress": {"host": "sonic.example.edu", "tls": {"enabled": True, "secretName": "sonic-tls"}},
    "weights": {"sync": {"mode": "job"}, "cache": {"type": "pvc", "pvc": {"accessModes": ["ReadWriteMany"]}}},
    "gpuWorkerGroups": [
        {"name": "a100", "minReplicas": 0, "replicas": 0, "maxReplicas": 2, "gpusPerPod": 2},
        {"name": "t4", "minReplicas": 1, "replicas": 1, "maxReplicas": 3, "gpusPerPod": 1},
    ],
    "networkPolicy": {"extraRayIngress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/24"}}], "ports": [{"port": 8080}]}]},
    "auth": {"apiKeys": ["key-aaaaaaaaaaaaaaaa", "key-bbbbbbbbbbbbbbbb"], "webhookSecret": "whsec-123"},
}

EXTERNAL_S3 = {
    "minio": {"enabled": False},
    "s3": {"endpoint": "s3.campus.example:443", "secure": True, "accessKey": "AK", "secretKey": "SK"},
}


def _example(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# Every optional object switched off.
EVERYTHING_OFF = {
    "cpuWorkerGroup": {"enabled": False},
    "ingress": {"enabled": False},
    "networkPolicy": {"enabled": False},
    "podDisruptionBudget": {"enabled": False},
    "minio": {"bootstrap": {"enabled": False}},
    "weights": {"sync": {"mode": "none"}},
    "rayService": {"enableInTreeAutoscaling": False},
}

CASES = {
    "defaults": {},
    **{p.stem: _example(p) for p in EXAMPLES},
    "everything-on": EVERYTHING_ON,
    "everything-off": EVERYTHING_OFF,
    "external-s3": EXTERNAL_S3,
}


def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@functools.lru_cache(maxsize=64)
def _render_cached(values_json: str, name: str) -> tuple[dict, ...]:
    values = json.loads(values_json)
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        manifests = chart.render(values, name=name, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("namespace", NAMESPACE)
                docs.append(doc)
    return tuple(docs)


def render(values: dict | None = None, name: str = RELEASE) -> list[dict]:
    return copy.deepcopy(list(_render_cached(json.dumps(values or {}, sort_keys=True), name)))


def render_notes(values: dict | None = None) -> str:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def render_error(values: dict) -> str:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError) as info:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return str(info.value)


def objects(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = objects(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def serve_config(docs: list[dict]) -> dict:
    return yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])


def deployment(cfg: dict, name: str) -> dict:
    for app in cfg["applications"]:
        for dep in app["deployments"]:
            if dep["name"] == name:
                return dep
    raise KeyError(name)


def ray_pod_templates(rs: dict) -> dict[str, dict]:
    cluster = rs["spec"]["rayClusterConfig"]
    out = {"head": cluster["headGroupSpec"]["template"]}
    for group in cluster.get("workerGroupSpecs", []):
        out[group["groupName"]] = group["template"]
    return out


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def all_pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    specs = []
    for doc in docs:
        if doc["kind"] == "RayService":
            for group, tmpl in ray_pod_templates(doc).items():
                specs.append((f"RayService/{group}", tmpl["spec"]))
        elif doc["kind"] in ("StatefulSet", "Job", "Deployment", "DaemonSet"):
            specs.append((f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]))
    return specs


# --- one source for the serve config -------------------------------------------------------


def test_chart_serve_config_is_byte_identical_to_deployments_copy():
    assert CHART_SERVE_CONFIG.read_bytes() == SERVE_CONFIG.read_bytes(), (
        "helm/sonic-serve/files/serve_config.yaml must be a byte-identical copy of "
        "deployments/serve_config.yaml: cp deployments/serve_config.yaml helm/sonic-serve/files/"
    )


def test_default_serve_config_v2_equals_deployments_serve_config():
    assert serve_config(render()) == yaml.safe_load(SERVE_CONFIG.read_text())


def test_every_stage_key_maps_to_a_deployment_of_the_serve_config():
    cfg = yaml.safe_load(SERVE_CONFIG.read_text())
    names = {d["name"] for app in cfg["applications"] for d in app["deployments"]}
    assert set(STAGES.values()) <= names
    with helm.Chart.load(CHART) as chart:
        assert set(chart.values["stages"]) == set(STAGES)


# --- lint and values hygiene ---------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_helm_lint_is_clean(case):
    report = helm.lint(CHART, CASES[case], strict=True, namespace=NAMESPACE, kube_version="v1.33.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


def test_values_schema_rejects_unknown_and_bad_values():
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema({})
        for bad in (
            {"stages": {"difusion": {"maxReplicas": 2}}},
            {"stages": {"diffusion": {"maxReplicas": 0}}},
            {"rayService": {"upgradeStrategy": "Recreate"}},
            {"head": {"rayStartParams": {"num-gpus": "1"}}},
            {"minio": {"image": {"tag": "latest"}}},
            {"weights": {"cache": {"type": "nfs"}}},
            {"tracing": {"samplingRatio": 2}},
            {"gpuWorkerGroups": [{"name": "head", "minReplicas": 0, "maxReplicas": 1, "gpusPerPod": 1}]},
        ):
            with pytest.raises(helm.HelmError):
                chart.validate_schema(bad)


KEY_LINE = re.compile(r"^(\s*)(- )?([A-Za-z0-9_./-]+):(\s|$)")


def _undocumented_keys(path: Path) -> list[str]:
    """Lines defining a key whose previous non-blank line is not a comment."""
    missing = []
    prev = ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if KEY_LINE.match(line) and not prev.lstrip().startswith("#") and "#" not in line:
            missing.append(f"{path.name}:{number}: {line.strip()}")
        prev = line
    return missing


@pytest.mark.parametrize("path", [CHART / "values.yaml", *EXAMPLES], ids=lambda p: p.name)
def test_every_value_is_commented(path):
    assert _undocumented_keys(path) == []


def test_schema_describes_every_default_value():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value, node, path):
        if isinstance(value, dict) and "properties" in node:
            for key, sub in value.items():
                if key in node["properties"]:
                    walk(sub, node["properties"][key], f"{path}.{key}")
                else:
                    assert node.get("additionalProperties", True) is not False, (
                        f"{path}.{key} is not in values.schema.json"
                    )

    walk(values, schema, "values")


# --- Kubernetes schemas --------------------------------------------------------------------


def _k8s_definitions(version: str) -> Resource:
    package = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    return Resource.from_contents(json.loads((package / f"v{version}-local-strict" / "_definitions.json").read_text()))


@functools.lru_cache(maxsize=4)
def core_validator(version: str, definition: str) -> jsonschema.Draft202012Validator:
    registry = _k8s_definitions(version) @ Registry()
    schema = {"$ref": f"https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.api.core.v1.{definition}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate_core(obj, definition: str, version: str) -> None:
    core_validator(version, definition).validate(obj)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_core_objects_validate_against_kubernetes_schemas(case, version):
    docs = render(CASES[case])
    core = [d for d in docs if not d["apiVersion"].startswith("ray.io/")]
    assert {d["kind"] for d in core} >= {"Secret"}
    for doc in core:
        kubernetes_validate.validate(doc, version, strict=True)


def _strict(schema):
    """kubectl's default (Strict) field validation rejects unknown fields: mirror it."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.lru_cache(maxsize=1)
def rayservice_validator() -> jsonschema.Draft7Validator:
    crd = yaml.safe_load(CRD_FILE.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


def test_crd_test_data_is_a_valid_custom_resource_definition():
    crd = yaml.safe_load(CRD_FILE.read_text())
    kubernetes_validate.validate(crd, K8S_VERSIONS[-1], strict=True)
    assert crd["spec"]["group"] == "ray.io" and crd["spec"]["names"]["kind"] == "RayService"


def test_crd_validator_catches_mistakes():
    rs = one(render(), "RayService")
    validator = rayservice_validator()
    validator.validate(rs)
    for mutate in (
        lambda o: o["spec"].__setitem__("upgradeStrategy", {"type": "Recreate"}),
        lambda o: o["spec"]["rayClusterConfig"].__setitem__("enableInTreeAutoscalng", True),
        lambda o: o["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].pop("groupName"),
        lambda o: o["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].__setitem__("num-gpus", 0),
    ):
        broken = copy.deepcopy(rs)
        mutate(broken)
        assert list(validator.iter_errors(broken)), "mutation was not caught"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_rayservice_validates_against_kuberay_crd_and_core_types(case, version):
    rs = one(render(CASES[case]), "RayService")
    assert rs["apiVersion"] == "ray.io/v1"
    rayservice_validator().validate(rs)
    cluster = rs["spec"]["rayClusterConfig"]
    for tmpl in ray_pod_templates(rs).values():
        validate_core(tmpl, "PodTemplateSpec", version)
    opts = cluster.get("autoscalerOptions", {})
    if "resources" in opts:
        validate_core(opts["resources"], "ResourceRequirements", version)
    if "securityContext" in opts:
        validate_core(opts["securityContext"], "SecurityContext", version)
    yaml.safe_load(rs["spec"]["serveConfigV2"])  # a YAML document, not just a string


@pytest.mark.parametrize("case", list(CASES))
def test_kuberay_admission_rules(case):
    """Rules from KubeRay's ValidateRayServiceMetadata/ValidateRayClusterSpec and its Services."""
    rs = one(render(CASES[case]), "RayService")
    name = rs["metadata"]["name"]
    assert len(name) <= 47 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name)
    cluster = rs["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert head["template"]["spec"]["containers"], "head needs a container"
    assert head["rayStartParams"]["num-gpus"] == "0"
    groups = cluster["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups)
    for g in groups:
        assert g["template"]["spec"]["containers"]
        assert g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]
        assert not (set(g["rayStartParams"]) & {"num-cpus", "num-gpus", "memory", "resources"} and g.get("resources"))
        assert "labels" not in g["rayStartParams"]
    for tmpl in ray_pod_templates(rs).values():
        # Autoscaler v2 (Ray >= 2.47) needs restartPolicy Never or unset.
        assert tmpl["spec"].get("restartPolicy", "Never") == "Never"
        # KubeRay's head Service selects app.kubernetes.io/name=kuberay and ...created-by.
        labels = tmpl["metadata"]["labels"]
        assert "app.kubernetes.io/name" not in labels and "app.kubernetes.io/created-by" not in labels
        assert not {"ray.io/cluster", "ray.io/node-type", "ray.io/group"} & set(labels)
    assert rs["spec"]["upgradeStrategy"]["type"] in ("None", "NewCluster")
    assert cluster["enableInTreeAutoscaling"] is (case != "everything-off")
    assert ("autoscalerOptions" in cluster) is cluster["enableInTreeAutoscaling"]


# --- values land where they belong ---------------------------------------------------------


def test_head_has_no_gpu_and_gpu_groups_have_runtime_class_limits_and_placement():
    docs = render(EVERYTHING_ON)
    rs = one(docs, "RayService")
    cluster = rs["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    head_spec = head["template"]["spec"]
    assert "runtimeClassName" not in head_spec
    for c in head_spec["containers"]:
        assert "nvidia.com/gpu" not in json.dumps(c.get("resources", {}))

    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert list(groups) == ["a100", "t4", "cpu"], "GPU groups keep their order; the CPU group comes last"
    for name, gpus, lo, hi in (("a100", 2, 0, 2), ("t4", 1, 1, 3)):
        g = groups[name]
        spec = g["template"]["spec"]
        assert (g["minReplicas"], g["maxReplicas"]) == (lo, hi)
        assert spec["runtimeClassName"] == "nvidia"
        res = spec["containers"][0]["resources"]
        assert res["limits"]["nvidia.com/gpu"] == str(gpus)
        assert res["requests"]["nvidia.com/gpu"] == str(gpus)
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    cpu = groups["cpu"]
    assert cpu["rayStartParams"]["num-gpus"] == "0"
    assert "runtimeClassName" not in cpu["template"]["spec"]
    assert "nvidia.com/gpu" not in json.dumps(cpu["template"]["spec"]["containers"][0]["resources"])


def test_campus_example_targets_four_single_gpu_nodes():
    docs = render(_example(ROOT / "k8s" / "examples" / "values-campus-edge.yaml"))
    rs = one(docs, "RayService")
    gpu = [g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == "gpu"][0]
    assert gpu["maxReplicas"] == 4
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["template"]["spec"]["volumes"][1]["hostPath"]["path"] == "/var/lib/sonic-serve/models"
    cfg = serve_config(docs)
    max_gpus = sum(
        d["ray_actor_options"].get("num_gpus", 0)
        * d.get("autoscaling_config", {}).get("max_replicas", d.get("num_replicas", 1))
        for d in cfg["applications"][0]["deployments"]
    )
    assert max_gpus <= 4 + 1e-9
    assert rs["spec"]["upgradeStrategy"]["type"] == "None"


def test_single_node_example_fits_one_gpu():
    docs = render(_example(ROOT / "k8s" / "examples" / "values-single-node.yaml"))
    cfg = serve_config(docs)
    total = 0.0
    for d in cfg["applications"][0]["deployments"]:
        n = d.get("autoscaling_config", {}).get("max_replicas", d.get("num_replicas", 1))
        total += d["ray_actor_options"].get("num_gpus", 0) * n
    assert total <= 1.0 + 1e-9
    assert one(docs, "PersistentVolumeClaim")["spec"]["storageClassName"] == "local-path"
    assert any(j["metadata"]["name"].startswith(f"{RELEASE}-weights-") for j in objects(docs, "Job"))


def test_stage_values_override_serve_autoscaling_in_place():
    values = {
        "stages": {
            "diffusion": {
                "minReplicas": 2,
                "maxReplicas": 6,
                "targetOngoingRequests": 1.5,
                "numGpus": 0.5,
                "autoscalingConfig": {"downscale_delay_s": 300},
            },
            "audio": {"minReplicas": 0, "maxOngoingRequests": 9},
            "manager": {"minReplicas": 1, "maxReplicas": 2},
            "ingress": {"numReplicas": 3},
            "postprocess": {"numCpus": 3, "rayActorOptions": {"memory": 4294967296}},
        }
    }
    cfg = serve_config(render(values))
    source = yaml.safe_load(SERVE_CONFIG.read_text())

    diffusion = deployment(cfg, "Diffusion")
    assert diffusion["autoscaling_config"] == {
        "min_replicas": 2,
        "max_replicas": 6,
        "target_ongoing_requests": 1.5,
        "downscale_delay_s": 300,
    }
    assert diffusion["ray_actor_options"]["num_gpus"] == 0.5
    assert diffusion["max_ongoing_requests"] == deployment(source, "Diffusion")["max_ongoing_requests"]

    audio = deployment(cfg, "AudioEncoder")
    assert audio["autoscaling_config"]["min_replicas"] == 0  # zero is a value, not "unset"
    assert (
        audio["autoscaling_config"]["max_replicas"]
        == deployment(source, "AudioEncoder")["autoscaling_config"]["max_replicas"]
    )
    assert audio["max_ongoing_requests"] == 9

    manager = deployment(cfg, "JobManager")
    assert "num_replicas" not in manager
    assert manager["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 2}

    ingress = deployment(cfg, "Ingress")
    assert ingress["num_replicas"] == 3 and "autoscaling_config" not in ingress

    post = deployment(cfg, "PostProcess")
    assert post["ray_actor_options"] == {"num_cpus": 3, "num_gpus": 0.25, "memory": 4294967296}

    # Untouched stages keep the source values exactly.
    for name in ("ImageEncoder", "Fusion"):
        assert deployment(cfg, name) == deployment(source, name)
    # Only serveConfigV2 changed: rayClusterConfig is identical, so KubeRay updates in place.
    assert (
        one(render(values), "RayService")["spec"]["rayClusterConfig"]
        == one(render(), "RayService")["spec"]["rayClusterConfig"]
    )


def test_inconsistent_stage_values_fail_rendering():
    assert "min_replicas 5 is above max_replicas 2" in render_error(
        {"stages": {"diffusion": {"minReplicas": 5, "maxReplicas": 2}}}
    )
    assert "numReplicas cannot be combined" in render_error(
        {"stages": {"fusion": {"numReplicas": 2, "maxReplicas": 4}}}
    )
    assert "weights.sync.mode=job needs weights.cache.type=pvc" in render_error({"weights": {"sync": {"mode": "job"}}})
    assert "s3.endpoint is required" in render_error(
        {"minio": {"enabled": False}, "s3": {"accessKey": "a", "secretKey": "b"}}
    )
    assert "s3.accessKey and s3.secretKey" in render_error({"minio": {"enabled": False}, "s3": {"endpoint": "s3:443"}})
    assert "tracing.endpoint is required" in render_error({"tracing": {"enabled": True}})


def test_images_come_from_values_and_are_pinned():
    docs = render(EVERYTHING_ON)
    expected = "registry.campus.example:5000/sonic-serve/sonic-serve:1.2.3"
    seen = set()
    for where, spec in all_pod_specs(docs):
        for c in spec.get("initContainers", []) + spec["containers"]:
            seen.add(c["image"])
            if c["name"] != "minio":
                assert c["image"] == expected, where
        assert spec["imagePullSecrets"] == [{"name": "campus-registry"}], where
    assert "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z" in seen
    assert not any(i.endswith(":latest") or ":" not in i.rsplit("/", 1)[-1] for i in seen)

    digest = "sha256:" + "a" * 64
    docs = render(
        {
            "image": {"digest": digest},
            "minio": {
                "image": {
                    "registry": "registry.local",
                    "repository": "minio/minio",
                    "tag": "RELEASE.2025-10-15T17-29-55Z",
                }
            },
        }
    )
    images = {c["image"] for _, s in all_pod_specs(docs) for c in s["containers"]}
    assert images == {f"sonic-serve/sonic-serve@{digest}", "registry.local/minio/minio:RELEASE.2025-10-15T17-29-55Z"}


def _secret_data(docs, name):
    secret = [s for s in objects(docs, "Secret") if s["metadata"]["name"] == name]
    assert secret, f"no Secret {name}"
    return {k: base64.b64decode(v).decode() for k, v in secret[0]["data"].items()}


def test_secrets_exist_and_every_reference_resolves():
    for case in CASES.values():
        docs = render(case)
        secrets = {s["metadata"]["name"]: set(s["data"]) for s in objects(docs, "Secret")}
        for where, spec in all_pod_specs(docs):
            for c in spec.get("initContainers", []) + spec["containers"]:
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["key"] in secrets.get(ref["name"], set()), f"{where}/{c['name']}: {ref}"

    docs = render(EVERYTHING_ON)
    auth = _secret_data(docs, f"{RELEASE}-auth")
    assert auth == {"api-keys": "key-aaaaaaaaaaaaaaaa,key-bbbbbbbbbbbbbbbb", "webhook-secret": "whsec-123"}
    generated = _secret_data(render(), f"{RELEASE}-auth")
    assert generated["api-keys"].startswith("sk-") and len(generated["webhook-secret"]) == 48
    s3 = _secret_data(render(EXTERNAL_S3), f"{RELEASE}-s3")
    assert s3 == {"access-key": "AK", "secret-key": "SK"}


def test_existing_secrets_are_used_instead_of_rendered_ones():
    docs = render({"auth": {"existingSecret": "campus-auth"}, "s3": {"existingSecret": "campus-s3"}})
    assert objects(docs, "Secret") == []
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for _, spec in all_pod_specs(docs)
        for c in spec["containers"]
        for e in c.get("env", [])
        if "valueFrom" in e
    }
    assert refs == {"campus-auth", "campus-s3"}


def test_ray_containers_get_s3_api_and_weights_env():
    docs = render(EXTERNAL_S3)
    rs = one(docs, "RayService")
    for group, tmpl in ray_pod_templates(rs).items():
        env = env_of(tmpl["spec"]["containers"][0])
        assert env["SONIC_S3_ENDPOINT"]["value"] == "s3.campus.example:443", group
        assert env["SONIC_S3_SECURE"]["value"] == "true"
        assert env["SONIC_S3_BUCKET"]["value"] == "sonic"
        assert env["SONIC_WEIGHTS"]["value"] == "/models/sonic"
        assert env["SONIC_S3_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": f"{RELEASE}-s3", "key": "access-key"}
        assert env["SONIC_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {"name": f"{RELEASE}-s3", "key": "secret-key"}
        assert env["SONIC_API_KEYS"]["valueFrom"]["secretKeyRef"]["key"] == "api-keys"
        assert env["SONIC_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "webhook-secret"
    head = one(render(), "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]
    minio_env = env_of(head["template"]["spec"]["containers"][0])
    assert minio_env["SONIC_S3_ENDPOINT"]["value"] == f"{RELEASE}-minio.{NAMESPACE}.svc:9000"
    assert minio_env["SONIC_S3_SECURE"]["value"] == "false"
    assert objects(render(EXTERNAL_S3), "StatefulSet") == []


def test_otel_settings_reach_the_head_and_every_worker_group():
    docs = render(EVERYTHING_ON)
    rs = one(docs, "RayService")
    templates = ray_pod_templates(rs)
    assert set(templates) == {"head", "a100", "t4", "cpu"}
    for group, tmpl in templates.items():
        env = env_of(tmpl["spec"]["containers"][0])
        values = {k: env[k]["value"] for k in env if k.startswith(("OTEL_", "RAY_SERVE_TRACING"))}
        assert values.pop("RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH") == "deployments.telemetry:serve_span_processors"
        assert values == {
            "OTEL_SDK_DISABLED": "false",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4317",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_SERVICE_NAME": "sonic-serve",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "RAY_SERVE_TRACING_SAMPLING_RATIO": "0.25",
            "OTEL_RESOURCE_ATTRIBUTES": f"service.namespace={NAMESPACE},deployment.environment={RELEASE},site=campus",
        }, group
    for tmpl in ray_pod_templates(one(render(), "RayService")).values():
        env = env_of(tmpl["spec"]["containers"][0])
        assert env["OTEL_SDK_DISABLED"]["value"] == "true" and env["OTEL_TRACES_EXPORTER"]["value"] == "none"
        assert env["RAY_SERVE_TRACING_SAMPLING_RATIO"]["value"] == "0"
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env


@pytest.mark.parametrize("cache", ["emptyDir", "hostPath", "pvc"])
def test_weights_cache_volume_and_init_sync(cache):
    docs = render({"weights": {"cache": {"type": cache}}})
    rs = one(docs, "RayService")
    workers = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    for g in workers:
        spec = g["template"]["spec"]
        volume = next(v for v in spec["volumes"] if v["name"] == "weights")
        assert cache in volume or (cache == "pvc" and "persistentVolumeClaim" in volume)
        (init,) = spec["initContainers"]
        assert init["command"] == ["sonic-serve", "weights", "pull", "s3://sonic/models", "/models/sonic"]
        assert {"name": "weights", "mountPath": "/models"} in init["volumeMounts"]
        assert {"SONIC_S3_ENDPOINT", "SONIC_S3_ACCESS_KEY", "SONIC_S3_SECRET_KEY", "SONIC_S3_SECURE"} <= set(
            env_of(init)
        )
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "weights")
        assert mount == {"name": "weights", "mountPath": "/models", "readOnly": True}
    head_spec = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert "initContainers" not in head_spec  # the head runs no replicas and needs no weights
    claims = [c["metadata"]["name"] for c in objects(docs, "PersistentVolumeClaim")]
    assert claims == ([f"{RELEASE}-weights"] if cache == "pvc" else [])


def test_weights_job_mode_syncs_once_and_pods_wait_for_the_marker():
    docs = render(EVERYTHING_ON, name=RELEASE)
    job = next(j for j in objects(docs, "Job") if "-weights-" in j["metadata"]["name"])
    script = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert script.startswith(
        "sonic-serve weights pull 's3://sonic/models' '/models/sonic' && touch /models/.sonic-serve-sync-complete"
    )
    assert job["spec"]["template"]["metadata"]["labels"]["sonic-serve.io/s3-client"] == "true"
    for g in one(docs, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        (init,) = g["template"]["spec"]["initContainers"]
        assert init["name"] == "weights-wait" and "/models/.sonic-serve-sync-complete" in init["command"][-1]
    none = one(render({"weights": {"sync": {"mode": "none"}}}), "RayService")
    assert all(
        "initContainers" not in g["template"]["spec"] for g in none["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    )


def test_minio_statefulset_service_and_bucket_job():
    docs = render()
    sts = one(docs, "StatefulSet")
    spec = sts["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "200Gi"
    env = env_of(spec["containers"][0])
    assert env["MINIO_ROOT_USER"]["valueFrom"]["secretKeyRef"] == {"name": f"{RELEASE}-s3", "key": "access-key"}
    services = {s["metadata"]["name"]: s for s in objects(docs, "Service")}
    assert {p["port"] for p in services[f"{RELEASE}-minio"]["spec"]["ports"]} == {9000, 9001}
    assert _matches(services[f"{RELEASE}-minio"]["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
    job = next(j for j in objects(docs, "Job") if "-bucket-" in j["metadata"]["name"])
    cm = one(docs, "ConfigMap")
    assert cm["data"]["bootstrap_bucket.py"] == (CHART / "files" / "bootstrap_bucket.py").read_text()
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["python", "/bootstrap/bootstrap_bucket.py"]
    compile(cm["data"]["bootstrap_bucket.py"], "bootstrap_bucket.py", "exec")


@pytest.mark.s3
def test_bucket_bootstrap_script_creates_the_bucket_once(s3_server):
    """The bootstrap Job's script, run against the embedded S3 server: creates, then leaves alone."""
    bucket = f"sonic-bootstrap-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **s3_server.as_env(), "SONIC_S3_BUCKET": bucket, "BOOTSTRAP_TIMEOUT_S": "30"}
    script = CHART / "files" / "bootstrap_bucket.py"
    first = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert f"created bucket {bucket}" in first.stdout
    assert s3_server.client().bucket_exists(bucket)
    again = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and f"bucket {bucket} already exists" in again.stdout


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_network_policies_admit_only_ingress_to_serve_and_only_ray_to_minio():
    docs = render()
    policies = {p["metadata"]["name"]: p["spec"] for p in objects(docs, "NetworkPolicy")}
    ray_policy = policies[f"{RELEASE}-ray"]
    minio_policy = policies[f"{RELEASE}-minio"]
    rs = one(docs, "RayService")
    ray_labels = [t["metadata"]["labels"] for t in ray_pod_templates(rs).values()]
    assert all(_matches(ray_policy["podSelector"]["matchLabels"], lbl) for lbl in ray_labels)

    serve_rules = [r for r in ray_policy["ingress"] if {"protocol": "TCP", "port": 8000} in r.get("ports", [])]
    assert len(serve_rules) == 1
    (peer,) = serve_rules[0]["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "traefik"}
    unrestricted = [r for r in ray_policy["ingress"] if "ports" not in r]
    assert all(
        p.keys() == {"podSelector"} and p["podSelector"]["matchLabels"] == ray_policy["podSelector"]["matchLabels"]
        for r in unrestricted
        for p in r["from"]
    ), "only Ray pods of this release may reach every Ray port"

    sts = one(docs, "StatefulSet")
    assert _matches(minio_policy["podSelector"]["matchLabels"], sts["spec"]["template"]["metadata"]["labels"])
    (rule,) = minio_policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 9000}]
    (peer,) = rule["from"]
    selector = peer["podSelector"]["matchLabels"]
    assert all(_matches(selector, lbl) for lbl in ray_labels)
    for job in objects(docs, "Job"):
        assert _matches(selector, job["spec"]["template"]["metadata"]["labels"])
    assert not _matches(selector, sts["spec"]["template"]["metadata"]["labels"])
    assert "namespaceSelector" not in peer


def test_ingress_routes_to_kuberay_serve_service_through_traefik():
    docs = render(EVERYTHING_ON)
    ing = one(docs, "Ingress")
    assert ing["spec"]["ingressClassName"] == "traefik"
    assert ing["spec"]["tls"] == [{"secretName": "sonic-tls", "hosts": ["sonic.example.edu"]}]
    assert ing["metadata"]["annotations"]["traefik.ingress.kubernetes.io/router.entrypoints"] == "websecure"
    (rule,) = ing["spec"]["rules"]
    assert rule["host"] == "sonic.example.edu"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{one(docs, 'RayService')['metadata']['name']}-serve-svc", "port": {"number": 8000}}
    plain = one(render(), "Ingress")
    assert "tls" not in plain["spec"] and "host" not in plain["spec"]["rules"][0]


def test_pod_disruption_budgets_select_ray_groups():
    docs = render(EVERYTHING_ON)
    rs = one(docs, "RayService")
    templates = ray_pod_templates(rs)
    pdbs = {p["metadata"]["name"]: p["spec"] for p in objects(docs, "PodDisruptionBudget")}
    assert set(pdbs) == {f"{RELEASE}-{g}" for g in templates}
    for group in templates:
        sel = pdbs[f"{RELEASE}-{group}"]["selector"]["matchLabels"]
        assert [g for g, t in templates.items() if _matches(sel, t["metadata"]["labels"])] == [group]
    assert pdbs[f"{RELEASE}-head"]["minAvailable"] == 1


@pytest.mark.parametrize("case", list(CASES))
def test_every_container_has_requests_limits_and_a_non_root_security_context(case):
    for where, spec in all_pod_specs(render(CASES[case])):
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0, where
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
        for c in spec.get("initContainers", []) + spec["containers"]:
            res = c["resources"]
            assert res["requests"] and res["limits"], f"{where}/{c['name']}"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    autoscaler = one(render(CASES[case]), "RayService")["spec"]["rayClusterConfig"].get("autoscalerOptions")
    if autoscaler is not None:
        assert autoscaler["resources"]["limits"] and autoscaler["securityContext"]["allowPrivilegeEscalation"] is False


def test_optional_objects_switch_off():
    kinds = sorted(d["kind"] for d in render(EVERYTHING_OFF))
    assert kinds == ["RayService", "Secret", "Secret", "Service", "Service", "StatefulSet"]
    rs = one(render(EVERYTHING_OFF), "RayService")
    assert [g["groupName"] for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]] == ["gpu"]


def test_upgrade_strategy_default_is_none_and_configurable():
    assert one(render(), "RayService")["spec"]["upgradeStrategy"] == {"type": "None"}
    assert one(render(EVERYTHING_ON), "RayService")["spec"]["upgradeStrategy"] == {"type": "NewCluster"}


def test_long_release_names_stay_within_kuberay_limits():
    docs = render({}, name="a-very-long-release-name-for-the-campus-cluster")
    names = [d["metadata"]["name"] for d in docs]
    assert all(len(n) <= 63 for n in names)
    assert len(one(docs, "RayService")["metadata"]["name"]) <= 40


def test_notes_report_gpu_demand_against_capacity():
    notes = render_notes()
    assert "asks for 1.35 GPUs at minimum and 18.4 at maximum scale" in notes
    assert "provide at most 4" in notes
    starving = render_notes(
        {"gpuWorkerGroups": [{"name": "gpu", "minReplicas": 0, "replicas": 0, "maxReplicas": 1, "gpusPerPod": 1}]}
    )
    assert "WARNING: the minimum GPU demand exceeds" in starving


# --- k8s/ manifests and the Dockerfile ------------------------------------------------------


def _k8s_docs() -> list[tuple[str, dict]]:
    out = []
    for path in sorted((ROOT / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_validate(version):
    docs = _k8s_docs()
    assert {d["kind"] for _, d in docs} == {"Namespace", "RuntimeClass", "DaemonSet"}
    for _, doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_runtime_class_and_device_plugin():
    docs = {d["kind"]: d for _, d in _k8s_docs()}
    assert docs["RuntimeClass"]["metadata"]["name"] == "nvidia" and docs["RuntimeClass"]["handler"] == "nvidia"
    ds = docs["DaemonSet"]["spec"]["template"]["spec"]
    assert ds["runtimeClassName"] == "nvidia"
    image = ds["containers"][0]["image"]
    assert image.startswith("nvcr.io/nvidia/k8s-device-plugin:v") and not image.endswith(":latest")
    assert ds["volumes"][0]["hostPath"]["path"] == "/var/lib/kubelet/device-plugins"
    # The GPU worker groups land where the device plugin runs.
    gpu_selector = one(render(), "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"][
        "nodeSelector"
    ]
    assert gpu_selector.items() <= ds["nodeSelector"].items()


def test_dockerfile_builds_on_official_ray_cuda_py311_image_matching_the_chart():
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG RAY_IMAGE=(\S+)$", text, re.M).group(1)
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py311-cu(\d+)", base)
    assert m, base
    assert re.search(r"^FROM \$\{RAY_IMAGE\}", text, re.M)
    with helm.Chart.load(CHART) as chart:
        assert chart.values["rayService"]["rayVersion"] == m.group(1), "chart rayVersion must match the image's Ray"
    assert re.search(r"pip install[^\n]*\s\.(\s|$)", text)
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert {"weights/", "*.safetensors"} <= set(ignore), "weights are never baked into the image"
