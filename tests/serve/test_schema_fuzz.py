"""Schemathesis against a live server's ``/openapi.json``: every operation, valid and invalid
data, no 5xx, every response as the schema declares it (see ``tests/schema_fuzz.py``).

Bounded for CI (30 derandomized examples per operation and mode); the larger run with a
summary: ``bench/fuzz_http.py``.
"""

from __future__ import annotations

import pytest

pytest.importorskip("schemathesis")
pytest.importorskip("uvicorn")

from live_server import AUTH, KEY, make_server  # noqa: E402
from schema_fuzz import OPERATIONS, Tally, fuzz_operation, load_schema  # noqa: E402


MODELS = ["tiny", "table"]


def fuzz_server(tokenizer, adapters):
    """A live server to fuzz: 8 new tokens at most (fast), the admin routes open to the API key."""
    server, _ = make_server(tokenizer, {"table": adapters["table"]},
                            settings={"admin_key": KEY, "max_tokens": 8, "max_prompt_tokens": 64})
    return server


@pytest.fixture(scope="module")
def live(tokenizer, adapters):
    with fuzz_server(tokenizer, adapters) as server:
        yield server, load_schema(server.url, AUTH)


def test_the_schema_lists_every_operation(live):
    _, schema = live
    listed = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert listed == set(OPERATIONS)


@pytest.mark.parametrize("method, path", OPERATIONS)
def test_every_operation_conforms_and_never_fails_with_5xx(live, method, path):
    _, schema = live
    tally = Tally()
    fuzz_operation(schema, method, path, AUTH, max_examples=30, tally=tally, models=MODELS, max_tokens=8)
    assert tally.examples and not tally.failures
