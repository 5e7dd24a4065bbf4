"""Property-based requests from the server's own OpenAPI schema (schemathesis) never get a 5xx."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from serve_helpers import MODEL, chat_template_of, engine_server, load_engine

from ttscale.serve import Limits

# Small limits keep each generated request cheap; the property is about status codes.
LIMITS = Limits(max_n=2, max_samples=4, max_tokens=16, max_prompt_chars=64, max_prompts=4,
                request_timeout_s=30)


@pytest.fixture(scope="module")
def live_schema(random_model_dir):
    with engine_server(load_engine(random_model_dir), chat_template=chat_template_of(random_model_dir),
                       limits=LIMITS) as s:
        yield schemathesis.openapi.from_url(s.url + "/openapi.json")


def served_model(case):
    """Name the served model (a random name only ever gets a 404) so requests reach the engine."""
    if isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = MODEL
    return case


def test_no_server_errors(live_schema):
    operations = [r.ok() for r in live_schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/completions", "POST /v1/chat/completions",
                                               "GET /v1/models", "GET /health"}
    for op in operations:
        @given(case=op.as_strategy().map(served_model))
        @settings(max_examples=20, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(checks=[not_a_server_error], timeout=60)

        check()
