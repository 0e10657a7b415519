"""Every error is JSON in OpenAI's shape: unexpected exceptions, engine failures (also mid-stream),
adapters that cannot be loaded."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("uvicorn")

from live_server import ADMIN, make_server, model_call  # noqa: E402


def _is_openai_error(body: dict) -> bool:
    return set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def server(tokenizer, adapters):
    server, engine = make_server(tokenizer, {})
    with server:
        yield server, engine


def test_an_engine_error_is_a_json_500(server, monkeypatch):
    server, engine = server

    def broken(*args, **kwargs):
        raise RuntimeError("the accelerator fell over")

    monkeypatch.setattr(*model_call(engine), broken)
    with server.http() as http:
        r = http.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
    assert r.status_code == 500 and _is_openai_error(r.json()), r.text
    assert r.json()["error"]["type"] == "server_error"


def test_an_unexpected_exception_is_a_json_500(server, monkeypatch):
    server, engine = server

    def broken(*args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(engine, "submit", broken)
    with server.http() as http:
        r = http.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
    assert r.status_code == 500 and _is_openai_error(r.json()), r.text


def test_an_error_mid_stream_ends_with_an_error_event_and_done(server, monkeypatch):
    server, engine = server
    obj, name = model_call(engine)
    real, calls = getattr(obj, name), []

    def failing(*args, **kwargs):  # the prefill and one step publish two tokens, the next call fails
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("the accelerator fell over")
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, name, failing)
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 10, "stream": True, "ignore_eos": True}
    with server.http() as http:
        with http.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", events
    last = json.loads(events[-2])
    assert _is_openai_error(last) and "accelerator" in last["error"]["message"]
    assert all("choices" in json.loads(e) for e in events[:-2])


def test_adapters_that_cannot_be_loaded_are_json_400s(server, tmp_path):
    server, _ = server
    deep = tmp_path / "deep"
    deep.mkdir()
    (deep / "prefixtune_config.json").write_text("[" * 100_000)  # valid-looking start, malformed manifest
    with server.http(key=ADMIN) as http:
        for path in (str(deep), "/" + "x" * 5000):  # a manifest json cannot parse; a name the OS refuses
            r = http.post("/admin/adapters", json={"name": "bad", "path": path})
            assert r.status_code == 400 and _is_openai_error(r.json()), r.text
            assert r.json()["error"]["param"] == "path"
