"""A property-based run over the whole OpenAPI document (schemathesis, in-process over WSGI),
anonymous and with an owner's bearer token: every response is documented (status code and
content type) and matches its schema, and no input makes a 5xx.

Small and deterministic (``derandomize``: the same examples on every run), so it stays in the
suite's default run. Each operation gets valid and invalid inputs (schemathesis' positive and
negative generation modes)."""

from __future__ import annotations

import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from hypothesis import HealthCheck
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)


def no_undocumented_server_error(ctx, response, case):
    """schemathesis' ``not_a_server_error``, except for a 5xx the operation documents (503
    ``billing_not_configured`` on a deployment without Stripe). A 500 never passes."""
    documented = case.operation.definition.raw.get("responses", {})
    if response.status_code != 500 and str(response.status_code) in documented:
        return True
    return not_a_server_error(ctx, response, case)


CHECKS = [
    no_undocumented_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
#: examples per operation, generation mode and credential (the whole run stays well under a minute)
MAX_EXAMPLES = 5
FUZZ = hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],  # a failure is reported, not shrunk
)


def _fuzz(app, headers: dict[str, str] | None) -> list[str]:
    """Run every operation of ``app``'s document; the failures as one line each."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 40
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @FUZZ
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def run(case) -> None:
                case.call_and_validate(headers=headers, checks=CHECKS)

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                continue  # nothing to negate: an operation without parameters or body
            except (Exception, BaseExceptionGroup) as exc:  # every operation runs; all failures reported
                text = " | ".join(line.strip() for line in str(exc).splitlines() if line.strip())
                failures.append(f"{operation.label} [{mode.value}]: {type(exc).__name__}: {text[:1500]}")
    if failures:
        print("\n".join(failures))
    return failures


def test_anonymous_responses_match_the_document(app, connection):
    assert _fuzz(app, None) == []


@pytest.fixture()
def owner_headers(api):
    return api.auth(api.signup("fuzz"))


def test_authenticated_responses_match_the_document(app, owner_headers):
    assert _fuzz(app, owner_headers) == []
