"""The bad-input corpus (tests/badinput/cases.py): every case straight through ``stages.media`` (no Ray) and
over HTTP on the whole stack, where each must get a 4xx problem naming the field and the fix, or be accepted
with the documented warning. Afterwards every replica that was alive before is still alive and HEALTHY, and a
normal job still succeeds.

Face detection is judged honestly: the stack's tiny random-weight YOLO "finds" faces everywhere, so "no face"
and "many faces" are checked with OpenCV's Haar detector (the fallback the image stage uses without YOLO
weights), and over HTTP a blank image is refused by the media check whatever the detector.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import numpy as np
import pytest

from sonic_core.face import HaarFaceDetector, NoFaceError, pick_face
from stages.media import MediaError, load_audio, load_image
from tests.badinput import media as m
from tests.badinput import write_corpus
from tests.badinput.cases import ACCEPTED, MEDIA_CASES, REQUEST_CASES, MediaCase, RequestCase
from tests.badinput.client import Answer, Api, check_problem
from tests.helpers import SESSION_DIR, tiny_weights

pytestmark = pytest.mark.badinput

TENANT = "badinput"


def ids(cases) -> list[str]:
    return [case.id for case in cases]


@functools.cache
def corpus() -> dict[str, Path]:
    return write_corpus(SESSION_DIR / "badinput")


def test_corpus_is_large_and_unique():
    every = ids(MEDIA_CASES) + ids(REQUEST_CASES)
    assert len(every) >= 60 and len(set(every)) == len(every)
    rejected = [c for c in [*MEDIA_CASES, *REQUEST_CASES] if 400 <= c.status < 500]
    assert len(rejected) >= 60
    assert all(c.why for c in [*MEDIA_CASES, *REQUEST_CASES])


# -- stages.media directly (no Ray, no HTTP) ----------------------------------------------------------------


@pytest.mark.parametrize("case", MEDIA_CASES, ids=ids(MEDIA_CASES))
def test_media_case_directly(case: MediaCase):
    path = corpus()[case.id]
    load = load_image if case.kind == "image" else load_audio
    for source in (path, path.read_bytes()):
        if case.status == ACCEPTED:
            loaded = load(source)
            if case.match is None:
                assert loaded.warnings == []
            else:
                assert any(case.match in w for w in loaded.warnings), loaded.warnings
            continue
        with pytest.raises(MediaError) as info:
            load(source)
        err = info.value
        assert err.field == case.field and err.fix and case.match in err.message, err


def test_no_face_in_noise_or_a_blank_image():
    detector = HaarFaceDetector()
    for image in (m.noise_image(), np.full((512, 512, 3), 128, np.uint8)):
        faces = detector.detect(image)
        assert faces == []
        with pytest.raises(NoFaceError, match="face_bbox"):
            pick_face(faces)
    assert len(detector.detect(np.asarray(m.portrait()))) == 1   # the same detector does find a real face


def test_many_faces_the_largest_is_chosen():
    faces = HaarFaceDetector().detect(np.asarray(m.two_faces()))
    assert len(faces) >= 2
    chosen = pick_face(faces)
    assert chosen.x + chosen.w <= 512            # the full-size portrait on the left
    assert chosen.area == max(f.area for f in faces)


def test_no_face_fails_the_image_stage_without_yolo_weights(tmp_path):
    """The image stage with the Haar fallback (weights without yoloface_v5m.pt) refuses a noise image and
    frames a real portrait."""
    from stages.image_encode import ImageEncodeStage

    root = tiny_weights()
    for entry in root.iterdir():
        if entry.name != "yoloface_v5m.pt":
            (tmp_path / entry.name).symlink_to(entry)
    stage = ImageEncodeStage(tmp_path)
    assert isinstance(stage.detector, HaarFaceDetector)
    noise = load_image(corpus()["image-noise-no-face"])
    with pytest.raises(MediaError, match="face_bbox") as refused:
        stage.detect(noise.image)
    assert refused.value.field == "image"
    face = stage.detect(load_image(m.good_png()).image)
    assert 150 < face.x < 200 and 40 < face.y < 100


# -- over HTTP on the stack -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(serve_stack):
    from deployments.auth import create_api_key

    storage = serve_stack.storage()
    client = Api(serve_stack.url, create_api_key(storage, TENANT, label="bad-input corpus"), TENANT, storage,
                 m.good_png(), m.good_wav())
    yield client
    client.close()


def serve_replicas(stack) -> dict[str, str]:
    """actor id -> class name of every live Serve replica of ``stack`` (its dashboard named: other Ray
    clusters may run on the machine)."""
    from ray.util.state import list_actors

    actors = list_actors(address=stack.dashboard_url, filters=[("state", "=", "ALIVE")], limit=10_000,
                         raise_on_missing_output=False)
    return {a.actor_id: a.class_name for a in actors if a.class_name.startswith("ServeReplica:")}


@pytest.fixture(scope="module")
def replicas_before(serve_stack) -> dict[str, str]:
    replicas = serve_replicas(serve_stack)
    assert any(name.endswith(":Ingress") for name in replicas.values()), replicas
    return replicas


def check_accepted(api: Api, answer: Answer, warning: str | None) -> dict:
    """202 with the job; its warnings name ``warning`` in the answer and in the stored record; cancelled."""
    assert answer.status == 202, answer.body
    job = answer.body
    assert job["state"] == "queued" and job["id"]
    if warning is not None:
        assert any(warning in w for w in job["warnings"]), job["warnings"]
    cancelled = api.cancel(job["id"])
    assert cancelled.status_code in (200, 202, 409), cancelled.text
    stored = api.http.get(f"/v1/jobs/{job['id']}").json()
    if warning is not None:
        assert any(warning in w for w in stored["warnings"]), ("warnings missing from the stored job", stored)
    return job


@pytest.mark.parametrize("case", MEDIA_CASES, ids=ids(MEDIA_CASES))
@pytest.mark.ray
@pytest.mark.s3
def test_media_case_over_http(api, replicas_before, case: MediaCase):
    data = corpus()[case.id].read_bytes()
    answer = Answer.of(api.submit(**{case.kind: data, f"{case.kind}_name": case.filename}))
    if case.status == ACCEPTED:
        check_accepted(api, answer, case.match)
        return
    body = check_problem(answer, 422, case.field, "invalid_media")
    (error,) = [e for e in body["errors"] if e["field"] == case.field]
    assert case.match in error["message"], error


@pytest.mark.parametrize("case", REQUEST_CASES, ids=ids(REQUEST_CASES))
@pytest.mark.ray
@pytest.mark.s3
def test_request_case_over_http(api, replicas_before, case: RequestCase):
    answer = case.send(api)
    if case.status == ACCEPTED:
        check_accepted(api, answer, None)
        if case.echo is not None:
            case.echo(answer)
        return
    check_problem(answer, case.status, case.field, case.slug)


@pytest.mark.ray
@pytest.mark.s3
@pytest.mark.timeout(900)
def test_stack_survived_the_corpus(serve_stack, api, replicas_before):
    """Runs after the cases: no replica died or restarted, every deployment is HEALTHY, a job succeeds."""
    from ray import serve

    alive = serve_replicas(serve_stack)
    lost = {k: v for k, v in replicas_before.items() if k not in alive}
    assert not lost, f"replicas gone since the corpus began: {lost}"
    app = serve.status().applications["sonic"]
    assert str(app.status.value if hasattr(app.status, "value") else app.status) == "RUNNING"
    unhealthy = {name: str(d.status) for name, d in app.deployments.items() if "HEALTHY" not in str(d.status)}
    assert not unhealthy, unhealthy
    answer = api.submit(params={"seed": 7})
    assert answer.status_code == 202, answer.text
    job = api.wait(answer.json()["id"], timeout_s=float(os.environ.get("SONIC_TEST_JOB_TIMEOUT_S", 600)))
    assert job["state"] == "succeeded", job
    assert job["result"]["video_url"] and job["output"]
    assert api.http.get("/readyz").status_code == 200
    assert time.time() >= job["finished_at"] >= job["created_at"]
