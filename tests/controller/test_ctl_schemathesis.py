"""Schemathesis against a real controller: the OpenAPI document the controller serves
(``GET /v1/openapi.json``, built by ``nasblade.controller.api._openapi``) drives generated
requests -- valid ones and, in schemathesis' negative mode, invalid ones -- to every operation.

Asserted for every request: no server error (5xx) except the statuses the document declares
for that operation (507 "no space" when an LU is created or grown beyond the devices, 503 an
I/O error under compare-and-write), and the reply conforms to the document (status code,
content type, JSON schema of the body). A request the document calls valid may be refused
for what it means (an unknown LU, a range past the end: 4xx), never for its shape: no
``SHAPE_ERRORS`` message on positive data. The controller's log must hold no traceback
(``shared_controller``'s teardown). Bounded: ``EXAMPLES`` examples per operation, no deadline.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from ctlharness import ADMIN, Controller
from hypothesis import HealthCheck, given, settings
from nasblade.controller import api
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.component

EXAMPLES = 20
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]
OPERATIONS = [(method, path) for method, path, _, _ in api.ROUTES]
#: 400 messages that mean "malformed" -- the document's schemas must rule these requests out
SHAPE_ERRORS = ("has the wrong type", "missing field", "must be an integer", "must not be negative",
                "malformed JSON", "must be a JSON object", "invalid LU name", "data must be",
                "data is not base64", "holder must be", "name must not be empty", "ops must be",
                "state must be", "is required")


@pytest.fixture(scope="module")
def api_schema(shared_controller: Controller) -> Any:
    """The schema as the running controller serves it (fetched with the admin token)."""
    doc = shared_controller.admin.openapi()
    assert doc == api.OPENAPI
    return schemathesis.openapi.from_dict(doc)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_control_api_conforms(api_schema: Any, shared_controller: Controller, method: str, path: str,
                              mode: GenerationMode) -> None:
    operation = api_schema[path][method]
    declared = operation.definition.raw.get("responses", {})

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        response = case.call(base_url=shared_controller.api, headers={"Authorization": f"Bearer {ADMIN}"})
        if response.status_code >= 500:
            assert str(response.status_code) in declared, (
                f"server error {response.status_code} on {case.method} {case.formatted_path} "
                f"body={case.body!r} query={case.query!r}: {response.text[:300]}")
        if mode is GenerationMode.POSITIVE and response.status_code == 400:
            error = response.json()["error"]
            assert not any(m in error for m in SHAPE_ERRORS), (
                f"valid by the document, refused as malformed: {case.method} {case.formatted_path} "
                f"body={case.body!r} query={case.query!r}: {error}")
        if mode is GenerationMode.POSITIVE or response.status_code < 300:
            case.validate_response(response, checks=CHECKS)

    check()
