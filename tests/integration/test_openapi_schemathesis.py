"""schemathesis over /openapi.json against a real server: no operation answers a 5xx.

Every operation gets generated requests (valid and invalid by the schema); each answer must
be a non-5xx that conforms to the documented responses. Examples per operation are few, so
the run stays within about a minute.
"""

from __future__ import annotations

import os

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from support.server import ServerProcess, running_server

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def served(digits_archive) -> ServerProcess:
    with running_server(digits_archive, args=("--trust-code",)) as srv:
        yield srv


def test_the_document_is_served_and_names_every_route(served):
    doc = httpx.get(served.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert "/v2/models/{name}/infer" in doc["paths"]
    assert "/v1/models/{name}:predict" in doc["paths"]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_operation_answers_a_server_error(served, mode):
    schema = schemathesis.openapi.from_url(served.url + "/openapi.json")
    failures: list[str] = []
    statuses: dict[int, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(operation.as_strategy(generation_mode=mode))
        def run(case):
            if "name" in (case.path_parameters or {}) and case.path_parameters["name"] == "":
                return  # an empty path segment is another route, not this one
            response = case.call(base_url=served.url, timeout=30)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code >= 500 and response.status_code != 503:
                failures.append(f"{case.operation.label}: {response.status_code} "
                                f"{response.text[:200]} for {case.as_curl_command()}")  # fmt: skip
                return
            if mode is GenerationMode.POSITIVE:
                case.validate_response(response, checks=CHECKS)

        try:
            run()
        except Unsatisfiable:
            # Negative mode on an operation with nothing to get wrong (no parameters, no body).
            assert mode is GenerationMode.NEGATIVE
    assert not failures, "\n".join(failures)
    assert not any(s >= 500 for s in statuses), statuses
    assert "Traceback" not in "".join(served.output)
