"""Seeds, OpenAI's penalties, log-probabilities and usage in streams: the processors against
hand-written references, then through a live server against the model run directly."""

from __future__ import annotations

import json
import math

import pytest
import torch

from prefixtune.serve.sampling import Logprobs, Penalties

pytest.importorskip("uvicorn")

from live_server import make_server, tiny_llama  # noqa: E402


def test_penalties_subtract_presence_and_frequency_of_the_generated_tokens_per_row():
    p = Penalties(presence=[0.5, 0.0], frequency=[1.0, 2.0])
    scores = torch.zeros(2, 5)
    prompt = torch.tensor([[4, 4], [4, 4]])  # prompt tokens never count
    assert torch.equal(p(prompt, scores), scores)  # step 0: nothing generated yet
    ids = torch.cat([prompt, torch.tensor([[1], [2]])], 1)
    assert torch.equal(p(ids, scores), torch.tensor([[0, -1.5, 0, 0, 0], [0, 0, -2.0, 0, 0]]))
    ids = torch.cat([ids, torch.tensor([[1], [3]])], 1)
    assert torch.equal(p(ids, scores), torch.tensor([[0, -2.5, 0, 0, 0], [0, 0, -2.0, -2.0, 0]]))
    only_new = ids[:, 2:]  # soft prompts: generate shows the new tokens only, with the same result
    q = Penalties(presence=[0.5, 0.0], frequency=[1.0, 2.0])
    q(only_new[:, :0], scores), q(only_new[:, :1], scores)
    assert torch.equal(q(only_new, scores), torch.tensor([[0, -2.5, 0, 0, 0], [0, 0, -2.0, -2.0, 0]]))


def test_logprobs_record_the_top_tokens_and_the_chosen_one_per_row():
    rec = Logprobs([2, None, 0])
    scores = torch.tensor([[0.0, 1.0, 2.0], [5.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    rec(torch.zeros(3, 1, dtype=torch.long), scores)
    rec.finish(torch.tensor([1, 0, 2]))
    logp = torch.log_softmax(scores, -1)
    (chosen, top), = rec.steps[0]
    assert chosen == pytest.approx(logp[0, 1].item())
    assert [t for t, _ in top] == [2, 1] and top[0][1] == pytest.approx(logp[0, 2].item())
    assert rec.steps[1] == [] and rec.steps[2] == [(pytest.approx(logp[2, 2].item()), [])]


@pytest.fixture(scope="module")
def server(tokenizer, adapters):
    server, engine = make_server(tokenizer, {"table": adapters["table"]})
    with server:
        yield server, engine


def _complete(http, **body):
    r = http.post("/v1/completions", json={"model": "tiny", "prompt": "name[The Eagle]", **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_the_same_seed_samples_the_same_text_alone_or_among_others(server):
    import concurrent.futures

    server, engine = server
    with server.http() as http:
        sample = dict(max_tokens=12, temperature=1.0, ignore_eos=True)
        first = _complete(http, seed=1234, **sample)["choices"][0]["text"]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # among unseeded requests it still runs alone
            texts = list(pool.map(lambda s: _complete(http, **sample, **({"seed": 1234} if s else {})),
                                  [0, 1, 0, 1]))
        assert [t["choices"][0]["text"] for t, s in zip(texts, [0, 1, 0, 1]) if s] == [first, first]
        others = {_complete(http, seed=s, **sample)["choices"][0]["text"] for s in (1, 2, 3)}
        assert len(others | {first}) > 1, "different seeds sample different texts"


def _greedy_with_penalties(model, tokenizer, prompt, steps, presence, frequency):
    """The oracle: a plain greedy loop over the model, penalties applied by hand."""
    ids = tokenizer(prompt)["input_ids"]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids + new])).logits[0, -1].double()
            for tok in set(new):
                logits[tok] -= presence + frequency * new.count(tok)
            new.append(int(logits.argmax()))
    return new


def test_presence_and_frequency_penalties_follow_openai(server, tokenizer):
    server, _ = server
    model = tiny_llama(tokenizer)
    with server.http() as http:
        plain = _complete(http, max_tokens=12, temperature=0, ignore_eos=True)
        got = _complete(http, max_tokens=12, temperature=0, ignore_eos=True, presence_penalty=0.5,
                        frequency_penalty=-1.5)  # a negative penalty favours repeats: it changes the text
    want = _greedy_with_penalties(model, tokenizer, "name[The Eagle]", 12, 0.5, -1.5)
    assert got["choices"][0]["text"] == tokenizer.decode(want, skip_special_tokens=True)
    assert _greedy_with_penalties(model, tokenizer, "name[The Eagle]", 12, 0, 0) != want, "the penalties must matter"
    assert plain["choices"][0]["text"] != got["choices"][0]["text"]


def test_completion_logprobs_match_the_model(server, tokenizer):
    server, _ = server
    model = tiny_llama(tokenizer)
    with server.http() as http:
        r = _complete(http, max_tokens=5, temperature=0, ignore_eos=True, logprobs=3)
    lp = r["choices"][0]["logprobs"]
    n = r["usage"]["completion_tokens"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == n
    if not any("\ufffd" in t for t in lp["tokens"]):  # a token can end inside a character
        assert "".join(lp["tokens"]) == r["choices"][0]["text"]
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    assert all(len(top) <= 3 and max(top.values()) == pytest.approx(chosen, abs=1e-5)  # greedy: the top one
               for top, chosen in zip(lp["top_logprobs"], lp["token_logprobs"]))
    ids = tokenizer("name[The Eagle]")["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)
    assert lp["token_logprobs"][0] == pytest.approx(logp.max().item(), abs=1e-4)
    assert all(v <= 0 and math.isfinite(v) for v in lp["token_logprobs"])


def test_chat_logprobs_in_openais_chat_format(server):
    server, _ = server
    client = server.client()
    r = client.chat.completions.create(model="table", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                       temperature=0, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for c in content:
        assert len(c.top_logprobs) == 2 and c.top_logprobs[0].logprob == pytest.approx(c.logprob, abs=1e-5)
        assert bytes(c.bytes).decode("utf-8", errors="replace") == c.token
    plain = client.chat.completions.create(model="table", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                           temperature=0, logprobs=True)
    assert all(c.top_logprobs == [] for c in plain.choices[0].logprobs.content)


def test_stream_usage_comes_in_a_last_chunk_without_choices(server):
    server, _ = server
    client = server.client()
    for stream in (client.completions.create(model="tiny", prompt="hi", max_tokens=3, stream=True,
                                             stream_options={"include_usage": True}),
                   client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                  max_tokens=3, stream=True, stream_options={"include_usage": True})):
        chunks = list(stream)
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 3
        assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens
        assert all(c.usage is None for c in chunks[:-1])


def test_logprob_combinations_that_are_not_served_are_refused(server):
    server, _ = server
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with server.http() as http:
        r = http.post("/v1/chat/completions", json={**chat, "top_logprobs": 2})
        assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"
        r = http.post("/v1/chat/completions", json={**chat, "logprobs": True, "stream": True})
        assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"
        r = http.post("/v1/completions", json={"model": "tiny", "prompt": "a", "logprobs": 50})
        assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"
        r = http.post("/v1/completions", json={"model": "tiny", "prompt": "a",
                                               "stream_options": {"include_usage": True}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options"
        assert json.loads(http.post("/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 1,
                                                             "seed": -3}).text)["choices"]
