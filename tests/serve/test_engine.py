"""The serving engine's batching policy and per-row bookkeeping, without a server or a model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from prefixtune.serve.engine import BatchingEngine, EngineSettings, Overloaded, Request, ShuttingDown


class Words:
    """Token ``i`` decodes to ``word{i} ``; 0 is EOS and decodes to nothing."""

    eos_token_id = 0
    pad_token_id = 0

    def decode(self, ids, skip_special_tokens=True):
        return "".join(f"w{i} " for i in ids if i != 0)


def engine(**settings) -> BatchingEngine:
    return BatchingEngine(SimpleNamespace(device="cpu"), Words(), EngineSettings(batch_wait_ms=0, **settings))


def req(adapter, temperature=0.0, **kw) -> Request:
    return Request(adapter, [1, 2], max_new_tokens=kw.pop("max_new_tokens", 4), temperature=temperature, **kw)


@pytest.mark.parametrize("policy, want", [("mixed", ["a", "b", "a", None]), ("same", ["a", "a"]), ("none", ["a"])])
def test_take_follows_the_batching_policy(policy, want):
    """Mixed: every adapter (and the bare model) in one batch; same: only the first request's adapter;
    none: one at a time. A request that samples never joins greedy ones."""
    e = engine(policy=policy, max_batch_size=8)
    for r in (req("a"), req("b"), req("a", temperature=0.7), req("a"), req(None)):
        e.submit(r)
    batch = e._take()
    assert [r.adapter for r in batch] == want
    assert all(r.temperature == 0.0 for r in batch) and e._busy == 1
    assert e.queued == 5 - len(want)


def test_take_respects_max_batch_size_and_keeps_order():
    e = engine(max_batch_size=2)
    rs = [req(name) for name in "abc"]
    for r in rs:
        e.submit(r)
    assert e._take() == rs[:2] and e._take() == rs[2:] and e._busy == 2


def test_queue_limit_and_shutdown():
    e = engine(max_queue=2)
    e.submit(req("a"))
    e.submit(req("a"))
    with pytest.raises(Overloaded, match="2"):
        e.submit(req("a"))
    e._stopping = True
    with pytest.raises(ShuttingDown):
        e.submit(req("a"))
    assert e.queued == 2


def test_advance_stops_at_eos_token_limit_and_stop_string():
    e = engine()
    at_eos = req("a", max_new_tokens=9)
    e._advance(at_eos, [5, 6, 0, 7])
    assert (at_eos.tokens, at_eos.finish_reason, at_eos.text) == ([5, 6], "stop", "w5 w6 ")
    ignoring = req("a", max_new_tokens=3, ignore_eos=True)
    e._advance(ignoring, [5, 0, 7, 8])
    assert (ignoring.tokens, ignoring.finish_reason) == ([5, 0, 7], "length")
    stopped = req("a", max_new_tokens=9, stop=["w7"])
    e._advance(stopped, [5])
    e._advance(stopped, [5, 6, 7, 8])  # the row so far: only the new tokens count
    assert (stopped.tokens, stopped.finish_reason, stopped.text) == ([5, 6, 7], "stop", "w5 w6 ")


class FakeBank:
    """Records generate()'s arguments and returns the inputs followed by scripted new tokens per row."""

    device = "cpu"

    def __init__(self, new_tokens):
        self.new_tokens, self.calls = new_tokens, []

    def generate(self, adapters, input_ids, attention_mask, **kwargs):
        import torch

        self.calls.append({"adapters": adapters, "input_ids": input_ids, "attention_mask": attention_mask, **kwargs})
        new = torch.tensor(self.new_tokens[: len(adapters)])
        return torch.cat([input_ids, new], 1)


def test_generate_pads_left_and_passes_one_budget_and_the_sampling_settings():
    import torch

    bank = FakeBank([[5, 6, 7], [8, 9, 0]])
    e = BatchingEngine(bank, Words(), EngineSettings())
    short = Request("a", [3], max_new_tokens=2, temperature=0.5, top_p=0.9)
    long = Request(None, [3, 4, 5], max_new_tokens=3, temperature=0.5, top_p=0.9)
    e._generate([short, long])
    call = bank.calls[0]
    assert call["adapters"] == ["a", None]
    assert torch.equal(call["input_ids"], torch.tensor([[0, 0, 3], [3, 4, 5]]))
    assert torch.equal(call["attention_mask"], torch.tensor([[0, 0, 1], [1, 1, 1]]))
    assert call["max_new_tokens"] == 3 and call["eos_token_id"] is None and call["pad_token_id"] == 0
    assert (call["do_sample"], call["temperature"], call["top_p"], call["top_k"]) == (True, 0.5, 0.9, 0)
    assert (short.tokens, short.finish_reason) == ([5, 6], "length")
    assert (long.tokens, long.finish_reason) == ([8, 9], "stop")  # 0 is EOS
    greedy = Request("a", [3], max_new_tokens=5)
    e._generate([greedy])
    assert bank.calls[1]["do_sample"] is False and "temperature" not in bank.calls[1]
    assert (greedy.tokens, greedy.finish_reason) == ([5, 6, 7], "length")  # generate ended before 5: length
    assert e.batches == [2, 1]


def test_row_state_reads_new_tokens_from_the_right_place():
    import torch

    from prefixtune.serve.engine import _RowState

    e = engine()
    rows = [req("a", max_new_tokens=9), req("b", max_new_tokens=1)]
    state = _RowState(e, rows, start=2)
    done = state(torch.tensor([[1, 2, 5], [1, 2, 6]]), None)
    assert done.tolist() == [False, True] and rows[0].tokens == [5] and rows[1].finish_reason == "length"
    assert state(torch.tensor([[1, 2, 5, 7], [1, 2, 6, 9]]), None).tolist() == [False, True]
    assert rows[0].tokens == [5, 7] and rows[1].tokens == [6]


class Bytes:
    """Token 9 is the first half of a two-token character: alone it decodes to U+FFFD; 9 then 10 is 'é'.
    Token 0 is EOS (kept out unless skip_special_tokens=False)."""

    eos_token_id = pad_token_id = 0

    def decode(self, ids, skip_special_tokens=True):
        out, i = "", 0
        while i < len(ids):
            t = ids[i]
            if t == 9:
                out += "é" if i + 1 < len(ids) and ids[i + 1] == 10 else "\ufffd"
                i += 2 if out.endswith("é") else 1
                continue
            out += "" if (t == 0 and skip_special_tokens) else ("</s>" if t == 0 else f"w{t} ")
            i += 1
        return out


def streamed(requests_and_rows, tokenizer=None, error=None):
    """Run _advance/_finish for each (request, row) on a live event loop; returns what each stream got."""
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        e = BatchingEngine(SimpleNamespace(device="cpu"), tokenizer or Words(), EngineSettings())
        for r, _ in requests_and_rows:
            r.loop, r.stream, r.done = loop, asyncio.Queue(), loop.create_future()
        for r, row in requests_and_rows:
            e._advance(r, row)
            if r.finish_reason is None:
                e._finish(r, "error" if error else "length", error=error)
        loop.run_until_complete(asyncio.sleep(0.01))
        out = []
        for r, _ in requests_and_rows:
            chunks = []
            while not r.stream.empty():
                chunks.append(r.stream.get_nowait())
            out.append(chunks)
        return out
    finally:
        loop.close()


def test_streams_get_each_new_piece_once_then_the_end():
    r = req("a", max_new_tokens=9, stop=["", "w7"])  # an empty stop string never matches
    (chunks,) = streamed([(r, [5, 6, 7, 8])])
    assert chunks == ["w5 ", "w6 ", None] and r.text == "w5 w6 " and r.done.result() is r


def test_a_character_split_across_tokens_is_held_back_until_complete():
    r = req("a", max_new_tokens=9)
    (chunks,) = streamed([(r, [5, 9, 10, 6])], tokenizer=Bytes())
    assert chunks == ["w5 ", "é", "w6 ", None] and r.text == "w5 éw6 "


def test_finish_flushes_the_final_text_and_ignore_eos_keeps_special_tokens_out():
    r = req("a", max_new_tokens=3, ignore_eos=True)
    (chunks,) = streamed([(r, [5, 0, 6])], tokenizer=Bytes())
    assert "".join(c for c in chunks if c) == r.text == "w5 w6 " and chunks[-1] is None
    cut = req("a", max_new_tokens=9)
    (chunks,) = streamed([(cut, [5, 9])], tokenizer=Bytes())  # ends on half a character
    assert chunks == ["w5 ", "\ufffd", None] and cut.finish_reason == "length"


def test_an_error_reaches_the_request_future():
    r = req("a", max_new_tokens=9)
    boom = RuntimeError("adapter unloaded")
    streamed([(r, [5])], error=boom)
    assert r.finish_reason == "error" and r.done.exception() is boom


def test_empty_stop_strings_never_match_and_special_tokens_never_reach_the_text():
    only_empty = req("a", max_new_tokens=2, stop=[""])
    (chunks,) = streamed([(only_empty, [5, 6])])
    assert chunks == ["w5 ", "w6 ", None] and only_empty.finish_reason == "length"
    eos_last = req("a", max_new_tokens=3, ignore_eos=True)
    (chunks,) = streamed([(eos_last, [5, 6, 0])], tokenizer=Bytes())
    assert eos_last.text == "w5 w6 " and "".join(c for c in chunks if c) == "w5 w6 "


def test_a_leading_split_character_is_not_streamed_half_done():
    r = req("a", max_new_tokens=9)
    (chunks,) = streamed([(r, [9, 10, 5])], tokenizer=Bytes())
    assert chunks == ["é", "w5 ", None]


def test_a_seeded_request_runs_alone_and_never_joins_a_batch():
    e = engine(max_batch_size=8)
    rs = [req("a"), req("a", seed=1), req("a"), req("a", seed=1)]
    for r in rs:
        e.submit(r)
    assert e._take() == [rs[0], rs[2]]
    assert e._take() == [rs[1]] and e._take() == [rs[3]]
