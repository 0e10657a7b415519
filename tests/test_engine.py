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
