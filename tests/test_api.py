"""The HTTP API v1 on the whole Serve app (local Ray, real S3, tiny weights; 128 px, 2 steps, ~2.5 s speech).

One job runs to the end (presigned upload -> JSON job with an Idempotency-Key -> SSE to completion) and the
result assertions share it; the other jobs are cancelled at once. A second tenant checks that nothing of the
first one is visible to it on any endpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deployments.auth import create_api_key
from deployments.storage import Keys
from tests.helpers import astronaut_png, speech_wav

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.timeout(900)]

SECONDS = 2.5
PARAMS = {"steps": 2, "min_resolution": 128, "seed": 5, "metadata": {"course": "optics-101"}}
PROBLEM = "https://sonic-serve.dev/problems/"
DOCS_OPENAPI = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"
TERMINAL = {"succeeded", "failed", "cancelled"}


def client(stack, key: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key or stack.api_key}"}, timeout=120)


def assert_problem(response: httpx.Response, status: int, slug: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == PROBLEM + slug and body["status"] == status and body["detail"]
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
    return body


def multipart(**params) -> dict:
    files = {"image": ("portrait.png", astronaut_png().read_bytes(), "image/png"),
             "audio": ("speech.wav", speech_wav(SECONDS).read_bytes(), "audio/wav")}
    return {"files": files, "data": {k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in params.items()}}


def upload_pair(api: httpx.Client) -> dict:
    created = api.post("/v1/uploads", json={"image": {"filename": "me.png", "content_type": "image/png"},
                                            "audio": {"filename": "talk.wav", "content_type": "audio/wav"}})
    assert created.status_code == 201, created.text
    upload = created.json()
    for kind, path in (("image", astronaut_png()), ("audio", speech_wav(SECONDS))):
        target = upload[kind]
        assert target["method"] == "PUT"
        httpx.put(target["url"], content=path.read_bytes(), headers=target["headers"], timeout=60).raise_for_status()
    return upload


def read_events(api: httpx.Client, job_id: str, deadline_s: float = 600) -> Iterator[tuple[str, dict]]:
    """(event, job) pairs until a terminal state, reconnecting like EventSource when a stream ends early."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        with api.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            event, data = None, []
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif line == "" and event:
                    job = json.loads("".join(data))
                    yield event, job
                    if job["state"] in TERMINAL:
                        return
                    event, data = None, []
    raise TimeoutError(f"no terminal state of {job_id} in {deadline_s}s")


@pytest.fixture(scope="module")
def other_key(serve_stack) -> str:
    return create_api_key(serve_stack.storage(), "other-school", label="isolation test")


@pytest.fixture(scope="module")
def finished(serve_stack) -> dict:
    """The one job run to the end: uploads, idempotent JSON submit, its SSE events and final record."""
    with client(serve_stack) as api:
        upload = upload_pair(api)
        body = {"image_key": upload["image"]["key"], "audio_key": upload["audio"]["key"], "params": PARAMS}
        first = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "lesson-1"})
        assert first.status_code == 202, first.text
        job = first.json()
        replay = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "lesson-1"})
        conflict = api.post("/v1/jobs", json={**body, "params": {**PARAMS, "seed": 6}},
                            headers={"Idempotency-Key": "lesson-1"})
        early = api.get(f"/v1/jobs/{job['id']}/result")
        events = list(read_events(api, job["id"]))
        record = api.get(f"/v1/jobs/{job['id']}").json()
    return {"upload": upload, "first": first, "job": job, "replay": replay, "conflict": conflict, "early": early,
            "events": events, "record": record}


# -- the finished job ------------------------------------------------------------------------------------------


def test_json_job_from_presigned_uploads_is_accepted(finished):
    first, job = finished["first"], finished["job"]
    assert first.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued" and job["progress"]["fraction"] == 0.0
    assert job["params"]["steps"] == 2 and job["params"]["min_resolution"] == 128
    assert job["metadata"] == {"course": "optics-101"}
    assert job["media"]["image"] == {"format": "png", "width": 512, "height": 512}
    assert job["media"]["audio"]["duration_s"] == pytest.approx(SECONDS, abs=0.01)
    assert job["links"]["events"] == f"/v1/jobs/{job['id']}/events" and job["result"] is None
    assert "inputs" not in job                       # S3 keys stay server-side


def test_idempotency_key_replays_and_conflicts(finished):
    replay, conflict = finished["replay"], finished["conflict"]
    assert replay.status_code == 200 and replay.json()["id"] == finished["job"]["id"]
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert_problem(conflict, 409, "idempotency_conflict", "Idempotency-Key")


def test_result_before_success_is_a_409(finished):
    body = assert_problem(finished["early"], 409, "job_not_succeeded")
    assert body["state"] in ("queued", "running")


def test_sse_stream_reports_state_and_progress_to_the_end(finished):
    events = finished["events"]
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "state" and kinds[-1] == "state" and "progress" in kinds
    assert events[-1][1]["state"] == "succeeded" and events[-1][1]["result"]["video_url"]
    states = [job["state"] for kind, job in events if kind == "state"]
    assert states[-1] == "succeeded" and "running" in states
    fractions = [job["progress"]["fraction"] for _, job in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    steps = {job["progress"]["done"] for _, job in events if job["stage"] == "denoise"}
    assert steps & {1, 2}, steps


def test_finished_job_record(finished):
    record = finished["record"]
    assert record["state"] == "succeeded" and record["stage"] == "done"
    assert record["progress"]["fraction"] == 1.0
    assert [h["state"] for h in record["history"]][:1] == ["queued"]
    assert record["history"][-1]["state"] == "succeeded" and "running" in [h["state"] for h in record["history"]]
    assert {"encode", "denoise", "postprocess"} <= set(record["timings_s"])
    assert record["created_at"] <= record["started_at"] <= record["finished_at"]
    assert record["error"] is None and record["result"]["expires_at"] > time.time()
    assert "video_key" not in (record["output"] or {})


def test_result_poster_and_metadata_redirect_to_real_bytes(serve_stack, finished):
    job_id = finished["job"]["id"]
    with client(serve_stack) as api:
        for path, check in (("result", lambda b: b[4:8] == b"ftyp"), ("poster", lambda b: b[:3] == b"\xff\xd8\xff"),
                            ("metadata", lambda b: json.loads(b)["frames"] > 0)):
            redirect = api.get(f"/v1/jobs/{job_id}/{path}")
            assert redirect.status_code == 302, redirect.text
            target = redirect.headers["Location"]
            assert "X-Amz-Signature=" in target
            download = httpx.get(target, timeout=60)          # no API key: the URL itself is the grant
            assert download.status_code == 200 and check(download.content), path
        urls = finished["record"]["result"]
        assert httpx.get(urls["video_url"], timeout=60).content[4:8] == b"ftyp"


def test_list_jobs_paginates_newest_first(serve_stack, finished):
    with client(serve_stack) as api:
        # a second (cancelled) job, so that there are two pages
        second = api.post("/v1/jobs", **multipart(**PARAMS))
        assert second.status_code == 202, second.text
        api.delete(f"/v1/jobs/{second.json()['id']}")
        page = api.get("/v1/jobs", params={"limit": 1}).json()
        assert [j["id"] for j in page["jobs"]] == [second.json()["id"]] and page["next_cursor"]
        ids = [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        while cursor:
            page = api.get("/v1/jobs", params={"limit": 1, "cursor": cursor}).json()
            ids += [j["id"] for j in page["jobs"]]
            cursor = page["next_cursor"]
        assert finished["job"]["id"] in ids and ids == sorted(ids, reverse=True) and len(ids) == len(set(ids))
        succeeded = api.get("/v1/jobs", params={"state": "succeeded", "limit": 100}).json()
        assert finished["job"]["id"] in [j["id"] for j in succeeded["jobs"]]
        assert all(j["state"] == "succeeded" for j in succeeded["jobs"])
        assert_problem(api.get("/v1/jobs", params={"cursor": "../x"}), 422, "validation_error", "cursor")


# -- cancel ----------------------------------------------------------------------------------------------------


def test_cancel_a_multipart_job(serve_stack, finished):
    with client(serve_stack) as api:
        created = api.post("/v1/jobs", **multipart(**PARAMS, lip_sync=True))
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        cancelled = api.delete(f"/v1/jobs/{job_id}")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["state"] == "cancelled"
        record = api.get(f"/v1/jobs/{job_id}").json()
        assert record["state"] == "cancelled" and record["history"][-1]["state"] == "cancelled"
        assert_problem(api.delete(f"/v1/jobs/{job_id}"), 409, "job_finished")
        assert_problem(api.delete(f"/v1/jobs/{finished['job']['id']}"), 409, "job_finished")
        assert_problem(api.get(f"/v1/jobs/{job_id}/result"), 409, "job_not_succeeded")
        events = list(read_events(api, job_id, 60))
        assert events == [("state", events[0][1])] and events[0][1]["state"] == "cancelled"


# -- batches ---------------------------------------------------------------------------------------------------


def test_batch_with_per_item_results(serve_stack, finished, other_key):
    upload = finished["upload"]
    good = {"image_key": upload["image"]["key"], "audio_key": upload["audio"]["key"], "params": PARAMS}
    items = [good,
             {**good, "image_key": "uploads/local/../other-school/u1/image"},
             {**good, "audio_key": upload["image"]["key"]}]
    with client(serve_stack) as api:
        # a parameter outside the schema makes the request invalid: 422 naming the item, nothing created
        listed = len(api.get("/v1/jobs", params={"limit": 100}).json()["jobs"])
        bad_params = items + [{**good, "params": {"steps": 500}}]
        assert_problem(api.post("/v1/batches", json={"items": bad_params}), 422, "invalid_parameter",
                       "items[3].params.steps")
        assert len(api.get("/v1/jobs", params={"limit": 100}).json()["jobs"]) == listed
        created = api.post("/v1/batches", json={"items": items})
        assert created.status_code == 202, created.text
        batch = created.json()
        assert created.headers["Location"] == f"/v1/batches/{batch['batch_id']}"
        assert (batch["accepted"], batch["rejected"]) == (1, 2)
        assert [i["status"] for i in batch["items"]] == [202, 422, 422]
        job_id = batch["items"][0]["job"]["id"]
        assert batch["items"][0]["job"]["batch_id"] == batch["batch_id"]
        assert batch["items"][1]["error"]["errors"][0]["field"] == "items[1].image_key"
        assert batch["items"][2]["error"]["type"] == PROBLEM + "invalid_key"
        api.delete(f"/v1/jobs/{job_id}")
        again = api.get(f"/v1/batches/{batch['batch_id']}").json()
        assert again["items"][0]["job"]["id"] == job_id and again["states"] == {"cancelled": 1}
        assert again["items"][2]["error"]["type"] == PROBLEM + "invalid_key"
        assert_problem(api.post("/v1/batches", json={"items": []}), 422, "validation_error", "items")
        assert_problem(api.get("/v1/batches/bnope"), 404, "not_found")
    with client(serve_stack, other_key) as other:
        assert_problem(other.get(f"/v1/batches/{batch['batch_id']}"), 404, "not_found")


# -- isolation -------------------------------------------------------------------------------------------------


def test_another_tenant_sees_nothing(serve_stack, finished, other_key):
    job_id = finished["job"]["id"]
    upload = finished["upload"]
    with client(serve_stack, other_key) as other:
        assert other.get("/v1/tenant").json()["tenant"] == "other-school"
        for method, path in (("GET", ""), ("GET", "/events"), ("GET", "/result"), ("GET", "/poster"),
                             ("GET", "/metadata"), ("DELETE", "")):
            assert_problem(other.request(method, f"/v1/jobs/{job_id}{path}"), 404, "not_found")
        assert job_id not in [j["id"] for j in other.get("/v1/jobs", params={"limit": 100}).json()["jobs"]]
        stolen = {"image_key": upload["image"]["key"], "audio_key": upload["audio"]["key"], "params": PARAMS}
        assert_problem(other.post("/v1/jobs", json=stolen), 404, "not_found", "image_key")
        batch = other.post("/v1/batches", json={"items": [stolen]}).json()
        assert batch["accepted"] == 0 and batch["items"][0]["status"] == 404
        replay = other.post("/v1/jobs", json=stolen, headers={"Idempotency-Key": "lesson-1"})
        assert_problem(replay, 404, "not_found")          # keys are per tenant: no replay of the other's job
    assert serve_stack.storage().get_json(Keys.job("other-school", job_id)) is None


# -- the rest ----------------------------------------------------------------------------------------------------


def test_errors_are_problems_over_http(serve_stack):
    with client(serve_stack) as api:
        assert_problem(httpx.get(f"{serve_stack.url}/v1/jobs", timeout=30), 401, "unauthorized", "Authorization")
        assert_problem(api.get("/v1/jobs/jnope"), 404, "not_found")
        assert_problem(api.post("/v1/jobs", content=b"{", headers={"Content-Type": "application/json"}), 400,
                       "malformed_json")
        assert_problem(api.post("/v1/jobs", content=b"x", headers={"Content-Type": "text/csv"}), 415,
                       "unsupported_media_type")
        png = astronaut_png().read_bytes()
        body = assert_problem(api.post("/v1/jobs", files={"image": ("a.png", png), "audio": ("a.wav", png)},
                                       data={"steps": "2"}), 422, "invalid_media", "audio")
        assert body["errors"][0]["fix"]
        assert_problem(api.post("/v1/jobs", **multipart(webhook_url="http://10.0.0.5/hook")), 422,
                       "invalid_parameter", "webhook_url")
        assert_problem(api.post("/v1/jobs", json={"image_key": "a", "audio_key": "b", "extra": 1}), 422,
                       "validation_error", "extra")


def test_preview_of_the_face_crop(serve_stack):
    """Detection runs in the ImageEncoder (tiny random weights here, so its boxes are noise: only their shape
    is checked); with a given face box the crop is exactly the framing a job would use."""
    from PIL import Image

    from sonic_core.face import FaceBox
    from stages.media.framing import frame_portrait

    portrait = astronaut_png().read_bytes()
    with client(serve_stack) as api:
        detected = api.post("/v1/preview", files={"image": ("a.png", portrait, "image/png")},
                            data={"framing": "crop", "expand_ratio": "0.3"})
        assert detected.status_code == 200, detected.text
        found = detected.json()
        assert (found["width"], found["height"]) == (512, 512) and found["faces"] >= 1
        assert len(found["face_bbox"]) == 4 and found["framing"] == "crop"
        x0, y0, x1, y1 = found["crop_box"]
        assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512
        full = api.post("/v1/preview", files={"image": ("a.png", portrait)}).json()
        assert full["crop_box"] == [0, 0, 512, 512] and full["face_bbox"] == found["face_bbox"]
        given = api.post("/v1/preview", files={"image": ("a.png", portrait)},
                         data={"framing": "crop", "expand_ratio": "0.3", "face_bbox": "177,67,93,93"}).json()
        expected = frame_portrait(Image.open(astronaut_png()).convert("RGB"), FaceBox(177, 67, 93, 93), "crop", 0.3)
        assert given["face_bbox"] == [177, 67, 93, 93] and given["faces"] == 1
        assert given["crop_box"] == list(expected.box) and given["crop_box"][2] - given["crop_box"][0] < 512
        assert_problem(api.post("/v1/preview", files={"image": ("a.wav", speech_wav(SECONDS).read_bytes())}), 422,
                       "invalid_media", "image")
        assert_problem(api.post("/v1/preview", files={"image": ("a.png", portrait)}, data={"framing": "diagonal"}),
                       422, "invalid_parameter", "framing")


def test_health_metrics_tenant_and_openapi(serve_stack):
    url = serve_stack.url
    assert httpx.get(f"{url}/healthz", timeout=30).json() == {"status": "ok", "s3": True}
    ready = httpx.get(f"{url}/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "s3": True, "manager": True}
    metrics = httpx.get(f"{url}/metrics", timeout=30)
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert "sonic_http_requests_total" in metrics.text
    assert httpx.get(f"{url}/openapi.json", timeout=30).json() == json.loads(DOCS_OPENAPI.read_text())
    assert httpx.get(f"{url}/", timeout=30).status_code == 200
    with client(serve_stack) as api:
        tenant = api.get("/v1/tenant").json()
        assert tenant["tenant"] == "local" and tenant["webhook_secret"].startswith("whsec_")
        assert tenant["quotas"] == {"max_running": 4, "max_queued": 200, "submits_per_minute": 120}
