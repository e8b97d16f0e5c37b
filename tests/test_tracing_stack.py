"""One job's trace through the local stack (in-memory exporter in every replica): complete and correctly
parented, and carried across a resume through the job record."""

from __future__ import annotations

import pytest

from deployments.jobs import JobParams, create_job
from tests.helpers import astronaut_png, speech_wav

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.timeout(600)]


def test_one_job_one_span_tree(serve_stack):
    from ray import serve

    params = JobParams.from_dict({"steps": 2, "min_resolution": 128})
    record = create_job(serve_stack.storage(), "local", params, astronaut_png().read_bytes(),
                        speech_wav(3.0).read_bytes(), "portrait.png", "speech.wav")
    manager = serve.get_deployment_handle("JobManager", "sonic")
    final = manager.run.remote("local", record["id"]).result(timeout_s=300)["record"]
    assert final["state"] == "succeeded", final["error"]
    spans = manager.finished_spans.remote(record["id"]).result()
    by_id = {s["span_id"]: s for s in spans}
    names = [s["name"] for s in spans]
    (root,) = [s for s in spans if s["name"] == "job"]
    assert root["parent_id"] is None and root["attributes"]["tenant"] == "local"
    assert root["attributes"]["frames"] == final["video"]["frames_generated"]
    assert {s["trace_id"] for s in spans} == {root["trace_id"]}
    for stage in ("encode", "fusion", "denoise", "decode", "postprocess"):
        (span,) = [s for s in spans if s["name"] == stage]
        assert span["parent_id"] == root["span_id"], stage
    (denoise,) = [s for s in spans if s["name"] == "denoise"]
    steps = [s for s in spans if s["name"] == "denoise.step"]
    assert sorted(s["attributes"]["step"] for s in steps) == [0, 1]
    assert all(s["parent_id"] == denoise["span_id"] and s["attributes"]["window_count"] == 2 for s in steps)
    (decode,) = [s for s in spans if s["name"] == "decode"]
    chunks = [s for s in spans if s["name"] == "decode.chunk"]
    assert chunks and all(by_id[c["parent_id"]] is decode for c in chunks), names
    assert all(s["attributes"]["job_id"] == record["id"] for s in spans if s["name"] != "job.submit")
