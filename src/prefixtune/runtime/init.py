"""Prefix initialization from real activations (Li & Liang 2021, section 7.2).

The prefix starts as the frozen model's own keys/values for a few real tokens (a task text such
as ``"table-to-text:"``, or random vocabulary tokens): at step 0 each layer's prefix K/V equal
the K/V the model computes for those tokens at positions ``0..l-1``. An MLP prefix is first
fitted (Adam on the squared error) so that its output matches them.
"""

from __future__ import annotations

from typing import Any

import torch

from prefixtune.core.batch import PrefixBatch
from prefixtune.core.config import ConfigError, PrefixConfig
from prefixtune.core.prefix import DirectPrefix, MLPPrefix


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
def activation_kv(model: Any, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The frozen model's K/V for token ``ids`` ``(l,)``, per location ``(layers, 2, H_kv, l, d)``.

    Encoder-decoder models read ``ids`` as both the encoder input and the decoder input; the
    cross-attention K/V are then those of the encoder's output for ``ids``.
    """
    inj = model.injection
    device = next(model.base_model.parameters()).device
    ids = ids.to(device)[None]
    capture: dict = {}
    batch = PrefixBatch({}, torch.zeros(1, dtype=torch.long, device=device), capture=capture)
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if inj.is_encoder_decoder:
        kwargs["decoder_input_ids"] = ids
    with inj.active(batch):
        model.base_model(**inj.inputs(batch, False, kwargs))
    out = {}
    for loc, layers in model.prefix.layers.items():
        kv = [torch.stack([capture[inj.modules[(loc, layer)]][0][0], capture[inj.modules[(loc, layer)]][1][0]])
              for layer in layers]  # each (2, H_kv, l, d)
        out[loc] = torch.stack(kv).float()
    return out


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


def initialize_from_activations(model: Any, config: PrefixConfig, tokenizer: Any = None,
                                fit_steps: int = 300) -> dict[str, float]:
    """Set ``model.prefix`` to the model's own K/V for the init tokens; returns per-location fit error."""
    vocab = model.base_model.get_input_embeddings().weight.shape[0]
    ids = init_token_ids(config, tokenizer, vocab)
    targets = activation_kv(model, ids)
    errors = {}
    for loc, target in targets.items():
        enc = model.prefix.encoders[loc]
        if isinstance(enc, DirectPrefix):
            with torch.no_grad():
                enc.kv.copy_(target)
            errors[loc] = 0.0
        else:
            errors[loc] = fit_mlp(enc, target, steps=fit_steps)
    return errors
