"""The live app answers as its ``/openapi.json`` says: schemathesis generates requests
for every documented operation (derandomized, so CI sends the same ones every time) and
checks each answer's status, content type, headers and body against the document, over
HTTP on 127.0.0.1. A long generated-input run, so it stays out of `make test-fast`; the
document itself is checked in tests/unit/test_openapi.py.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from eventrouter.edge import openapi
from tests.unit.test_openapi import AUTH, live  # noqa: F401 - fixtures

# ruff: noqa: F811 - pytest fixtures are parameters

# -- schemathesis --------------------------------------------------------------------------

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def api_schema(live):
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json", timeout=30)


OPERATIONS = [
    (path, method) for path, item in openapi.document()["paths"].items() for method in item
]


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_the_app_answers_as_its_openapi_document_says(api_schema, path, method):
    headers = AUTH if path.startswith("/api/") else None

    @given(case=api_schema[path][method].as_strategy())
    @settings(
        max_examples=12,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def answers_as_documented(case):
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

    answers_as_documented()
