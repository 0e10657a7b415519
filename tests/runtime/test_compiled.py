"""``MaybeCompiled``: the model's own errors are raised, not blamed on compiling; off means the module
itself; a failed compiled call with side effects is undone before its eager rerun. (Compiled training
equals eager: tests/train/test_compiled_training.py; compiled decoding: tests/serve/test_continuous.py.)"""

from __future__ import annotations

import logging

import pytest
import torch

from prefixtune.runtime import compiled
from prefixtune.runtime.compiled import MaybeCompiled


def test_an_error_of_the_model_itself_is_raised_not_swallowed(monkeypatch):
    class Bad(torch.nn.Module):
        def forward(self, x):
            raise ValueError("input_ids has the wrong shape")

    monkeypatch.setattr(compiled.torch, "compile", lambda module, **kw: module)
    step = MaybeCompiled(Bad(), enabled=True)
    with pytest.raises(ValueError, match="wrong shape"):
        step(torch.zeros(1))
    assert step.compiled  # the compiled path was not blamed for the model's error


def test_compile_off_calls_the_module_itself():
    module = torch.nn.Linear(2, 2)
    step = MaybeCompiled(module, enabled=False)
    assert not step.compiled and torch.equal(step(torch.ones(1, 2)), module(torch.ones(1, 2)))


def test_a_failed_compiled_call_is_undone_then_run_eagerly_once(monkeypatch, caplog):
    log = []

    class Appends(torch.nn.Module):
        def forward(self, x):
            log.append("ran")
            return x + 1

    def halfway(module, **kw):
        def call(*a, **k):
            module(*a, **k)  # a side effect happened ...
            raise RuntimeError("inductor: lowering failed")  # ... then the compiled call failed
        return call

    monkeypatch.setattr(compiled.torch, "compile", halfway)
    caplog.set_level(logging.WARNING, logger="prefixtune")
    step = MaybeCompiled(Appends(), enabled=True, what="decoding")
    out = step.call(lambda: log.append("undone"), torch.zeros(1))
    assert torch.equal(out, torch.ones(1)) and log == ["ran", "undone", "ran"]
    assert not step.compiled and step.failure == "RuntimeError: inductor: lowering failed"
    assert [r.getMessage() for r in caplog.records] == [
        "--compile: torch.compile failed (RuntimeError: inductor: lowering failed); decoding goes on without compiling"]
    step.call(lambda: log.append("undone"), torch.zeros(1))  # eager from now on: nothing to undo
    assert log == ["ran", "undone", "ran", "ran"]
