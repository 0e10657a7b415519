"""Property-based fuzzing of training options on a tiny model: whatever the rates, clipping and
initialisation scales, a run ends in a finite adapter, a ``ConfigError`` before anything is
written, or a ``DivergedError`` with no ``best/`` and no ``result.json``; never another exception,
never a NaN or infinite weight saved."""

from __future__ import annotations

import json

import torch
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from prefixtune.core.config import ConfigError
from prefixtune.train.guard import DivergedError
from prefixtune.train.loop import train
from test_train import config

FUZZ = settings(max_examples=16, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
# (no shrinking: every example trains; a failure is reported as drawn)
scale = st.sampled_from([0.0, 1e-8, 1e-3, 0.02, 1.0, 1e3, 1e30, float("inf"), float("nan"), -0.5])
rate = st.sampled_from([1e-8, 1e-4, 1e-2, 1.0, 1e3, 1e6, 1e30, 1e300])
adapter = st.one_of(
    st.fixed_dictionaries({"method": st.just("prefix"), "prefix_length": st.just(2), "hidden_size": st.just(8),
                           "reparameterization": st.sampled_from(["direct", "mlp"]), "init_std": scale}),
    st.fixed_dictionaries({"method": st.just("prompt"), "num_virtual_tokens": st.just(2), "init_range": scale}),
)
_runs = iter(range(10**6))


@FUZZ
@given(adapter=adapter, lr=rate, max_grad_norm=st.sampled_from([0.0, 1e-6, 1.0, 1e30]),
       warmup_ratio=st.sampled_from([0.0, 0.5]), weight_decay=st.sampled_from([0.0, 0.1, 1e3, 1e6]))
@example(adapter={"method": "prefix", "prefix_length": 2, "hidden_size": 8, "reparameterization": "direct",
                  "init_std": 0.02}, lr=1e30, max_grad_norm=0.0, warmup_ratio=0.0, weight_decay=0.0)  # diverges
@example(adapter={"method": "prompt", "num_virtual_tokens": 2, "init_range": float("nan")}, lr=1e-2,
         max_grad_norm=1.0, warmup_ratio=0.0, weight_decay=0.0)  # once a RuntimeError from uniform_
def test_any_rates_and_scales_end_in_a_finite_adapter_or_a_documented_error(
        tiny_dir, e2e_dir, tmp_path, adapter, lr, max_grad_norm, warmup_ratio, weight_decay):
    run = tmp_path / f"run{next(_runs)}"
    method = adapter.pop("method")
    try:
        cfg = config(tiny_dir, e2e_dir, run, steps=3, eval_every=0, save_every=2, max_new_tokens=2, eval_limit=2,
                     test_split=None, method=method, adapter=adapter, lr=lr, max_grad_norm=max_grad_norm,
                     warmup_ratio=warmup_ratio, weight_decay=weight_decay)
        train(cfg)
    except ConfigError as e:
        event("ConfigError")
        assert str(e).strip() and not (run / "adapter").exists()
        return
    except DivergedError as e:
        event("DivergedError")
        assert "diverged at step" in str(e)
        assert not (run / "best").exists() and not (run / "result.json").exists()
        return
    event("finished")
    for folder in ("adapter", "best"):
        for name, t in load_file(str(run / folder / "adapter.safetensors")).items():
            assert torch.isfinite(t).all(), f"{folder}/{name} holds a non-finite value"
    assert json.loads((run / "result.json").read_text())["steps_done"] == 3
