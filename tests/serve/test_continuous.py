"""The continuous-batching engine: each request's greedy output equals the request run alone
(``AdapterBank.generate`` on one row, itself checked against ``PrefixModel`` in
tests/runtime/test_bank.py), whatever joins, leaves or is cancelled around it; faults stay with
their request."""

from __future__ import annotations

import pytest
import torch

import prefixtune as pt
from prefixtune.runtime.bank import AdapterBank, UnknownAdapterError
from prefixtune.serve.continuous import ContinuousEngine, NonFiniteLogits, UnsupportedByEngine, make_engine
from prefixtune.serve.engine import BatchingEngine, EngineSettings
from prefixtune.serve.request import ContextTooLong, Overloaded, Request
from tiny import tiny_model


class Words:
    """Token ``i`` decodes to ``w{i} ``; 2 is EOS (as in the tiny models), 0 pads."""

    eos_token_id, pad_token_id, bos_token_id = 2, 0, 1

    def decode(self, ids, skip_special_tokens=True):
        return "".join(f"w{i} " for i in ids if i != 2)


def adapters(family):
    cfgs = {
        "p3": pt.PrefixConfig(prefix_length=3, hidden_size=16, init_std=1.0),
        "p5": pt.PrefixConfig(prefix_length=5, reparameterization="direct", init_std=1.0),
        "nat": pt.PrefixConfig(prefix_length=2, reparameterization="direct", init_std=1.0, position_mode="natural"),
        "skip1": pt.PrefixConfig(prefix_length=4, reparameterization="direct", init_std=1.0, exclude_layers=(1,)),
        "prompt4": pt.PromptConfig(num_virtual_tokens=4),
        "prompt2": pt.PromptConfig(num_virtual_tokens=2, encoder="mlp", encoder_hidden_size=16),
    }
    return {name: pt.wrap(tiny_model(family), cfg).eval() for name, cfg in cfgs.items()}


def bank_of(family):
    bank = AdapterBank(tiny_model(family))
    for name, pm in adapters(family).items():
        bank.add(name, pm)
    return bank


def alone(bank, req):
    ids = torch.tensor([req.input_ids])
    out = bank.generate(req.adapter, input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                        max_new_tokens=req.max_new_tokens, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def prompt(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 90, (n,), generator=g).tolist()


def run(engine, schedule, turns=200):
    """``schedule``: turn -> requests submitted before it; turns until the engine is idle."""
    for t in range(turns):
        for r in schedule.get(t, []):
            engine.submit(r)
        if engine.idle and t > max(schedule):
            return
        engine.turn()
    raise AssertionError("requests did not finish")


@pytest.fixture(scope="module", params=["llama", "gpt2", "qwen2", "mistral", "gemma2"])
def family_bank(request):
    return request.param, bank_of(request.param)


def test_every_row_equals_itself_alone_whatever_joins_and_leaves(family_bank):
    """Requests of six adapters and the bare model join at different turns (a full batch makes
    some wait), prompts are prefilled in chunks (a budget of 7 tokens per step), rows leave at
    different lengths; mistral and gemma2 have a sliding window of 4, shorter than the rows."""
    family, bank = family_bank
    engine = ContinuousEngine(bank, Words(), EngineSettings(max_batch_size=4, max_batch_tokens=7))
    names = ["p3", None, "prompt4", "p5", "nat", "skip1", "prompt2", "p3", "skip1", None]
    reqs = [Request(name, prompt(2 + (3 * i) % 9, seed=i), max_new_tokens=3 + (5 * i) % 8, ignore_eos=True)
            for i, name in enumerate(names)]
    run(engine, {0: reqs[:2], 1: reqs[2:3], 3: reqs[3:6], 6: reqs[6:8], 11: reqs[8:]})
    for r in reqs:
        assert r.finish_reason == "length" and r.tokens == alone(bank, r), (family, r.adapter)
    assert max(engine.steps) == 4 and len(engine.prefills) >= 4


def test_a_cancelled_row_leaves_at_once_and_the_others_are_unchanged(family_bank):
    family, bank = family_bank
    engine = ContinuousEngine(bank, Words(), EngineSettings(max_batch_tokens=64))
    keep = [Request("p5", prompt(5, 1), 12, ignore_eos=True), Request("prompt4", prompt(3, 2), 12, ignore_eos=True)]
    gone = Request("p3", prompt(4, 3), 12, ignore_eos=True)
    for r in (*keep, gone):
        engine.submit(r)
    for _ in range(4):
        engine.turn()
    so_far = len(gone.tokens)
    engine.cancel(gone)
    engine.turn()
    assert gone.finish_reason == "cancelled" and len(gone.tokens) == so_far
    assert engine.steps[-1] == 2  # the step after the cancellation ran without it
    run(engine, {0: []})
    for r in keep:
        assert r.tokens == alone(bank, r)


def test_faults_stay_with_their_request():
    """A NaN adapter (sampling and greedy) and an adapter unloaded while its request waits fail
    those requests only; the others finish as alone."""
    bank = bank_of("llama")
    bank.add("nan", adapters("llama")["p5"])
    for t in bank.adapters["nan"].kvs.values():
        t.fill_(float("nan"))
    engine = ContinuousEngine(bank, Words(), EngineSettings(max_batch_size=2))
    good = [Request("p3", prompt(4, 4), 6, ignore_eos=True), Request(None, prompt(3, 5), 6, ignore_eos=True)]
    nan_sampled = Request("nan", prompt(4, 6), 6, temperature=0.8, seed=1)
    nan_greedy = Request("nan", prompt(4, 7), 6)
    unloaded = Request("prompt4", prompt(4, 8), 6)
    for r in (good[0], nan_sampled, nan_greedy, unloaded, good[1]):
        engine.submit(r)
    bank.remove("prompt4")  # while its request waits behind a full batch
    run(engine, {0: []})
    for r in (nan_sampled, nan_greedy):
        assert r.finish_reason == "error" and r.tokens == [] and isinstance(r.error, NonFiniteLogits)
    assert unloaded.finish_reason == "error" and isinstance(unloaded.error, UnknownAdapterError)
    for r in good:
        assert r.finish_reason == "length" and r.tokens == alone(bank, r)


def test_context_length_is_checked_when_a_request_is_submitted():
    """GPT-2 has 128 learned positions in the tiny config; a 5-slot shifted prefix moves the prompt."""
    bank = bank_of("gpt2")
    engine = ContinuousEngine(bank, Words(), EngineSettings())
    engine.submit(Request("p5", prompt(60, 0), 63))  # 5 + 60 + 63 = 128 fits
    with pytest.raises(ContextTooLong, match="needs 129 positions.*128"):
        engine.submit(Request("p5", prompt(60, 0), 64))
    with pytest.raises(ContextTooLong):
        engine.submit(Request("prompt4", prompt(100, 0), 25))
    with pytest.raises(UnknownAdapterError):
        engine.submit(Request("missing", [5], 3))
    assert engine.queued == 1


def test_seeded_sampling_depends_on_the_request_only():
    bank = bank_of("llama")
    engine = ContinuousEngine(bank, Words(), EngineSettings())
    first = Request("p3", prompt(4, 1), 8, temperature=0.9, top_p=0.9, seed=7, ignore_eos=True)
    run(engine, {0: [first]})
    again = Request("p3", prompt(4, 1), 8, temperature=0.9, top_p=0.9, seed=7, ignore_eos=True)
    others = [Request(n, prompt(5, i), 8, temperature=1.0, ignore_eos=True) for i, n in enumerate(["p5", None, "p3"])]
    run(engine, {0: others[:2], 2: [again], 3: others[2:]})
    assert again.tokens == first.tokens


def test_penalties_and_logprobs_per_row():
    """A row's penalties change its own tokens only; log-probs are recorded for the rows asking."""
    bank = bank_of("llama")
    engine = ContinuousEngine(bank, Words(), EngineSettings())
    plain = Request("p3", prompt(3, 1), 10, ignore_eos=True)
    penalized = Request("p3", prompt(3, 1), 10, ignore_eos=True, frequency_penalty=2.0, logprobs=2)
    run(engine, {0: [plain, penalized]})
    assert plain.tokens == alone(bank, plain) and plain.token_logprobs == []
    assert len(set(penalized.tokens)) > len(set(plain.tokens))
    assert len(penalized.token_logprobs) == 10 and all(len(top) == 2 for _, top in penalized.token_logprobs)
    assert all(lp <= 0 and top[0][1] >= lp for lp, top in penalized.token_logprobs)


def test_a_long_prompt_is_prefilled_in_chunks_beside_running_rows():
    bank = bank_of("llama")
    engine = ContinuousEngine(bank, Words(), EngineSettings(max_batch_tokens=8))
    running = Request("p3", prompt(2, 1), 20, ignore_eos=True)
    engine.submit(running)
    engine.turn()
    engine.turn()
    long = Request(None, prompt(60, 2), 3, ignore_eos=True)
    engine.submit(long)
    before = len(engine.steps)
    for _ in range(5):
        engine.turn()
    assert len(engine.steps) == before + 5 and long.tokens == []  # decoding went on while 7-token chunks ran
    run(engine, {0: []})
    assert long.tokens == alone(bank, long) and running.tokens == alone(bank, running)


def test_queue_limit_and_engine_choice():
    bank = bank_of("llama")
    engine = make_engine(bank, Words(), EngineSettings(max_queue=1))
    assert isinstance(engine, ContinuousEngine)
    engine.submit(Request(None, [5], 2))
    with pytest.raises(Overloaded):
        engine.submit(Request(None, [5], 2))
    assert isinstance(make_engine(bank, Words(), EngineSettings(policy="mixed")), BatchingEngine)
    with pytest.raises(UnsupportedByEngine, match="decoder-only"):
        ContinuousEngine(AdapterBank(tiny_model("t5")), Words())


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_a_bf16_base_serves_what_it_generates_alone(family):
    """``serve --dtype bfloat16``: the base in bf16, the adapters fp32 (cast where they join
    attention); every row equals the request run alone on the same bf16 bank."""
    bank = AdapterBank(tiny_model(family).to(torch.bfloat16))
    for name, pm in adapters(family).items():
        bank.add(name, pm)
    engine = ContinuousEngine(bank, Words(), EngineSettings(max_batch_size=4, max_batch_tokens=9))
    assert engine.model.dtype == torch.bfloat16
    reqs = [Request(name, prompt(3 + i, seed=i), max_new_tokens=6, ignore_eos=True)
            for i, name in enumerate(["p3", "prompt4", None, "p5", "skip1"])]
    run(engine, {0: reqs[:3], 2: reqs[3:]})
    for r in reqs:
        assert r.tokens == alone(bank, r), (family, r.adapter)


def compiled_run(bank, monkeypatch, compile_fn):
    """Five requests of four adapters and the bare model on a compiled engine; returns the engine
    and the requests. ``compile_fn`` stands in for ``torch.compile`` (recording its calls)."""
    from prefixtune.runtime import compiled

    monkeypatch.setattr(compiled.torch, "compile", compile_fn)
    engine = ContinuousEngine(bank, Words(), EngineSettings(max_batch_size=4, max_batch_tokens=9, compile=True))
    reqs = [Request(name, prompt(3 + 2 * i, seed=i), max_new_tokens=4 + i, ignore_eos=True)
            for i, name in enumerate(["p3", "prompt4", None, "skip1", "p5"])]
    run(engine, {0: reqs[:3], 2: reqs[3:]})
    return engine, reqs


def test_compiled_decoding_equals_eager(monkeypatch, caplog):
    """``serve --compile``: prefill chunks and decoding steps of changing batch sizes through one
    compiled model give every row the tokens it gets alone, eagerly; nothing fell back."""
    import logging

    bank, calls, real = bank_of("llama"), [], torch.compile

    def counting(module, **kw):
        calls.append(kw)
        return real(module, **kw)

    caplog.set_level(logging.WARNING, logger="prefixtune")
    engine, reqs = compiled_run(bank, monkeypatch, counting)
    assert calls == [{"dynamic": True}] and engine.model.call.compiled
    assert not [r for r in caplog.records if "torch.compile failed" in r.getMessage()]
    for r in reqs:
        assert r.tokens == alone(bank, r), r.adapter


def test_a_compiled_step_that_fails_halfway_leaves_the_cache_as_it_was(monkeypatch, caplog):
    """The stand-in compiled model runs the real forward (appending to the KV cache) and then
    fails; the engine puts the cache back and reruns the step eagerly, so every row is still right."""
    import logging

    def halfway(module, **kw):
        def call(*a, **k):
            module(*a, **k)
            raise RuntimeError("inductor: lowering failed")
        return call

    bank = bank_of("llama")
    caplog.set_level(logging.WARNING, logger="prefixtune")
    engine, reqs = compiled_run(bank, monkeypatch, halfway)
    assert not engine.model.call.compiled
    assert len([r for r in caplog.records if "decoding goes on without compiling" in r.getMessage()]) == 1
    for r in reqs:
        assert r.tokens == alone(bank, r), r.adapter


def test_compile_is_for_the_continuous_engine_only():
    with pytest.raises(ValueError, match="continuous engine only, not --batching mixed"):
        EngineSettings(policy="mixed", compile=True)
