"""Property-based: schemathesis generates requests from /openapi.json (valid and invalid) for every serving
operation and none gets a 5xx; answers match their documented status codes, content types and schemas.

(Driven through `APIOperation.as_strategy` rather than `schemathesis.pytest.from_fixture`, whose lazy loader uses a
pytest-internal attribute that pytest 9 no longer has.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

KEY = "test-schemathesis-key"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 50   # per operation and generation mode


@pytest.fixture(scope="module")
def api_schema(trained_project, tmp_path_factory):
    """The schema of an app serving the champion; schemathesis calls it in-process over ASGI (lifespan included)."""
    from src.serving.app import create_app

    env = {**trained_project, "API_KEY": KEY, "PREDICTION_LOG": str(tmp_path_factory.mktemp("fuzz") / "p.db")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield schemathesis.openapi.from_asgi("/openapi.json", create_app())


def serving_operations(schema) -> list:
    ops = [result.ok() for result in schema.get_all_operations()]
    return [op for op in ops if not op.path.startswith("/monitoring")]


def test_schema_lists_every_serving_operation(api_schema):
    assert sorted(f"{op.method.upper()} {op.path}" for op in serving_operations(api_schema)) == [
        "GET /health", "GET /metrics", "GET /model", "GET /ready", "POST /model/reload", "POST /predict", "POST /predict/batch"]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_server_error(api_schema, mode):
    # Invalid requests exist only for operations that take constrained input: the prediction bodies. (The optional,
    # unconstrained X-API-Key header of /model/reload has no invalid value; positive cases send it wrong or absent.)
    operations = [op for op in serving_operations(api_schema) if mode == GenerationMode.POSITIVE or op.body]
    assert len(operations) == (7 if mode == GenerationMode.POSITIVE else 2)
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            case.validate_response(case.call(), checks=CHECKS)

        check()
