"""The HTTP server, driven by the official ``openai`` client against a live server on 127.0.0.1."""

from __future__ import annotations

import concurrent.futures
import time

import pytest
import torch

import prefixtune as pt

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from live_server import ADMIN, KEY, make_server, tiny_llama  # noqa: E402


def expected_text(tokenizer, adapter, prompt, max_tokens):
    """The oracle for a greedy completion: the adapter loaded on its own and ``generate``d directly."""
    pm = pt.load(tiny_llama(tokenizer), adapter).eval()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = pm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_models_completions_chat_and_streaming(tokenizer, adapters):
    server, engine = make_server(tokenizer, adapters)
    with server:
        client = server.client()
        assert [m.id for m in client.models.list().data] == ["tiny", "soft", "table"]
        texts = {}
        for model in ("tiny", "table", "soft"):
            r = client.completions.create(model=model, prompt="name[The Eagle], food[French]", max_tokens=8,
                                          temperature=0)
            assert r.choices[0].finish_reason in ("stop", "length")
            assert r.usage.completion_tokens <= 8
            texts[model] = r.choices[0].text
            streamed = "".join(c.choices[0].text for c in client.completions.create(
                model=model, prompt="name[The Eagle], food[French]", max_tokens=8, temperature=0, stream=True))
            assert streamed == texts[model]
        assert len(set(texts.values())) == 3, "each adapter (and the base) must change the output"
        chat = client.chat.completions.create(model="table", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=6, temperature=0)
        assert chat.choices[0].message.role == "assistant"
        chunks = client.chat.completions.create(model="table", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=6, temperature=0, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == chat.choices[0].message.content


def test_concurrent_requests_match_one_at_a_time(tokenizer, adapters):
    prompts = [f"name[Place {i}], area[riverside], food[{f}]" for i, f in enumerate(["Thai", "French", "Chinese"] * 4)]
    models = ["table", "soft", "tiny"] * 4
    server, engine = make_server(tokenizer, adapters, batch_wait_ms=50)
    with server:
        client = server.client()
        serial = [client.completions.create(model=m, prompt=p, max_tokens=10, temperature=0).choices[0].text
                  for m, p in zip(models, prompts)]
        engine.steps.clear()
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            parallel = list(pool.map(lambda mp: client.completions.create(
                model=mp[0], prompt=mp[1], max_tokens=10, temperature=0).choices[0].text, zip(models, prompts)))
    assert parallel == serial
    assert max(engine.steps) > 1, "concurrent requests for different adapters must share decoding steps"


def test_errors(tokenizer, adapters):
    server, engine = make_server(tokenizer, adapters)
    with server:
        client = server.client()
        with pytest.raises(openai.NotFoundError) as e:
            client.completions.create(model="nope", prompt="x", max_tokens=2)
        assert e.value.body["code"] == "model_not_found"
        with pytest.raises(openai.AuthenticationError):
            server.client("wrong").models.list()
        with pytest.raises(openai.BadRequestError, match="max_tokens"):
            client.completions.create(model="tiny", prompt="x", max_tokens=500)
        with pytest.raises(openai.BadRequestError, match="limit is 64"):
            client.completions.create(model="tiny", prompt="word " * 200, max_tokens=2)
        import httpx

        base = f"http://127.0.0.1:{server.port}"
        headers = {"Authorization": f"Bearer {KEY}"}
        r = httpx.post(f"{base}/v1/completions", content=b"{not json", headers={**headers, "content-type": "application/json"})
        assert r.status_code == 400 and "error" in r.json()
        r = httpx.post(f"{base}/v1/completions", json={"model": "tiny"}, headers=headers)
        assert r.status_code == 400 and "prompt" in r.json()["error"]["message"]
        assert httpx.get(f"{base}/health").json()["status"] == "ok"


def test_overload_gives_429(tokenizer, adapters):
    server, engine = make_server(tokenizer, adapters, max_queue=1, batch_wait_ms=200, max_batch_size=1)
    with server:
        client = server.client()
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(client.completions.create, model="tiny", prompt="x", max_tokens=20, temperature=0)
                       for _ in range(6)]
            outcomes = []
            for f in futures:
                try:
                    f.result()
                    outcomes.append("ok")
                except openai.RateLimitError:
                    outcomes.append("429")
    assert "429" in outcomes and "ok" in outcomes


def test_admin_load_unload(tokenizer, adapters, tmp_path):
    server, engine = make_server(tokenizer, {"table": adapters["table"]})
    import httpx

    with server:
        base = f"http://127.0.0.1:{server.port}"
        client = server.client()
        r = httpx.post(f"{base}/admin/adapters", json={"name": "soft", "path": str(adapters["soft"])},
                       headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 401
        admin = {"Authorization": f"Bearer {ADMIN}"}
        r = httpx.post(f"{base}/admin/adapters", json={"name": "soft", "path": str(adapters["soft"])}, headers=admin)
        assert r.status_code == 200, r.text
        assert "soft" in [m.id for m in client.models.list().data]
        got = client.completions.create(model="soft", prompt="x", max_tokens=3, temperature=0).choices[0].text
        assert got == expected_text(tokenizer, adapters["soft"], "x", 3)
        r = httpx.post(f"{base}/admin/adapters", json={"name": "bad", "path": str(tmp_path)}, headers=admin)
        assert r.status_code == 400 and "prefixtune_config.json" in r.json()["error"]["message"]
        assert httpx.delete(f"{base}/admin/adapters/soft", headers=admin).status_code == 200
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="soft", prompt="x", max_tokens=3)
        assert httpx.delete(f"{base}/admin/adapters/soft", headers=admin).status_code == 404


def test_shutdown_finishes_running_requests(tokenizer, adapters):
    server, engine = make_server(tokenizer, adapters, batch_wait_ms=100)
    results = []
    with server:
        client = server.client()
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(client.completions.create, model="table", prompt=f"x{i}", max_tokens=20,
                                   temperature=0) for i in range(3)]
            deadline = time.monotonic() + 30
            while engine.queued + engine.taken < 3:  # all three are in the engine (a request still
                assert time.monotonic() < deadline          # on its way when the shutdown starts gets 503)
                time.sleep(0.01)
            server.server.should_exit = True  # like SIGTERM: stop accepting, finish what is running
            results = [f.result().choices[0].finish_reason for f in futures]
    assert len(results) == 3 and all(r in ("stop", "length") for r in results)  # none was cut off by the shutdown
    assert not engine._thread.is_alive(), "the engine drains and stops with the server"


def test_serve_command_runs_and_stops_on_sigterm(tokenizer, adapters, tmp_path):
    """`prefixtune serve` as a user starts it: a real process, a real port, SIGTERM to stop."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    import httpx

    model_dir = tmp_path / "tiny"
    tiny_llama(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "prefixtune.cli", "serve", "--model", str(model_dir),
                             "--adapter", f"table={adapters['table']}", "--port", str(port), "--api-key", KEY],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
            time.sleep(0.3)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny", "table"]  # the directory's name, not its path
        got = client.completions.create(model="table", prompt="hi", max_tokens=3, temperature=0).choices[0].text
        assert got == expected_text(tokenizer, adapters["table"], "hi", 3)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status says SIGTERM
    assert code in (0, -signal.SIGTERM)
    assert "Finished server process" in proc.stdout.read()


def _slowed(engine, seconds):
    """Every model call of the engine takes ``seconds`` longer (so that a long request is still running)."""
    from live_server import model_call

    obj, name = model_call(engine)
    real = getattr(obj, name)

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return real(*args, **kwargs)

    setattr(obj, name, slow)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_goes_away_frees_its_row_at_once(tokenizer, adapters, stream):
    """The defect: a disconnected client's row kept generating to max_tokens (1000 steps of 10 ms
    here); now the request is cancelled within a step of the disconnect (or of the next 0.5 s poll
    of a non-streamed request), and the next request is served at once."""
    import httpx

    server, engine = make_server(tokenizer, adapters, settings={"max_tokens": 1000})
    _slowed(engine, 0.01)
    body = {"model": "table", "prompt": "hello", "max_tokens": 1000, "ignore_eos": True, "stream": stream}
    with server:
        with server.http(timeout=1.0) as http:
            if stream:
                with http.stream("POST", "/v1/completions", json=body) as r:
                    lines = r.iter_lines()
                    while not next(lines).startswith("data: {"):
                        pass  # the first token arrived: the row is running; leaving the block disconnects
            else:
                with pytest.raises(httpx.ReadTimeout):
                    http.post("/v1/completions", json=body)
        gone = time.monotonic()
        while engine.busy:
            assert time.monotonic() - gone < 3, "the abandoned request is still generating"
            time.sleep(0.01)
        start = time.monotonic()
        out = server.client().completions.create(model="table", prompt="next", max_tokens=3, temperature=0)
        assert out.choices[0].finish_reason in ("stop", "length") and time.monotonic() - start < 3
    assert engine.steps and max(engine.steps) == 1
