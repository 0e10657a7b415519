"""``--compile``: the compiled training step gives eager's losses and adapter (batches of different
lengths, so the dynamic-shape graph is exercised), and a compile that fails falls back to eager."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from prefixtune.runtime import compiled
from prefixtune.train.config import TrainConfig
from prefixtune.train.loop import train


def run_config(tiny_dir, e2e_dir, out, **kw):
    base = dict(model=str(tiny_dir), task="e2e", data=str(e2e_dir), steps=3, batch_size=4, lr=1e-2, eval_every=0,
                save_every=3, eval_limit=2, max_new_tokens=4, out=str(out),
                adapter={"prefix_length": 4, "hidden_size": 16, "dropout": 0.0})
    return TrainConfig(**(base | kw))


def losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in rows if "train_loss" in r], [r["grad_norm"] for r in rows if "grad_norm" in r]


def adapter(run):
    from safetensors.torch import load_file

    return {k: v for f in sorted((run / "adapter").glob("*.safetensors")) for k, v in load_file(f).items()}


def test_compiled_training_equals_eager(tiny_dir, e2e_dir, tmp_path, caplog, monkeypatch):
    calls = []
    real = torch.compile

    def counting(module, **kw):
        calls.append(kw)
        return real(module, **kw)

    monkeypatch.setattr(compiled.torch, "compile", counting)
    caplog.set_level(logging.WARNING, logger="prefixtune")
    train(run_config(tiny_dir, e2e_dir, tmp_path / "eager"))
    assert calls == []
    train(run_config(tiny_dir, e2e_dir, tmp_path / "compiled", compile=True))
    assert calls == [{"dynamic": True}]
    assert not [r for r in caplog.records if "torch.compile failed" in r.getMessage()]
    (eager_loss, eager_norm), (comp_loss, comp_norm) = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert len(eager_loss) == 3
    assert comp_loss == pytest.approx(eager_loss, rel=1e-5)
    assert comp_norm == pytest.approx(eager_norm, rel=1e-4)
    a, b = adapter(tmp_path / "eager"), adapter(tmp_path / "compiled")
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_a_compile_that_fails_falls_back_to_eager(tiny_dir, e2e_dir, tmp_path, monkeypatch, caplog):
    def broken(module, **kw):
        def call(*a, **k):
            raise RuntimeError("inductor: no C++ compiler found")
        return call

    monkeypatch.setattr(compiled.torch, "compile", broken)
    caplog.set_level(logging.WARNING, logger="prefixtune")
    train(run_config(tiny_dir, e2e_dir, tmp_path / "eager"))
    train(run_config(tiny_dir, e2e_dir, tmp_path / "fallback", compile=True))
    warned = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warned) == 1 and "RuntimeError: inductor: no C++ compiler found" in warned[0]
    assert losses(tmp_path / "fallback") == losses(tmp_path / "eager")
