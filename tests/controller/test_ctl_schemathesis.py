"""Schemathesis against a real controller: the OpenAPI document the controller serves
(``GET /v1/openapi.json``, built by ``nasblade.controller.api._openapi``) drives generated
requests -- valid ones and, in schemathesis' negative mode, invalid ones -- to every operation.

The controller runs as production runs it: fault injection off (no ``--faults``; the
operator's default, DiskArray ``spec.faultInjection`` false), so the fault routes answer 403
and no generated request can make a device fail (``fuzzed_controller``, this module's own;
``shared_controller`` keeps fault injection on for the other modules).

Asserted for every request: no server error at all (no 5xx, whatever the document declares:
an LU created or grown beyond the devices is a 409 with ``"reason": "NoSpace"``, and the 503
the document keeps for an I/O error of the devices under compare-and-write cannot happen
without failing devices), and the reply conforms to the document (status code, content type,
JSON schema of the body). A request the document calls valid may be refused for what it
means (an unknown LU, a range past the end, no space: 4xx), never for its shape: no
``SHAPE_ERRORS`` message on positive data. The controller's log must hold no traceback
(``fuzzed_controller``'s teardown). Bounded: ``EXAMPLES`` examples per operation, no deadline.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from conftest import module_controller
from ctlharness import ADMIN, Controller
from hypothesis import HealthCheck, given, settings
from nasblade.controller import api
from nasblade.controller.apiclient import ControlAPIError
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
def fuzzed_controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    """One controller for the module, with fault injection off (the production default)."""
    yield from module_controller(tmp_path_factory, "fuzzed", faults=False)


@pytest.fixture(scope="module")
def api_schema(fuzzed_controller: Controller) -> Any:
    """The schema as the running controller serves it (fetched with the admin token)."""
    doc = fuzzed_controller.admin.openapi()
    assert doc == api.OPENAPI
    return schemathesis.openapi.from_dict(doc)


def test_the_fuzzed_controller_injects_no_faults(fuzzed_controller: Controller) -> None:
    """The admin token the fuzzer sends cannot inject a fault: ``--faults`` is off."""
    with pytest.raises(ControlAPIError) as exc:
        fuzzed_controller.admin.list_faults()
    assert exc.value.status == 403 and "fault injection is off" in exc.value.message


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/lus", {"name": "huge", "size": 1 << 40}),
    ("PATCH", "/v1/lus/{name}", {"size": 1 << 40}),
], ids=["create", "grow"])
def test_no_space_is_a_declared_client_error(api_schema: Any, fuzzed_controller: Controller, method: str,
                                             path: str, body: dict[str, Any]) -> None:
    """What the fuzzer meets only by chance, made certain: an LU created or grown beyond the
    devices is ``409`` with ``"reason": "NoSpace"`` (the ``Error`` schema), a reply the
    document declares -- not a 5xx."""
    case = api_schema[path][method].Case(path_parameters={"name": "shared"} if "{name}" in path else {},
                                         body=body, media_type="application/json")
    response = case.call(base_url=fuzzed_controller.api, headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 409, response.text
    reply = response.json()
    assert reply["reason"] == "NoSpace" and reply["error"].startswith("no space: "), reply
    case.validate_response(response, checks=CHECKS)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_control_api_conforms(api_schema: Any, fuzzed_controller: Controller, method: str, path: str,
                              mode: GenerationMode) -> None:
    operation = api_schema[path][method]

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        response = case.call(base_url=fuzzed_controller.api, headers={"Authorization": f"Bearer {ADMIN}"})
        assert response.status_code < 500, (
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
