"""The HTTP API v1 in-process (FastAPI TestClient) on a real S3 server, without Ray: API keys and tenants,
problem documents, presigned uploads and the checks on upload keys, the OpenAPI document, retention rules.
Paths that need the JobManager are covered on the whole stack in tests/test_api.py; here the manager is not
connected, which is itself a state the API must answer well (503)."""

from __future__ import annotations

import json
import time
from dataclasses import fields
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from deployments.api import Services, create_app, openapi_spec
from deployments.api.schemas import JobParams as JobParamsSchema
from deployments.auth import (
    KeyRing,
    configured_tenants,
    create_api_key,
    effective_quotas,
    hash_key,
    load_tenants,
    tenants_from_env,
)
from deployments.config import AppConfig
from deployments.ingress import retention_rules
from deployments.jobs import JobParams
from deployments.storage import Keys
from tests.helpers import astronaut_png, speech_wav

pytestmark = pytest.mark.s3

DOCS_OPENAPI = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"
PROBLEM = "https://sonic-serve.dev/problems/"
FILE_KEY = "sk-school-a-0123456789abcdef"
ENV_KEY = "sk-env-default-0123456789"


def assert_problem(response: httpx.Response, status: int, slug: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == PROBLEM + slug and body["status"] == status
    assert body["title"] and body["detail"] and isinstance(body["errors"], list)
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
        assert all(e["message"] and e["fix"] for e in body["errors"])
    return body


@pytest.fixture
def api(s3_storage, tmp_path):
    """(client, services, S3 key of tenant ``local``) with a tenants file and SONIC_API_KEYS configured."""
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(f"""tenants:
  school-a:
    api_keys: ["{FILE_KEY}"]
    webhook_secret: whsec_from_the_tenants_file
    quotas: {{max_running: 2, submits_per_minute: 30}}
""")
    config = AppConfig(s3_bucket=s3_storage.bucket, api_keys_file=str(tenants), presign_expiry_s=600)
    services = Services(config, s3_storage, s3_storage.presigner(""),
                        KeyRing(s3_storage, tenants, env={"SONIC_API_KEYS": ENV_KEY}))
    key = create_api_key(s3_storage, "local")
    with TestClient(create_app(services), raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        yield client, services, key


# -- tenants, keys -------------------------------------------------------------------------------------------


def test_tenants_file_and_env_keys(tmp_path):
    path = tmp_path / "t.json"
    digest = hash_key("sk-hashed-key-0123456789")
    path.write_text(json.dumps({"tenants": {"acme": {"api_keys": ["sk-acme-plain-0123456789", f"sha256:{digest}"],
                                                     "quotas": {"max_queued": 5}}}}))
    tenants = load_tenants(path)
    assert set(tenants) == {"acme"}
    assert tenants["acme"].key_hashes == {hash_key("sk-acme-plain-0123456789"), digest}
    assert tenants["acme"].quotas == {"max_queued": 5} and tenants["acme"].webhook_secret is None

    env = tenants_from_env(f" acme:sk-acme-env-0123456789 , sk-bare-default-0123 ,beta:sha256:{digest.upper()},")
    assert env["acme"].key_hashes == {hash_key("sk-acme-env-0123456789")}
    assert env["default"].key_hashes == {hash_key("sk-bare-default-0123")}
    assert env["beta"].key_hashes == {digest}
    merged = configured_tenants(path, {"SONIC_API_KEYS": "acme:sk-acme-env-0123456789"})
    assert len(merged["acme"].key_hashes) == 3 and merged["acme"].quotas == {"max_queued": 5}
    assert effective_quotas({"max_running": 4, "max_queued": 200, "submits_per_minute": 120},
                            {"quotas": {"max_running": 1, "max_queued": 9}}, merged["acme"]) == \
        {"max_running": 1, "max_queued": 5, "submits_per_minute": 120}

    for bad, words in [({"tenants": {"Bad Name": {}}}, "tenant name"),
                       ({"acme": {"api_keys": "sk-a-string-not-a-list"}}, "must be a list"),
                       ({"acme": {"api_keys": ["short"]}}, "at least 16"),
                       ({"acme": {"api_keys": ["sha256:abc"]}}, "64 hex"),
                       ({"acme": {"quota": {}}}, "unknown field"),
                       ({"acme": {"quotas": {"max_running": -1}}}, "non-negative")]:
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=words) as info:
            load_tenants(path)
        assert "sk-a-string" not in str(info.value)          # never echo a key
    with pytest.raises(ValueError, match="tenant name"):
        tenants_from_env("Not_A_Tenant:sk-0123456789abcdef")


def test_key_ring_resolves_file_env_and_s3_keys(s3_storage, tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(f"acme:\n  api_keys: ['{FILE_KEY}']\n")
    stored = create_api_key(s3_storage, "beta")
    ring = KeyRing(s3_storage, path, env={"SONIC_API_KEYS": ENV_KEY}, reload_s=0)
    assert ring.lookup(FILE_KEY).tenant == "acme"
    assert ring.lookup(ENV_KEY).tenant == "default"
    assert ring.lookup(stored).tenant == "beta"
    assert ring.lookup("sk-unknown-0123456789") is None and ring.lookup("") is None
    # a rotated file is picked up; the old key stops working
    time.sleep(0.01)
    path.write_text("acme:\n  api_keys: ['sk-rotated-key-0123456789']\n")
    import os

    os.utime(path, (time.time() + 5, time.time() + 5))
    assert ring.lookup(FILE_KEY) is None and ring.lookup("sk-rotated-key-0123456789").tenant == "acme"
    with pytest.raises(ValueError, match="two tenants"):
        KeyRing(s3_storage, None, env={"SONIC_API_KEYS": f"a:{ENV_KEY},b:{ENV_KEY}"})


def test_auth_problems_and_tenant_endpoint(api):
    client, _, _ = api
    bare = httpx.Headers({"Authorization": ""})
    body = assert_problem(client.get("/v1/tenant", headers=bare), 401, "unauthorized", "Authorization")
    assert body["instance"] == "/v1/tenant"
    assert_problem(client.get("/v1/jobs", headers={"Authorization": "Bearer sk-nobody-0123456789"}), 401,
                   "unauthorized")
    assert_problem(client.get("/v1/jobs", headers={"Authorization": "Basic dXNlcjpwdw=="}), 401, "unauthorized")
    assert client.get("/v1/tenant").json()["tenant"] == "local"
    school = client.get("/v1/tenant", headers={"Authorization": f"Bearer {FILE_KEY}"}).json()
    assert school == {"tenant": "school-a", "webhook_secret": "whsec_from_the_tenants_file",
                      "quotas": {"max_running": 2, "max_queued": 200, "submits_per_minute": 30}}
    assert client.get("/v1/tenant", headers={"Authorization": f"Bearer {ENV_KEY}"}).json()["tenant"] == "default"
    # probes and the page need no key
    assert client.get("/healthz", headers=bare).json() == {"status": "ok", "s3": True}
    ready = client.get("/readyz", headers=bare)
    assert ready.status_code == 503 and ready.json()["manager"] is False and ready.headers["Retry-After"]
    assert client.get("/", headers=bare).status_code == 200


# -- problems ----------------------------------------------------------------------------------------------


def test_bad_requests_are_clear_4xx_problems(api):
    client, _, _ = api
    assert_problem(client.post("/v1/jobs", content=b"{nope", headers={"Content-Type": "application/json"}),
                   400, "malformed_json", "body")
    assert_problem(client.post("/v1/jobs", content=b"hi", headers={"Content-Type": "text/plain"}), 415,
                   "unsupported_media_type", "Content-Type")
    assert_problem(client.post("/v1/jobs", json=[1, 2]), 422, "validation_error", "body")
    assert_problem(client.post("/v1/jobs", json={"image_key": "k", "audio_key": "k", "colour": 1}), 422,
                   "validation_error", "colour")
    assert_problem(client.post("/v1/jobs", json={"image_key": "k"}), 422, "validation_error", "audio_key")
    big = json.dumps({"image_key": "x" * (5 << 20)}).encode()
    assert_problem(client.post("/v1/jobs", content=big, headers={"Content-Type": "application/json"}), 413,
                   "payload_too_large")
    # multipart: parameters are checked first, then the files
    files = {"image": ("a.png", b"x"), "audio": ("a.wav", b"y")}
    assert_problem(client.post("/v1/jobs", files=files, data={"steps": "0"}), 422, "invalid_parameter", "steps")
    assert_problem(client.post("/v1/jobs", files=files, data={"colour": "red"}), 422, "invalid_parameter",
                   "colour")
    assert_problem(client.post("/v1/jobs", files=files, data={"params": "{not json"}), 422, "invalid_parameter",
                   "params")
    assert_problem(client.post("/v1/jobs", files={"image": ("a.png", b"x")}), 422, "validation_error", "audio")
    png = astronaut_png().read_bytes()
    body = assert_problem(client.post("/v1/jobs", files={"image": ("a.png", png), "audio": ("a.wav", png)}),
                          422, "invalid_media", "audio")
    assert "PNG" in body["errors"][0]["message"] and "WAV" in body["errors"][0]["fix"]
    oversized = {"image": ("a.png", b"\0" * ((25 << 20) + 1)), "audio": ("a.wav", b"y")}
    assert_problem(client.post("/v1/jobs", files=oversized), 413, "payload_too_large", "image")
    assert_problem(client.post("/v1/jobs", files=files, data={"webhook_url": "http://10.1.2.3/hook"}), 422,
                   "invalid_parameter", "webhook_url")
    assert_problem(client.get("/v1/jobs", params={"limit": 0}), 422, "validation_error", "limit")
    assert_problem(client.get("/v1/jobs", params={"state": "sleeping"}), 422, "validation_error", "state")
    assert_problem(client.get("/v1/jobs/j0000000000000000000000"), 404, "not_found")
    assert_problem(client.get("/v1/jobs/..%2Fsecrets"), 404, "not_found")
    assert_problem(client.get("/v1/nowhere"), 404, "not_found")
    assert_problem(client.put("/v1/tenant"), 405, "method_not_allowed")
    assert_problem(client.post("/v1/jobs", headers={"Idempotency-Key": "x" * 300}, json={}), 400, "bad_request",
                   "Idempotency-Key")


def test_valid_job_without_a_manager_is_a_503_and_stores_nothing(api):
    client, services, _ = api
    files = {"image": ("a.png", astronaut_png().read_bytes()), "audio": ("a.wav", speech_wav(2.0).read_bytes())}
    body = assert_problem(client.post("/v1/jobs", files=files, data={"steps": "2"}), 503, "unavailable")
    assert "manager" in body["detail"]
    assert services.storage.list(Keys.jobs("local")) == []
    preview = client.post("/v1/preview", files={"image": ("a.png", astronaut_png().read_bytes())})
    assert_problem(preview, 503, "unavailable")


# -- uploads -------------------------------------------------------------------------------------------------


def test_presigned_upload_keys_are_checked(api):
    client, services, _ = api
    assert_problem(client.post("/v1/uploads", json={}), 422, "validation_error", "image")
    assert_problem(client.post("/v1/uploads", json={"video": {}}), 422, "validation_error", "video")
    created = client.post("/v1/uploads", json={"image": {"filename": "me.png", "content_type": "image/png"},
                                               "audio": {"filename": "talk.wav"}})
    assert created.status_code == 201, created.text
    upload = created.json()
    assert upload["image"]["key"] == f"uploads/local/{upload['upload_id']}/image"
    assert upload["image"]["method"] == "PUT" and upload["image"]["headers"] == {"Content-Type": "image/png"}
    assert upload["expires_at"] - time.time() == pytest.approx(600, abs=30)
    assert "X-Amz-Signature=" in upload["image"]["url"] and "X-Amz-Expires=600" in upload["image"]["url"]
    put = httpx.put(upload["image"]["url"], content=astronaut_png().read_bytes(), headers={"Content-Type": "image/png"})
    assert put.status_code == 200
    assert services.storage.get_bytes(upload["image"]["key"]) == astronaut_png().read_bytes()

    def job(image_key: str, audio_key: str) -> httpx.Response:
        return client.post("/v1/jobs", json={"image_key": image_key, "audio_key": audio_key, "params": {"steps": 2}})

    image, audio = upload["image"]["key"], upload["audio"]["key"]
    assert_problem(job(image, audio), 422, "upload_missing", "audio_key")       # never PUT
    assert_problem(job(audio, image), 422, "invalid_key", "image_key")          # kinds swapped
    assert_problem(job("uploads/local/../other/u0/image", audio), 422, "invalid_key", "image_key")
    assert_problem(job("inputs/local/j1/image.png", audio), 422, "invalid_key", "image_key")
    assert_problem(job(image.replace("/local/", "/other/"), audio), 404, "not_found", "image_key")
    assert_problem(job(image.replace(upload["upload_id"], "u" + "0" * 23), audio), 404, "not_found")
    httpx.put(upload["audio"]["url"], content=speech_wav(2.0).read_bytes()).raise_for_status()
    assert_problem(job(image, audio), 503, "unavailable")          # valid: only the manager is missing
    record_key = Keys.upload("local", upload["upload_id"], "upload.json")
    record = services.storage.get_json(record_key)
    services.storage.put_json(record_key, {**record, "expires_at": time.time() - 1})
    body = assert_problem(job(image, audio), 410, "upload_expired", "image_key")
    assert "POST /v1/uploads" in body["errors"][0]["fix"]


def test_presigned_urls_use_the_public_endpoint(s3_storage):
    signer = s3_storage.presigner("https://media.example.edu:8443")
    url = signer.presigned_put("uploads/t/u/image", 60)
    assert url.startswith(f"https://media.example.edu:8443/{s3_storage.bucket}/uploads/t/u/image?")
    assert "us-east-1" in url     # region fixed: signing made no call to the unreachable host
    get = signer.presigned_get("outputs/t/j/video.mp4", 60, "j.mp4")
    assert "response-content-disposition=attachment" in get


def test_retention_lifecycle_rules(s3_storage):
    rules = retention_rules(AppConfig(retention_days=7))
    assert rules["outputs/"] == 7 and rules["uploads/"] == 1 and "models/" not in rules
    assert s3_storage.apply_retention(rules) is True
    applied = {r.rule_filter.prefix: r.expiration.days for r in s3_storage.client.get_bucket_lifecycle(
        s3_storage.bucket).rules}
    assert applied == {k: v for k, v in rules.items() if v > 0}
    assert s3_storage.apply_retention(retention_rules(AppConfig(retention_days=0))) is True
    kept = {r.rule_filter.prefix for r in s3_storage.client.get_bucket_lifecycle(s3_storage.bucket).rules}
    assert kept == {"uploads/", "idempotency/"}


# -- OpenAPI -------------------------------------------------------------------------------------------------


def test_openapi_document_is_committed_and_documents_job_params():
    spec = openapi_spec()
    assert json.loads(DOCS_OPENAPI.read_text()) == spec, \
        "docs/openapi.json is stale: python -m deployments.api.openapi > docs/openapi.json"
    documented = set(spec["components"]["schemas"]["JobParams"]["properties"])
    assert documented == {f.name for f in fields(JobParams)} | set(JobParams.ALIASES)
    assert set(JobParamsSchema.model_fields) == documented
    job_post = spec["paths"]["/v1/jobs"]["post"]
    assert set(job_post["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert job_post["responses"]["409"]["content"]["application/problem+json"]
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            secured = bool(operation.get("security"))
            assert secured == path.startswith("/v1/"), (method, path)
