"""Schemathesis runs against a live server's ``/openapi.json``, shared by the CI test
(``tests/serve/test_schema_fuzz.py``) and the larger run (``bench/fuzz_http.py``).

Each operation is fuzzed with schemathesis' strategies (valid data, then data that violates the
schema), every response checked: no 5xx, and status code, content type, headers and body as the
schema declares them. Driven through hypothesis directly (not schemathesis' pytest plugin).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import checks as st_checks

#: what every response is checked for
CHECKS = [st_checks.not_a_server_error, st_checks.status_code_conformance, st_checks.content_type_conformance,
          st_checks.response_headers_conformance, st_checks.response_schema_conformance]

#: the operations the schema must list (method, path)
OPERATIONS = [("GET", "/health"), ("GET", "/v1/models"), ("GET", "/v1/models/{model_id}"),
              ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("POST", "/admin/adapters"),
              ("DELETE", "/admin/adapters/{name}")]


@dataclass
class Tally:
    """Examples tried and failures found, per operation label (``GET /health``)."""

    examples: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)
    unsatisfiable: list[str] = field(default_factory=list)


def load_schema(url: str, headers: dict[str, str]) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{url}/openapi.json", headers=headers)


def _guide(case: schemathesis.Case, data: st.DataObject, models: list[str], max_tokens: int) -> None:
    """Half the time, name a served model and ask for a feasible ``max_tokens``, so that valid
    requests also reach generation (random text names no model)."""
    if isinstance(case.body, dict):
        if "model" in case.body and data.draw(st.booleans()):
            case.body["model"] = data.draw(st.sampled_from(models))
        if "max_tokens" in case.body and data.draw(st.booleans()):
            case.body["max_tokens"] = data.draw(st.integers(1, max_tokens))
    for key in ("model_id", "name"):
        if key in (case.path_parameters or {}) and data.draw(st.booleans()):
            case.path_parameters[key] = data.draw(st.sampled_from(models))


def fuzz_operation(schema: schemathesis.BaseSchema, method: str, path: str, headers: dict[str, str],
                   max_examples: int, tally: Tally, models: list[str], max_tokens: int,
                   raise_first: bool = True) -> None:
    """Fuzz one operation with ``max_examples`` positive and as many negative examples
    (derandomized), guided to ``models`` and ``max_tokens`` half the time; counts go to
    ``tally``; the first failure is raised if ``raise_first``."""
    operation = schema[path][method]
    label = f"{method} {path}"
    for mode in schemathesis.GenerationMode:

        @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
        @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
        def run(case: schemathesis.Case, data: st.DataObject) -> None:
            if method != "DELETE":  # unloading the adapters would leave nothing to fuzz
                _guide(case, data, models, max_tokens)
            tally.examples[label] = tally.examples.get(label, 0) + 1
            try:
                response = case.call_and_validate(headers=headers, checks=CHECKS, timeout=60)
                codes = tally.statuses.setdefault(label, {})
                codes[response.status_code] = codes.get(response.status_code, 0) + 1
            except Exception as e:
                tally.failures.setdefault(label, []).append(f"{mode.value}: {str(e)[:2000]}")
                if raise_first:
                    raise

        try:
            run()
        except Unsatisfiable:
            if mode is schemathesis.GenerationMode.POSITIVE:
                raise
            tally.unsatisfiable.append(label)  # nothing in it can violate the schema (no body, any text)
