"""Property-based requests never get a 5xx: bodies from the server's own OpenAPI schema
(schemathesis, valid and invalid ones), and `ttscale` objects of every strategy with typed and
mistyped parameters (hypothesis)."""
from __future__ import annotations

import dataclasses

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from serve_helpers import MODEL, chat_template_of, engine_server, load_engine

from ttscale.serve import Limits
from ttscale.serve.dispatch import strategies

# Small limits keep each generated request cheap; the property is about status codes.
LIMITS = Limits(max_n=2, max_samples=4, max_tokens=16, max_prompt_chars=64, max_prompts=4,
                request_timeout_s=30)
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def live(random_model_dir):
    with engine_server(load_engine(random_model_dir), chat_template=chat_template_of(random_model_dir),
                       limits=LIMITS) as s:
        yield s


def served_model(case):
    """Name the served model (a random name only ever gets a 404) so requests reach the engine."""
    if isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = MODEL
    return case


def test_no_server_errors(live):
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/completions", "POST /v1/chat/completions",
                                               "GET /v1/models", "GET /health"}
    for op in operations:
        modes = [GenerationMode.POSITIVE]
        if op.method.upper() == "POST":
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            @given(case=op.as_strategy(generation_mode=mode).map(served_model))
            @settings(max_examples=10, **SETTINGS)
            def check(case):
                case.call_and_validate(checks=[not_a_server_error], timeout=60)

            check()


def _typed(f: dataclasses.Field) -> st.SearchStrategy:
    """A value of the field's type: in range or not, cheap to run either way."""
    kind = str(f.type)
    if "int" in kind:
        return st.integers(-2, 6) | st.sampled_from([17, 2000, 2**63])
    if "float" in kind:
        return st.floats(-1, 3, allow_nan=False)
    return st.text(max_size=6) | st.sampled_from(["best", "weighted", "visits", "auto"])


MISTYPED = (st.text(max_size=12) | st.booleans() | st.none() | st.lists(st.integers(), max_size=2)
            | st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=2**64)
            | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@st.composite
def ttscale_objects(draw):
    name = draw(st.sampled_from(sorted(strategies())))
    fields = dataclasses.fields(strategies()[name][1])
    chosen = draw(st.lists(st.sampled_from(fields), max_size=4, unique_by=lambda f: f.name))
    params = {f.name: draw(_typed(f) if draw(st.booleans()) else MISTYPED) for f in chosen}
    if draw(st.integers(0, 9)) == 0:
        params["no_such_parameter"] = draw(MISTYPED)
    obj = {"strategy": name, "params": params}
    for key, values in (("n", st.integers(-1, 6) | MISTYPED),
                        ("scorer", st.sampled_from(["oracle", "self-certainty", "nope"])),
                        ("effort", st.sampled_from(["low", "high", "medium"]) | MISTYPED)):
        if draw(st.booleans()):
            obj[key] = draw(values)
    return obj


def test_ttscale_objects_typed_and_mistyped_get_no_5xx(live):
    @given(obj=ttscale_objects(), chat=st.booleans())
    @settings(max_examples=40, **SETTINGS)
    def check(obj, chat):
        body = {"model": MODEL, "max_tokens": 4, "ttscale": obj}
        if chat:
            body["messages"] = [{"role": "user", "content": "3 5 2 -> 16"}]
        else:
            body["prompt"] = "Q: 3+4*2\n"
        path = "/v1/chat/completions" if chat else "/v1/completions"
        r = httpx.post(live.url + path, json=body, timeout=60)
        assert r.status_code < 500, (body, r.text)
        if r.status_code >= 400:
            err = r.json()["error"]
            assert err["message"] and err["type"], r.text

    check()
