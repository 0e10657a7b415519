"""Prefix initialization from real activations (Li & Liang 2021, section 7.2).

The prefix starts as the frozen model's own keys/values for a few real tokens (a task text such
as ``"table-to-text:"``, or random vocabulary tokens): at step 0 each layer's prefix K/V equal
the K/V the model computes for those tokens at positions ``0..l-1``. An MLP prefix is first
fitted (Adam on the squared error) so that its output matches them.
"""

from __future__ import annotations

from typing import Any

import torch

from prefixtune.core.config import ConfigError
from prefixtune.core.prefix import DirectPrefix, MLPPrefix, PrefixStack
from prefixtune.methods.prefix import PrefixConfig
from prefixtune.runtime.adapters import AdapterRuntime


def init_token_ids(config: PrefixConfig, tokenizer: Any, vocab_size: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """``(l,)`` token ids: ``init_text`` repeated or cut to ``l``, or random vocabulary ids."""
    l = config.prefix_length
    if config.init == "vocab":
        return torch.randint(0, min(vocab_size, 5000), (l,), generator=generator)
    if tokenizer is None:
        raise ConfigError("init='text' needs the model's tokenizer: pass tokenizer= to wrap()")
    ids = list(tokenizer(config.init_text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ConfigError(f"init_text {config.init_text!r} tokenizes to nothing")
    return torch.tensor((ids * (l // len(ids) + 1))[:l])


@torch.no_grad()
def activation_kv(runtime: AdapterRuntime, layers: dict[str, tuple[int, ...]], ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The frozen model's K/V for token ``ids`` ``(l,)``, per location ``(len(layers[loc]), 2, H_kv, l, d)``."""
    captured = runtime.capture_kv(ids)
    return {loc: torch.stack([torch.stack(captured[(loc, layer)]) for layer in index]).float()
            for loc, index in layers.items()}


def fit_mlp(encoder: MLPPrefix, target: torch.Tensor, steps: int = 300, lr: float = 1e-3) -> float:
    """Fit an MLP prefix's output to ``target`` ``(layers, 2, H_kv, l, d)``; returns the relative error."""
    was = encoder.training
    encoder.eval()  # no dropout while fitting
    params = [p for p in encoder.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    scale = target.pow(2).mean()
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            loss = (encoder() - target).pow(2).mean() / scale
            loss.backward()
            opt.step()
    encoder.train(was)
    with torch.no_grad():
        return float(((encoder.eval()() - target).norm() / target.norm()).item())


def initialize_from_activations(runtime: AdapterRuntime, prefix: PrefixStack, config: PrefixConfig,
                                tokenizer: Any = None, fit_steps: int = 300) -> dict[str, float]:
    """Set ``prefix`` to the model's own K/V for the init tokens; returns per-location fit error."""
    vocab = runtime.base_model.get_input_embeddings().weight.shape[0]
    ids = init_token_ids(config, tokenizer, vocab)
    targets = activation_kv(runtime, prefix.layers, ids)
    errors = {}
    for loc, target in targets.items():
        enc = prefix.encoders[loc]
        if isinstance(enc, DirectPrefix):
            with torch.no_grad():
                enc.kv.copy_(target)
            errors[loc] = 0.0
        else:
            errors[loc] = fit_mlp(enc, target, steps=fit_steps)
    return errors
