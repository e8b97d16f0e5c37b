"""Tracing, metrics and JSON logs without Ray: span trees across inject/attach boundaries, env-driven exporters
(memory, console, a real OTLP/HTTP receiver), Serve's tracing contract, Prometheus text, the S3 error listener,
HTTP route metrics, job-scoped JSON log lines and secret redaction."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from prometheus_client.parser import text_string_to_metric_families

from deployments import logs, metrics, telemetry


@pytest.fixture
def tracing(monkeypatch):
    """Tracing with the in-memory exporter; torn down after the test."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "memory")
    for name in ("OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
                 "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    telemetry.shutdown_tracing()
    telemetry.setup_tracing()
    yield
    telemetry.shutdown_tracing()


@pytest.fixture
def no_tracing(monkeypatch):
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    telemetry.shutdown_tracing()
    telemetry.setup_tracing()
    yield
    telemetry.shutdown_tracing()


def in_fresh_process(fn, *args):
    """Run ``fn`` with an empty context, as a replica (another process) would: nothing inherited."""
    return contextvars.Context().run(fn, *args)


def by_name(spans: list[dict]) -> dict[str, list[dict]]:
    named: dict[str, list[dict]] = {}
    for s in spans:
        named.setdefault(s["name"], []).append(s)
    return named


# -- tracing ----------------------------------------------------------------------------------------------

def test_job_trace_is_one_tree_across_handle_calls_and_a_resume(tracing):
    record: dict = {"id": "j1", "tenant": "t1"}

    def replica_window(carrier: dict, step: int) -> None:
        with telemetry.attach(carrier), telemetry.span("diffusion.window", step=step, frames=25, replica="r1"):
            pass

    def replica_decode(carrier: dict, chunk: int) -> None:
        with telemetry.attach(carrier), telemetry.span("diffusion.decode", chunk=chunk, replica="r2"):
            pass

    # submit: a finished root span whose carrier is stored with the record (JSON in S3)
    carrier = telemetry.job_trace(record)
    assert record["trace"] == carrier and set(carrier) == {"traceparent"}
    record = json.loads(json.dumps(record))

    # the manager runs the job in another context; a replica call gets the carrier of the step span
    def run_until_crash() -> None:
        with telemetry.attach(record["trace"]), telemetry.span("job", job_id="j1", tenant="t1", steps=2,
                                                               resolution=256):
            with telemetry.span("encode"):
                pass
            with telemetry.span("denoise.step", step=0, window_count=2):
                carrier = telemetry.inject()
                for _ in range(2):
                    in_fresh_process(replica_window, json.loads(json.dumps(carrier)), 0)

    def resumed() -> None:
        with telemetry.attach(record["trace"]), telemetry.span("job", job_id="j1", resumed=True), \
                telemetry.span("decode.chunk", chunk=0):
            in_fresh_process(replica_decode, telemetry.inject(), 0)

    in_fresh_process(run_until_crash)
    in_fresh_process(resumed)

    spans = telemetry.finished_spans()
    named = by_name(spans)
    assert {s["trace_id"] for s in spans} == {named["job.submit"][0]["trace_id"]}, "one trace for the job"
    root = named["job.submit"][0]
    assert root["parent_id"] is None
    first, second = named["job"]
    assert first["parent_id"] == root["span_id"] and second["parent_id"] == root["span_id"]
    assert root["attributes"] == {"job_id": "j1", "tenant": "t1"}
    assert first["attributes"] == {"job_id": "j1", "tenant": "t1", "steps": 2, "resolution": 256}
    assert second["attributes"]["resumed"] is True
    assert named["encode"][0]["parent_id"] == first["span_id"]
    step = named["denoise.step"][0]
    assert step["parent_id"] == first["span_id"] and step["attributes"]["window_count"] == 2
    windows = named["diffusion.window"]
    assert len(windows) == 2 and all(w["parent_id"] == step["span_id"] for w in windows)
    assert windows[0]["attributes"] == {"step": 0, "frames": 25, "replica": "r1"}
    chunk = named["decode.chunk"][0]
    assert chunk["parent_id"] == second["span_id"]
    assert named["diffusion.decode"][0]["parent_id"] == chunk["span_id"]
    assert len({s["span_id"] for s in spans}) == len(spans) == 9
    # attach() is scoped: outside the blocks there is no current span
    assert telemetry.inject() == {}


def test_job_trace_continues_the_ingress_request(tracing):
    with telemetry.span("POST /v1/jobs") as request:
        record = {"id": "j2", "tenant": "t", "trace": telemetry.inject()}
    telemetry.job_trace(record)
    submit = by_name(telemetry.finished_spans())["job.submit"][0]
    assert submit["parent_id"] == format(request.get_span_context().span_id, "016x")
    assert record["trace"]["traceparent"].split("-")[2] == submit["span_id"]


def test_attach_wins_over_the_current_span_and_errors_are_recorded(tracing):
    with telemetry.span("job A step") as step_a:
        carrier_a = telemetry.inject()
    with telemetry.span("job B step") as step_b:
        carrier_b = telemetry.inject()
    # a unit of job A started from a task of job B (the dispatcher's pump), and one of B inside B's own span
    with telemetry.span("job B step 2"), telemetry.attach(carrier_a), telemetry.span("window A"):
        pass
    with telemetry.span("job B step 3"), telemetry.attach(carrier_b), telemetry.span("window B"):
        pass
    with telemetry.attach(carrier_a), pytest.raises(ValueError), telemetry.span("diffusion.decode"):
        raise ValueError("bad chunk")
    named = by_name(telemetry.finished_spans())
    assert named["window A"][0]["parent_id"] == format(step_a.get_span_context().span_id, "016x")
    assert named["window B"][0]["parent_id"] == format(step_b.get_span_context().span_id, "016x")
    assert named["diffusion.decode"][0]["status"] == "ERROR"
    # empty and malformed carriers change nothing
    with telemetry.attach({}), telemetry.attach({"traceparent": "garbage"}), telemetry.span("alone"):
        pass
    assert by_name(telemetry.finished_spans())["alone"][0]["parent_id"] is None


def test_asyncio_tasks_and_threads_inherit_the_span(tracing):
    def in_thread() -> None:
        with telemetry.span("in.thread"):
            pass

    async def window(n: int) -> None:
        with telemetry.span("window", step=n):
            await asyncio.sleep(0)
            await asyncio.to_thread(in_thread)

    async def main() -> None:
        with telemetry.span("step"):
            await asyncio.gather(*(window(n) for n in range(3)))

    asyncio.run(main())
    named = by_name(telemetry.finished_spans())
    step = named["step"][0]
    assert sorted(w["attributes"]["step"] for w in named["window"]) == [0, 1, 2]
    assert all(w["parent_id"] == step["span_id"] for w in named["window"])
    window_ids = {w["span_id"] for w in named["window"]}
    assert len(named["in.thread"]) == 3 and {t["parent_id"] for t in named["in.thread"]} == window_ids


def test_disabled_tracing_is_a_shared_no_op(no_tracing):
    assert not telemetry.enabled()
    assert telemetry.span("job", job_id="j") is telemetry.span("other")
    with telemetry.span("job", job_id="j") as s:
        s.set_attribute("frames", 3)
        assert telemetry.inject() == {}
        telemetry.set_attributes(frames=4)
    foreign = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    with telemetry.attach(foreign):   # continuing someone else's trace is still allowed
        assert telemetry.inject()["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert telemetry.finished_spans() == []
    record = {"id": "j"}
    assert telemetry.job_trace(record) == {} and "trace" not in record
    telemetry.setup_tracing()          # idempotent
    assert not telemetry.enabled()


def test_sdk_disabled_wins_over_the_exporter(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "memory")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    telemetry.shutdown_tracing()
    try:
        telemetry.setup_tracing()
        assert not telemetry.enabled()
    finally:
        telemetry.shutdown_tracing()


@pytest.mark.parametrize(("ratio", "kept"), [("0", 0), ("1", 3)])
def test_sampler_comes_from_the_standard_env_and_children_follow_the_root(monkeypatch, ratio, kept):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "memory")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", ratio)
    telemetry.shutdown_tracing()
    try:
        telemetry.setup_tracing()
        with telemetry.span("job"):
            carrier = telemetry.inject()
            with telemetry.span("encode"):
                pass

        def replica() -> None:
            with telemetry.attach(carrier), telemetry.span("window"):
                pass

        in_fresh_process(replica)
        assert len(telemetry.finished_spans()) == kept
        sampled_flag = int(carrier["traceparent"].rsplit("-", 1)[1], 16) & 1
        assert sampled_flag == (1 if kept else 0)
    finally:
        telemetry.shutdown_tracing()


def test_service_name_and_resource_attributes_come_from_the_env(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "memory")
    telemetry.shutdown_tracing()
    try:
        telemetry.setup_tracing("sonic-serve")
        with telemetry.span("a"):
            pass
        assert telemetry.finished_spans()[0]["service"] == "sonic-serve"
        telemetry.shutdown_tracing()
        monkeypatch.setenv("OTEL_SERVICE_NAME", "sonic-campus")
        telemetry.setup_tracing("sonic-serve")
        with telemetry.span("b"):
            pass
        assert telemetry.finished_spans()[0]["service"] == "sonic-campus"
    finally:
        telemetry.shutdown_tracing()


def test_console_exporter_prints_finished_spans(monkeypatch, capsys):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    telemetry.shutdown_tracing()
    try:
        telemetry.setup_tracing()
        with telemetry.span("diffusion.window", step=3):
            pass
    finally:
        telemetry.shutdown_tracing()
    out = json.loads(capsys.readouterr().out)
    assert out["name"] == "diffusion.window" and out["attributes"] == {"step": 3}


class _OtlpReceiver(BaseHTTPRequestHandler):
    bodies: list[tuple[str, bytes]] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_otlp_http_exporter_delivers_spans_to_a_collector(monkeypatch):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    server = HTTPServer(("127.0.0.1", 0), _OtlpReceiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _OtlpReceiver.bodies = []
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "sonic-otlp-test")
    telemetry.shutdown_tracing()
    try:
        telemetry.setup_tracing()
        with telemetry.span("job", job_id="j9"), telemetry.span("postprocess.upload", job_id="j9"):
            pass
    finally:
        telemetry.shutdown_tracing()      # flushes the batch processor
        server.shutdown()
    assert [path for path, _ in _OtlpReceiver.bodies] == ["/v1/traces"]
    request = ExportTraceServiceRequest.FromString(_OtlpReceiver.bodies[0][1])
    resource = request.resource_spans[0]
    service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
    names = sorted(s.name for scope in resource.scope_spans for s in scope.spans)
    assert service == "sonic-otlp-test" and names == ["job", "postprocess.upload"]


def test_otlp_protocol_choice(monkeypatch):
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    assert isinstance(telemetry._otlp_exporter(), Grpc)
    for protocol in ("http/protobuf", "http/json"):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        assert isinstance(telemetry._otlp_exporter(), Http)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        telemetry._otlp_exporter()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")   # a replica still starts, without tracing
    telemetry.shutdown_tracing()
    try:
        telemetry.setup_tracing()
        assert not telemetry.enabled()
    finally:
        telemetry.shutdown_tracing()


def test_serve_tracing_env_matches_ray_serves_contract(monkeypatch):
    from ray.serve._private import constants
    from ray.serve._private.tracing_utils import (
        _load_span_processors,
        _validate_tracing_exporter,
    )
    from ray.serve.schema import TracingConfig

    env = telemetry.serve_tracing_env(0.25)
    assert env == {"RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH": "deployments.telemetry:serve_span_processors",
                   "RAY_SERVE_TRACING_SAMPLING_RATIO": "0.25"}
    assert hasattr(constants, "RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH")
    assert hasattr(constants, "RAY_SERVE_TRACING_SAMPLING_RATIO")
    config = TracingConfig(enabled=True, exporter_import_path=env["RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH"],
                           sampling_ratio=float(env["RAY_SERVE_TRACING_SAMPLING_RATIO"]))
    _validate_tracing_exporter(telemetry.serve_span_processors)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    processors = _load_span_processors(config.exporter_import_path, "unused.json")   # Serve's own loader
    assert len(processors) == 1
    for processor in processors:
        processor.shutdown()
    assert telemetry.serve_tracing_env(0) == {"RAY_SERVE_TRACING_EXPORTER_IMPORT_PATH": "",
                                              "RAY_SERVE_TRACING_SAMPLING_RATIO": "0"}
    with pytest.raises(ValueError):
        telemetry.serve_tracing_env(1.5)


# -- metrics ----------------------------------------------------------------------------------------------

def value(text: bytes | str, name: str, **labels: str) -> float | None:
    text = text.decode() if isinstance(text, bytes) else text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def test_job_metrics_after_helper_calls():
    before = metrics.render(jobs=True)
    windows0 = value(before, "sonic_windows_total") or 0.0
    gpu0 = value(before, "sonic_gpu_seconds_total", stage="denoise") or 0.0
    video0 = value(before, "sonic_video_seconds_total") or 0.0
    succeeded0 = value(before, "sonic_jobs_total", state="succeeded") or 0.0
    running0 = value(before, "sonic_jobs_current", state="running") or 0.0
    count0 = value(before, "sonic_stage_seconds_count", stage="denoise") or 0.0

    metrics.job_state_changed(None, "queued")
    metrics.job_state_changed("queued", "running")
    metrics.windows_done(6, gpu_seconds=12.5)
    metrics.gpu_time("decode", 2.0)
    metrics.gpu_time("postprocess", 4.0, share=0.25)
    metrics.observe_timings({"encode": 0.4, "denoise": 42.0})
    metrics.video_done(3.5)
    metrics.set_queue_depth(7)
    metrics.dispatch_state(in_flight=4, pending=11)
    text = metrics.render(jobs=True)

    for name in ("sonic_jobs_total", "sonic_jobs_current", "sonic_queue_depth", "sonic_stage_seconds_bucket",
                 "sonic_windows_total", "sonic_gpu_seconds_total", "sonic_video_seconds_total",
                 "sonic_s3_errors_total", "sonic_http_requests_total", "sonic_dispatch_pending"):
        assert f"# TYPE {name.removesuffix('_bucket')}" in text.decode(), name
    assert value(text, "sonic_windows_total") == windows0 + 6
    assert value(text, "sonic_gpu_seconds_total", stage="denoise") == pytest.approx(gpu0 + 12.5)
    assert value(text, "sonic_gpu_seconds_total", stage="postprocess") >= 1.0
    assert value(text, "sonic_video_seconds_total") == pytest.approx(video0 + 3.5)
    assert value(text, "sonic_jobs_current", state="running") == running0 + 1
    assert value(text, "sonic_stage_seconds_count", stage="denoise") == count0 + 1
    assert value(text, "sonic_stage_seconds_bucket", stage="denoise", le="60.0") >= 1
    assert value(text, "sonic_queue_depth") == 7 and value(text, "sonic_dispatch_pending") == 11
    assert b"_created" not in text

    metrics.job_state_changed("running", "succeeded")
    after = metrics.render(jobs=True)
    assert value(after, "sonic_jobs_total", state="succeeded") == succeeded0 + 1
    assert value(after, "sonic_jobs_current", state="running") == running0
    metrics.set_jobs({"queued": 2, "running": 1})
    assert value(metrics.render(jobs=True), "sonic_jobs_current", state="queued") == 2


def test_render_merges_the_managers_text_without_duplicate_families():
    own = metrics.render()
    manager_text = (
        "# HELP sonic_s3_errors_total Failed S3 attempts.\n# TYPE sonic_s3_errors_total counter\n"
        'sonic_s3_errors_total{op="stat"} 5.0\n'
        "# HELP sonic_windows_total Windows.\n# TYPE sonic_windows_total counter\nsonic_windows_total 40.0\n"
    )
    merged = metrics.render(manager_text, jobs=False).decode()
    stat_here = value(own, "sonic_s3_errors_total", op="stat") or 0.0
    assert value(merged, "sonic_s3_errors_total", op="stat") == stat_here + 5
    assert value(merged, "sonic_windows_total") == 40
    type_lines = [line for line in merged.splitlines() if line.startswith("# TYPE ")]
    assert len(type_lines) == len(set(type_lines))
    assert merged.count("# TYPE sonic_s3_errors_total counter") == 1


def test_s3_failures_are_counted_by_the_listener():
    import urllib3

    from deployments import storage
    from deployments.s3server import free_port

    metrics.install_s3_error_listener()
    metrics.install_s3_error_listener()
    assert storage.S3_ERROR_LISTENERS.count(metrics.s3_error) == 1
    before = value(metrics.render(), "sonic_s3_errors_total", op="get") or 0.0
    closed = free_port()            # nothing listens there: every attempt is a real connection error
    client = storage.S3Settings(endpoint=f"127.0.0.1:{closed}", access_key="a", secret_key="b").client(retries=False)
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        storage.with_retries(lambda: client.get_object("sonic", "jobs/x.json"), "get jobs/x.json", attempts=2,
                             base_delay=0.0)
    assert value(metrics.render(), "sonic_s3_errors_total", op="get") == before + 2


def test_http_middleware_labels_route_templates():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    app = FastAPI()
    app.add_middleware(metrics.HttpMetricsMiddleware)

    @app.get("/v1/jobs/{job_id}")
    def get_job(job_id: str):
        return {"id": job_id}

    before = value(metrics.render(), "sonic_http_requests_total", route="/v1/jobs/{job_id}", status="200") or 0
    missing = value(metrics.render(), "sonic_http_requests_total", route="unmatched", status="404") or 0
    with TestClient(app) as client:
        assert client.get("/v1/jobs/j1").status_code == 200
        assert client.get("/v1/jobs/j2").status_code == 200
        assert client.get("/nowhere").status_code == 404
    text = metrics.render()
    assert value(text, "sonic_http_requests_total", route="/v1/jobs/{job_id}", status="200") == before + 2
    assert value(text, "sonic_http_requests_total", route="unmatched", status="404") == missing + 1
    assert "/v1/jobs/j1" not in text.decode()


# -- logs ------------------------------------------------------------------------------------------------

@pytest.fixture
def json_log():
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    logs.configure_json_logging("DEBUG", replica="Diffusion#abc", stream=stream)

    def lines() -> list[dict]:
        parsed = [json.loads(line) for line in stream.getvalue().splitlines()]
        return [line for line in parsed if line["logger"].startswith("sonic.")]  # not asyncio's debug lines

    yield lines
    for handler in list(root.handlers):
        if getattr(handler, "_sonic_json", False):
            root.removeHandler(handler)
    for handler in saved_handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(saved_level)


def test_json_lines_carry_the_job_inside_job_context_only(json_log):
    log = logging.getLogger("sonic.test")
    log.info("before")
    with logs.job_context("j1", "t1"):
        log.info("inside %d", 1, extra={"step": 3})

        async def task(job: str) -> None:
            with logs.job_context(job, "t2"):
                await asyncio.sleep(0)
                log.info("task")
                await asyncio.to_thread(log.info, "thread")

        async def main() -> None:
            await asyncio.gather(task("j2"), task("j3"))
            log.info("after tasks")

        asyncio.run(main())
    log.info("outside")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")

    lines = json_log()
    first = lines[0]
    assert set(first) >= {"ts", "level", "logger", "message", "replica"}
    assert first["message"] == "before" and "job_id" not in first and first["replica"] == "Diffusion#abc"
    assert first["level"] == "INFO" and first["logger"] == "sonic.test" and first["ts"].endswith("Z")
    inside = lines[1]
    assert inside["message"] == "inside 1" and inside["job_id"] == "j1" and inside["tenant"] == "t1"
    assert inside["step"] == 3
    tasks = [(line["message"], line["job_id"], line["tenant"]) for line in lines[2:6]]
    assert sorted(tasks) == [("task", "j2", "t2"), ("task", "j3", "t2"), ("thread", "j2", "t2"),
                             ("thread", "j3", "t2")]
    assert lines[6]["message"] == "after tasks" and lines[6]["job_id"] == "j1"
    assert lines[7]["message"] == "outside" and "job_id" not in lines[7] and "tenant" not in lines[7]
    assert "RuntimeError: boom" in lines[8]["exc"] and lines[8]["level"] == "ERROR"


def test_json_lines_carry_the_trace_of_the_current_span(json_log, tracing):
    with telemetry.span("job") as s:
        logging.getLogger("sonic.test").warning("slow step")
    line = json_log()[-1]
    assert line["trace_id"] == format(s.get_span_context().trace_id, "032x")
    assert line["span_id"] == format(s.get_span_context().span_id, "016x")


def test_configuring_twice_logs_each_line_once(json_log):
    root = logging.getLogger()
    stream = io.StringIO()
    logs.configure_json_logging("INFO", stream=stream)
    logs.configure_json_logging("INFO", stream=stream)
    logging.getLogger("sonic.test").info("once")
    logging.getLogger("sonic.test").debug("hidden")
    assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == ["once"]
    assert sum(getattr(h, "_sonic_json", False) for h in root.handlers) == 1


def test_secrets_never_reach_the_log(json_log):
    log = logging.getLogger("sonic.test")
    log.info("auth header Bearer sk_live_abcdef123456 and api_key=k-123 for %s", "t1",
             extra={"authorization": "Bearer abc", "api_key": "k-123", "X-Api-Key": "k-456",
                    "headers": {"Authorization": "Basic dXNlcjpwYXNz", "Content-Type": "image/png"},
                    "webhook": {"secret": "whsec_0123456789abcdef", "url": "https://u:pw@hooks.example/x?token=t1&a=1"},
                    "s3": {"secret_key": "minio-secret", "access_key": "minio-access",
                           "video_key": "outputs/t/j/v.mp4"},
                    "presigned": "http://s3:9000/b/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=deadbeef&X-Amz-Expires=60",
                    "tokens": 42, "password": "hunter2"})
    line = json_log()[-1]
    raw = json.dumps(line)
    for secret in ("sk_live_abcdef123456", "k-123", "k-456", "dXNlcjpwYXNz", "whsec_0123456789abcdef", "u:pw",
                   "token=t1", "minio-secret", "minio-access", "deadbeef", "AKIA", "hunter2", "Bearer abc"):
        assert secret not in raw, secret
    assert line["authorization"] == logs.REDACTED and line["password"] == logs.REDACTED
    assert line["headers"]["Content-Type"] == "image/png"
    assert line["s3"]["video_key"] == "outputs/t/j/v.mp4" and line["tokens"] == 42
    assert "X-Amz-Expires=60" in line["presigned"] and line["webhook"]["url"].startswith("https://")
    assert "hooks.example/x" in line["webhook"]["url"] and "a=1" in line["webhook"]["url"]


def test_log_generation_records_inputs_parameters_and_timings(json_log):
    record = {
        "id": "j7", "tenant": "t7", "state": "succeeded",
        "inputs": {"image": "inputs/t7/j7/image.png", "audio": "inputs/t7/j7/audio.wav"},
        "params": {"steps": 4, "min_resolution": 256, "seed": 1, "webhook_url": "https://lms.example/hook?token=abc"},
        "output": {"video_key": "outputs/t7/j7/video.mp4", "bytes": 12345, "frames": 63, "fps": 25.0,
                   "duration_s": 2.5},
        "timings_s": {"encode": 0.5, "denoise": 9.0},
        "started_at": 100.0, "finished_at": 112.25,
        "placement": {"windows": [{"replica": "Diffusion#a"}, {"replica": "Diffusion#b"}, {"replica": "Diffusion#a"}]},
        "warnings": [], "error": None,
    }
    logs.log_generation(logging.getLogger("sonic.manager"), record, sizes={"image": 1000, "audio": 2000})
    line = json_log()[-1]
    assert line["event"] == "generation" and line["job_id"] == "j7" and line["tenant"] == "t7"
    assert line["inputs"] == {"image": {"key": "inputs/t7/j7/image.png", "bytes": 1000},
                              "audio": {"key": "inputs/t7/j7/audio.wav", "bytes": 2000}}
    assert line["params"]["steps"] == 4 and "abc" not in line["params"]["webhook_url"]
    assert line["output"]["video_key"] == "outputs/t7/j7/video.mp4" and line["output"]["frames"] == 63
    assert line["timings_s"] == {"encode": 0.5, "denoise": 9.0} and line["wall_s"] == 12.25
    assert line["windows"] == 3 and line["replicas"] == ["Diffusion#a", "Diffusion#b"]


def test_secret_key_names():
    secret = ["Authorization", "api_key", "x-api-key", "apiKey", "SONIC_S3_SECRET_KEY", "access_key", "token",
              "refresh_token", "password", "webhook_secret", "Sonic-Signature", "client_secret"]
    public = ["video_key", "audio_key", "poster_key", "idempotency_key_hash", "tokens", "max_tokens", "author",
              "keys", "job_id", "tenant"]
    assert [k for k in secret if not logs.is_secret_key(k)] == []
    assert [k for k in public if logs.is_secret_key(k)] == []


# -- replica wiring (no Ray: the deployment class called directly) ----------------------------------------

@pytest.mark.slow
def test_diffusion_units_continue_the_carrier_and_compute_the_same(tracing, json_log):
    import torch

    from deployments.diffusion import Diffusion
    from sonic_core.sampler import plan_windows
    from stages.audio_encode import AudioEncodeStage
    from stages.fusion import FusionStage
    from stages.image_encode import ImageEncodeStage
    from stages.media.audio_in import load_audio
    from stages.media.image_in import load_image
    from tests.helpers import astronaut_png, speech_wav, tiny_weights

    weights = tiny_weights()
    audio = load_audio(speech_wav(1.0).read_bytes())
    image = load_image(astronaut_png().read_bytes())
    fused = FusionStage(weights, "cpu")(AudioEncodeStage(weights, "cpu")(audio.samples, audio.warnings),
                                        ImageEncodeStage(weights, "cpu", torch.float32)(image.image,
                                                                                         min_resolution=128))
    replica = Diffusion.func_or_class({"weights": str(weights), "device": "cpu", "dtype": "fp32",
                                       "torch_threads": 1})
    logs.configure_json_logging("DEBUG", stream=io.StringIO())  # the replica replaced the test's handler

    async def units(job_id: str, carrier: dict | None):
        box = [asyncio.get_running_loop().create_future()]
        box[0].set_result(fused)
        kwargs = {} if carrier is None else {"trace": carrier}
        prepared = await replica.prepare(job_id, box, 7, 2, 1.0, 2.0, 7.5, **kwargs)
        step = prepared.schedule.steps[0]
        frames = plan_windows(prepared.num_frames, step.index)[0]
        window = await replica.denoise(job_id, box, step, frames, prepared.latents[:, frames], **kwargs)
        extra = {} if carrier is None else {"trace": carrier, "chunk": 0, "job_id": job_id}
        decoded = await replica.decode(window.result.latents[0, :2].clone(), **extra)
        return prepared.latents, window.result.latents, decoded.frames

    plain = asyncio.run(units("plain", None))
    assert telemetry.finished_spans() == [s for s in telemetry.finished_spans() if s["parent_id"] is None]
    telemetry.clear_spans()
    with telemetry.span("denoise.step", step=0) as step_span:
        carrier = telemetry.inject()
    traced = asyncio.run(units("traced", carrier))
    for a, b in zip(plain, traced, strict=True):
        assert torch.equal(a, b)
    named = by_name(telemetry.finished_spans())
    parent = format(step_span.get_span_context().span_id, "016x")
    for name in ("diffusion.prepare", "diffusion.window", "diffusion.decode"):
        assert [s["parent_id"] for s in named[name]] == [parent], name
        assert named[name][0]["attributes"]["replica"] == replica.replica
    assert named["diffusion.window"][0]["attributes"]["step"] == 0
    assert named["diffusion.decode"][0]["attributes"]["chunk"] == 0
    assert named["diffusion.prepare"][0]["attributes"]["loaded_conditioning"] is True
