"""Routes and server states: models by id, 429 and 503 with Retry-After, /health while draining."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest

pytest.importorskip("uvicorn")

from live_server import hold, make_server  # noqa: E402


def test_overload_429_says_when_to_retry(tokenizer, adapters):
    server, _ = make_server(tokenizer, {}, max_queue=1, batch_wait_ms=200, max_batch_size=1)
    body = {"model": "tiny", "prompt": "x", "max_tokens": 20, "temperature": 0}
    with server, server.http() as http:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda _: http.post("/v1/completions", json=body), range(6)))
    refused = [r for r in responses if r.status_code == 429]
    assert refused and any(r.status_code == 200 for r in responses)
    for r in refused:
        assert r.headers["Retry-After"].isdigit() and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["type"] == "rate_limit_error"


def test_models_by_id_including_ids_with_slashes(tokenizer, adapters):
    server, _ = make_server(tokenizer, {"table": adapters["table"]}, settings={"base_name": "org/tiny"})
    with server, server.http() as http:
        for name in ("org/tiny", "table"):
            r = http.get(f"/v1/models/{name}")
            assert r.status_code == 200, r.text
            assert r.json()["id"] == name and r.json()["object"] == "model"
        r = http.get("/v1/models/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["org/tiny", "table"]


def test_a_draining_server_answers_503_with_retry_after(tokenizer, adapters):
    server, engine = make_server(tokenizer, {})
    release = threading.Event()
    hold(engine, release)  # the running request holds the worker until released
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 3}
    with server, server.http() as http, concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = pool.submit(http.post, "/v1/completions", json=body)
        while engine.queued or not engine.busy:  # the request is being generated
            time.sleep(0.01)
        stopping = pool.submit(engine.stop)  # as the shutdown does, while a request runs
        while not engine._stopping:
            time.sleep(0.01)
        r = http.post("/v1/completions", json=body)
        assert r.status_code == 503 and r.headers["Retry-After"].isdigit(), r.text
        assert r.json()["error"]["code"] == "shutting_down"
        health = http.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "draining"
        assert health.headers["Retry-After"].isdigit()
        release.set()
        assert running.result().status_code == 200, "the running request still finishes"
        stopping.result()


def test_a_shutting_down_server_drains_new_requests_get_503(tokenizer):
    """When uvicorn starts to shut down (SIGTERM, leaving ServerThread) the app is marked draining:
    a request reaching it then gets 503 (here sent to the app directly: uvicorn no longer accepts
    connections) while the running one finishes."""
    import asyncio

    import httpx

    server, engine = make_server(tokenizer, {})
    app = server.server.config.app
    release = threading.Event()
    hold(engine, release)

    async def direct(path):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.get(path, headers={"Authorization": "Bearer test-key"})

    with server, server.http() as http, concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(http.post, "/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
        while not engine.busy:
            time.sleep(0.01)
        server.server.should_exit = True
        deadline = time.monotonic() + 10
        while not app.state.drain.is_set():
            assert time.monotonic() < deadline, "shutting down did not mark the app draining"
            time.sleep(0.01)
        r = asyncio.run(direct("/v1/models"))
        assert r.status_code == 503 and r.headers["Retry-After"].isdigit()
        assert asyncio.run(direct("/health")).json()["status"] == "draining"
        release.set()
        assert running.result().status_code == 200
