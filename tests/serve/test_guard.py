"""What every request passes first: the API key (before the body is read), the body-size limit."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("uvicorn")

from live_server import KEY, make_server  # noqa: E402


@pytest.fixture(scope="module")
def server(tokenizer, adapters):
    server, _ = make_server(tokenizer, {})
    with server:
        yield server


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_the_key_is_checked_before_the_body_is_read(server):
    # 60 MB announced, 1 byte sent: a server that read the body first would wait for the rest
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 60000000\r\n\r\n{")
    start = time.monotonic()
    response = server.raw(head, timeout=10, until_closed=True)
    assert _status(response) == 401 and b'"invalid_api_key"' in response
    assert time.monotonic() - start < 3, "the server closes at once: the rest of the body is never read"
    with server.http(key=None) as http:
        r = http.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    with server.http(key="wrong") as http:
        r = http.post("/v1/chat/completions", json={"model": "tiny"})
        assert r.status_code == 401


def test_docs_and_schema_need_the_key_health_does_not(server):
    with server.http(key=None) as http:
        for path in ("/docs", "/redoc", "/openapi.json", "/v1/models", "/nowhere"):
            assert http.get(path).status_code == 401, path
        assert http.get("/health").json()["status"] == "ok"
    with server.http() as http:
        assert http.get("/openapi.json").json()["info"]["title"] == "prefixtune"
        assert http.get("/docs").status_code == 200


def test_bodies_over_the_limit_get_413_by_content_length_or_while_streaming(tokenizer):
    server, _ = make_server(tokenizer, {}, settings={"max_body_bytes": 2000})
    with server:
        _check_body_limit(server)


def _check_body_limit(server):
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"content-type: application/json\r\ncontent-length: 5000\r\n\r\n").encode()
    response = server.raw(head + b"{", timeout=10, until_closed=True)
    assert _status(response) == 413 and b'"request_too_large"' in response

    def chunks():  # no Content-Length: sent chunked
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}'

    with server.http() as http:
        r = http.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "request_too_large" and "2000" in r.json()["error"]["message"]
        small = http.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
        assert small.status_code == 200, small.text
