"""Request bodies: strict types, refused OpenAI parameters, unknown fields."""

from __future__ import annotations

import pytest

pytest.importorskip("uvicorn")

from live_server import make_server  # noqa: E402


@pytest.fixture(scope="module")
def http(tokenizer):
    server, _ = make_server(tokenizer, {})
    with server, server.http() as http:
        yield http


CHAT = {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "tiny", "max_tokens": 2, "prompt": "hi"}


@pytest.mark.parametrize("field, value", [("stream", "yes"), ("max_tokens", True), ("temperature", "0.5"),
                                          ("top_p", "1"), ("ignore_eos", 1), ("n", 1.0), ("stop", 3),
                                          ("prompt", 7), ("model", 1)])
def test_loose_types_are_400s_naming_the_field(http, field, value):
    r = http.post("/v1/completions", json={**COMPLETION, field: value})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field


def test_ints_are_valid_floats_and_chat_fields_are_strict_too(http):
    assert http.post("/v1/completions", json={**COMPLETION, "temperature": 0, "top_p": 1}).status_code == 200
    r = http.post("/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": 5}]})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages.0.content")
    for role in ("banana", "tool", ""):  # once rendered into the prompt as '<|im_start|>banana'
        r = http.post("/v1/chat/completions", json={**CHAT, "messages": [{"role": role, "content": "hi"}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.role", r.text


def test_unsupported_parameters_are_refused_naming_them(http):
    r = http.post("/v1/completions", json={**COMPLETION, "echo": True, "best_of": 2})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "unsupported parameter(s): echo, best_of"
    assert r.json()["error"]["param"] == "echo"
    for extra in ({"tools": [{"type": "function"}]}, {"response_format": {"type": "json_object"}},
                  {"logit_bias": {"1": 5}}, {"made_up": 1}):
        r = http.post("/v1/chat/completions", json={**CHAT, **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == next(iter(extra)), r.text
    # accepted: the end-user id, parameters sent as null or as their no-op value
    for fine in ({"user": "u1"}, {"logit_bias": None}, {"echo": False}, {"best_of": 1}):
        assert http.post("/v1/completions", json={**COMPLETION, **fine}).status_code == 200, fine
