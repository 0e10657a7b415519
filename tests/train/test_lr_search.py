"""``--lr auto``: the search picks a rate in the stable range (not one that barely moves, not one
that diverges), restores weights and random generators (a searched run trains exactly as a run
given the chosen rate), records what it tried, and is not repeated when the run resumes."""

from __future__ import annotations

import json
import math

import pytest
import torch

import prefixtune as pt
from prefixtune.core.config import ConfigError
from prefixtune.data.batching import Encoded
from prefixtune.methods.prefix import PrefixConfig
from prefixtune.train import lr_search
from prefixtune.train.config import TrainConfig
from prefixtune.train.loop import train
from prefixtune.train.lr_search import Searcher, candidates, search
from tiny import tiny_model


def copy_task(n=64, seed=0):
    """Rows ``a b c d SEP 7 8 9 10``: random inputs, the same answer, which a prefix learns in a few steps."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        src = torch.randint(3, 40, (4,), generator=g).tolist()
        ids = [1] + src + [50] + [7, 8, 9, 10]
        rows.append(Encoded(ids, [-100] * 6 + [7, 8, 9, 10]))
    return rows


def searcher(model, rows, batch=8):
    per = len(rows) // batch
    return Searcher(model, lambda s: rows[(s % per) * batch:(s % per + 1) * batch], "generation", 0, batch, 1.0, 0.0,
                    lambda: torch.autocast("cpu", enabled=False), True,
                    torch.device("cpu"))


def test_candidates_follow_the_method():
    assert candidates("prefix", PrefixConfig(reparameterization="mlp")) == [0.0003, 0.000949, 0.003, 0.00949, 0.03]
    assert candidates("prefix", PrefixConfig(reparameterization="direct"))[2] == 0.01
    assert candidates("full", object())[2] == 3e-5
    assert candidates("lora", object())[2] == 1e-3
    assert candidates("prompt", pt.PromptConfig(num_virtual_tokens=2, encoder="mlp"))[2] == 3e-3


def oracle(pm, s, rates, steps, probe_at):
    """Each rate trained ``steps`` steps from the same start, scored on the same probe (brute force)."""
    probe = [b for st in probe_at for b in s._tensors(s.batches(st))]
    init = [p.detach().clone() for p in pm.trainable_parameters()]
    scores = {}
    for lr in rates:
        with torch.no_grad():
            for p, v in zip(pm.trainable_parameters(), init, strict=True):
                p.copy_(v)
        scores[lr] = s.probe_loss(probe) if s.train_trial(lr, steps) else math.inf
    with torch.no_grad():
        for p, v in zip(pm.trainable_parameters(), init, strict=True):
            p.copy_(v)
    return scores


@pytest.mark.parametrize("family,reparam", [("llama", "mlp"), ("gpt2", "mlp"), ("llama", "direct")])
def test_the_search_picks_a_rate_an_exhaustive_sweep_ranks_near_the_top(family, reparam):
    """Rates from far too small to far too large: an exhaustive sweep trains each for 16 steps (the
    search's longest trials take 8); the search's choice is one of the sweep's two best, never a rate
    that barely moves or one that overshoots. The weights and random generators come back unchanged."""
    torch.manual_seed(0)
    pm = pt.wrap(tiny_model(family), pt.PrefixConfig(prefix_length=4, reparameterization=reparam, hidden_size=16))
    s = searcher(pm, copy_task())
    rates = [1e-4, 1e-2, 1e-1, 10.0, 100.0]
    before = [p.detach().clone() for p in pm.trainable_parameters()]
    rng = torch.get_rng_state()
    trials = search(s, rates, search_steps=38)
    for p, b in zip(pm.trainable_parameters(), before, strict=True):
        assert torch.equal(p, b) and p.grad is None
    assert torch.equal(torch.get_rng_state(), rng)
    swept = oracle(pm, s, rates, 16, (16, 17))
    ranked = sorted(rates, key=swept.get)
    assert swept[ranked[-1]] > swept[ranked[0]] + 0.1  # the range holds bad rates
    assert trials.chosen in ranked[:2], (trials.chosen, swept)


def test_a_rate_that_overflows_is_a_divergence_not_a_crash():
    pm = pt.wrap(tiny_model("llama"), pt.PrefixConfig(prefix_length=4, reparameterization="direct"))
    trials = search(searcher(pm, copy_task()), [1e-2, 1e37], search_steps=19)
    assert trials.chosen == 1e-2 and [r["probe_loss"]["1e+37"] for r in trials.rounds][1:] == [None, None]


def test_successive_halving_keeps_the_better_half_each_round():
    pm = pt.wrap(tiny_model("gpt2"), pt.PrefixConfig(prefix_length=4, reparameterization="direct", init_std=0.02))
    trials = search(searcher(pm, copy_task()), [1e-4, 1e-3, 1e-2, 3e-2, 1e-1], search_steps=38)
    assert trials.unit == 2 and [r["steps"] for r in trials.rounds] == [2, 4, 8]
    assert [len(r["probe_loss"]) for r in trials.rounds] == [5, 3, 2]
    for earlier, later in zip(trials.rounds, trials.rounds[1:]):
        ranked = sorted(earlier["probe_loss"], key=lambda k: (earlier["probe_loss"][k] or math.inf, float(k)))
        assert sorted(later["probe_loss"]) == sorted(ranked[:len(later["probe_loss"])])
    last = trials.rounds[-1]["probe_loss"]
    assert trials.chosen == float(min(last, key=lambda k: (last[k], float(k))))


def test_every_candidate_diverging_is_an_error_that_says_what_to_do():
    pm = pt.wrap(tiny_model("llama"), pt.PrefixConfig(prefix_length=2, reparameterization="direct"))
    with pytest.raises(RuntimeError, match="every candidate rate .* diverged.*give --lr"):
        search(searcher(pm, copy_task()), [1e37, 2e37], search_steps=19)


def run_config(tiny_dir, e2e_dir, out, **kw):
    base = dict(model=str(tiny_dir), task="e2e", data=str(e2e_dir), steps=4, batch_size=4, eval_every=0,
                save_every=2, eval_limit=2, max_new_tokens=4, out=str(out), lr_search_steps=19,
                adapter={"prefix_length": 4, "hidden_size": 16})
    return TrainConfig(**(base | kw))


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_run_with_lr_auto_trains_as_a_run_given_the_chosen_rate(tiny_dir, e2e_dir, tmp_path):
    auto = train(run_config(tiny_dir, e2e_dir, tmp_path / "auto"))
    record = json.loads((tmp_path / "auto" / lr_search.FILE).read_text())
    assert record["chosen"] == auto["lr"] and record["chosen"] in record["candidates"]
    assert [r["steps"] for r in record["rounds"]] == [1, 2, 4] and record["probe_examples"] == 8
    given = train(run_config(tiny_dir, e2e_dir, tmp_path / "given", lr=auto["lr"]))
    assert not (tmp_path / "given" / lr_search.FILE).exists() and given["lr"] == auto["lr"]
    assert [r.get("train_loss") for r in rows(tmp_path / "auto")] == [r.get("train_loss") for r in rows(tmp_path / "given")]


def test_a_resumed_run_reads_its_rate_instead_of_searching_again(tiny_dir, e2e_dir, tmp_path, monkeypatch):
    cfg = run_config(tiny_dir, e2e_dir, tmp_path / "run")
    train(cfg, stop_after=3)
    chosen = json.loads((tmp_path / "run" / lr_search.FILE).read_text())["chosen"]
    monkeypatch.setattr(lr_search, "search", lambda *a, **k: pytest.fail("searched again"))
    assert train(cfg)["lr"] == chosen


@pytest.mark.parametrize("value,message", [("fast", "lr must be a float or one of auto, got 'fast'"),
                                           (-1.0, "lr must be a finite number >= 0"),
                                           (math.nan, "lr must be a finite number >= 0")])
def test_a_bad_rate_is_refused(value, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(lr=value)
