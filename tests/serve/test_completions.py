"""The completion routes: chat streams, usage, defaults, odd inputs, tokenizing off the event loop."""

from __future__ import annotations

import concurrent.futures
import json
import time

import pytest

pytest.importorskip("uvicorn")

from live_server import make_server  # noqa: E402


@pytest.fixture(scope="module")
def server(tokenizer, adapters):
    server, engine = make_server(tokenizer, {"table": adapters["table"]})
    with server:
        yield server


def _events(http, path, body):
    with http.stream("POST", path, json=body) as r:
        assert r.status_code == 200, r.read()
        return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]


def test_a_chat_stream_starts_with_the_assistant_role(server):
    with server.http() as http:
        chunks = _events(http, "/v1/chat/completions", {"model": "table", "max_tokens": 4, "stream": True,
                                                         "messages": [{"role": "user", "content": "hi"}]})
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_usage_counts_the_real_prompt_tokens(server, tokenizer):
    with server.http() as http:
        empty = http.post("/v1/completions", json={"model": "tiny", "prompt": "", "max_tokens": 3}).json()
        assert empty["usage"]["prompt_tokens"] == 0, "the BOS generation starts from is not the client's"
        assert empty["usage"]["total_tokens"] == empty["usage"]["completion_tokens"]
        text = "name[The Eagle]"
        r = http.post("/v1/completions", json={"model": "tiny", "prompt": text, "max_tokens": 3}).json()
        assert r["usage"]["prompt_tokens"] == len(tokenizer(text)["input_ids"])


def test_max_tokens_defaults_chat_to_the_server_limit_completions_to_16(server):
    with server.http() as http:
        chat = http.post("/v1/chat/completions", json={"model": "tiny", "ignore_eos": True,
                                                       "messages": [{"role": "user", "content": "hi"}]}).json()
        assert chat["usage"]["completion_tokens"] == 32 and chat["choices"][0]["finish_reason"] == "length"
        done = http.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "ignore_eos": True}).json()
        assert done["usage"]["completion_tokens"] == 16


def test_tiny_temperatures_decode_greedily_and_lone_surrogates_are_replaced(server):
    with server.http() as http:
        greedy = http.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 4,
                                                    "temperature": 0}).json()["choices"][0]["text"]
        for t in (1e-300, 5e-324, 1e-6):
            r = http.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 4, "temperature": t})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] == greedy
        raw = {"content-type": "application/json"}
        for path, body in [("/v1/completions", b'{"model": "tiny", "prompt": "a\\ud800b", "max_tokens": 2}'),
                           ("/v1/completions", b'{"model": "tiny", "prompt": "a", "stop": "\\udfff", "max_tokens": 2}'),
                           ("/v1/completions", b'{"model": "\\ud800", "prompt": "a", "max_tokens": 2}'),
                           ("/v1/chat/completions", b'{"model": "tiny", "max_tokens": 2, '
                                                    b'"messages": [{"role": "user", "content": "\\udc00"}]}')]:
            r = http.post(path, content=body, headers=raw)
            assert r.status_code in (200, 400, 404), (body, r.status_code, r.text)
            assert "error" in r.json() or r.json()["choices"]


class SlowTokenizer:
    """The tokenizer, taking ``delay`` seconds to tokenize (a huge prompt, deterministically)."""

    def __init__(self, tokenizer, delay: float) -> None:
        self._tokenizer, self.delay = tokenizer, delay

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, *args, **kwargs):
        time.sleep(self.delay)
        return self._tokenizer(*args, **kwargs)

    def apply_chat_template(self, *args, **kwargs):
        time.sleep(self.delay)
        return self._tokenizer.apply_chat_template(*args, **kwargs)


def test_tokenizing_does_not_stall_the_event_loop(tokenizer, adapters):
    server, _ = make_server(tokenizer, {}, tokenizer_for_engine=SlowTokenizer(tokenizer, 2.0))
    with server, server.http() as http, concurrent.futures.ThreadPoolExecutor(2) as pool:
        for path, body in [("/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 2}),
                           ("/v1/chat/completions", {"model": "tiny", "max_tokens": 2,
                                                     "messages": [{"role": "user", "content": "hi"}]})]:
            slow = pool.submit(http.post, path, json=body)
            time.sleep(0.3)  # the request is being tokenized
            start = time.monotonic()
            assert http.get("/health").status_code == 200
            assert time.monotonic() - start < 1.0, "/health waited for the tokenizer"
            assert slow.result().status_code == 200
