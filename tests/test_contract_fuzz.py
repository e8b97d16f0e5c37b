"""Schema-driven fuzzing of the HTTP API with Schemathesis: every operation of ``/openapi.json`` served by the
running stack gets schema-valid and schema-breaking requests; no answer may be a 5xx, every answer must be
documented (status, content type, headers, body schema), requests that break the schema must be refused
with a 4xx, and a request without the key must not be served.

Bounded: 12 generated requests per operation and mode, no coverage or stateful phases. Nothing here can start
a real job: generated files are never valid media and generated upload keys name no upload, so every
``POST /v1/jobs`` and batch item is refused before admission (asserted below).
"""

from __future__ import annotations

import json

import httpx
import hypothesis
import pytest
import schemathesis

from deployments.api import openapi_spec
from deployments.auth import create_api_key
from deployments.storage import Keys

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.timeout(600)]

TENANT = "contract-fuzz"
MAX_EXAMPLES = 12
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance", "negative_data_rejection",
          "missing_required_header", "ignored_auth")
# Valid by the schema is not valid by the service (an upload key must name a real upload, a file must be
# real media): 2xx for every schema-valid request cannot be expected. Stateful checks need the links phase.
OFF = ("positive_data_acceptance", "use_after_free", "ensure_resource_availability", "object_level_authorization")


def load_schema() -> schemathesis.BaseSchema:
    """The API's OpenAPI document (built in-process; ``test_served_spec_is_the_fuzzed_one`` checks that the
    stack serves the very same document). Loaded eagerly: ``schemathesis.pytest.from_fixture`` does not run
    on pytest 9 (it sets ``request.node._nodeid``, which pytest 9 no longer has)."""
    config = schemathesis.Config.from_dict({
        "request-timeout": 60,
        "generation": {"max-examples": MAX_EXAMPLES, "mode": "all", "deterministic": True},
        "phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}},
        "checks": {**{name: {"enabled": True} for name in CHECKS}, **{name: {"enabled": False} for name in OFF}},
    })
    return schemathesis.openapi.from_dict(openapi_spec(), config=config)


schema = load_schema()


@pytest.fixture(scope="module")
def fuzz_key(serve_stack) -> str:
    return create_api_key(serve_stack.storage(), TENANT, label="contract fuzz")


def test_served_spec_is_the_fuzzed_one(serve_stack):
    served = httpx.get(f"{serve_stack.url}/openapi.json", timeout=60)
    assert served.status_code == 200
    assert served.json() == json.loads(json.dumps(openapi_spec()))


@schema.parametrize()
@hypothesis.settings(deadline=None, suppress_health_check=list(hypothesis.HealthCheck), derandomize=True)
def test_operation_conforms(case, serve_stack, fuzz_key):
    case.call_and_validate(base_url=serve_stack.url, headers={"Authorization": f"Bearer {fuzz_key}"})


def test_no_job_was_started_by_the_fuzzing(serve_stack, fuzz_key):
    """Runs after the fuzzing (same module, later): the fuzz tenant has no job record at all."""
    storage = serve_stack.storage()
    assert storage.list(Keys.jobs(TENANT)) == []
