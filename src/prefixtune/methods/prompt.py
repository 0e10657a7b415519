"""Prompt tuning (Lester et al. 2021) and P-tuning (Liu et al. 2021): trainable input vectors,
optionally with a classification head."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch

from prefixtune.core.config import ComposedConfig, ConfigError, check_range, option
from prefixtune.core.layout import ModelLayout
from prefixtune.core.parts import Parts
from prefixtune.core.prompt import ENCODERS, Encoder, PromptEmbedding
from prefixtune.methods.head import HeadConfig

PromptInit = Literal["random", "vocab", "text", "labels"]
INITS: tuple[str, ...] = get_args(PromptInit)


@dataclass(init=False)
class PromptConfig(ComposedConfig):
    """Configuration of an input prompt (each field's help is beside it).

    ``head`` is None for generation/LM use; a :class:`HeadConfig` adds a classification head on
    the last hidden states of the real tokens (the prompt's positions are left out), trained with
    the prompt. Its fields may be given flat: ``num_labels``, ``pooling`` (default ``"mean"``
    here), ``head_dropout``; any of them adds the head.
    """

    num_virtual_tokens: int = option(20, "number of prompt vectors l")
    init: PromptInit = option(
        "random", "random: uniform in +-init_range; vocab: embeddings of tokens sampled from the vocabulary; text: "
                  "embeddings of init_text, repeated or cut to l; labels: embeddings of label_words first, the rest "
                  "sampled from the vocabulary (Lester et al.'s best init for classification)")
    init_text: str | None = option(None, "the text for init=text")
    label_words: tuple[str, ...] = option((), "the class-label words for init=labels")
    init_range: float = option(0.5, "half-width of the uniform random init")
    encoder: Encoder = option("none", "none: prompt tuning; mlp or lstm: P-tuning's prompt encoder")
    encoder_hidden_size: int = option(512, "hidden width of the prompt encoder")
    dropout: float = option(0.0, "dropout on the prompt vectors during training")
    head: HeadConfig | None = option(None, "a classification head (None: none, for generation/LM use)")
    method: str = field(default="prompt", init=False)

    SUBCONFIGS = {"head": HeadConfig}
    ALIASES = {"head_dropout": ("head", "dropout")}
    SUB_DEFAULTS = {"head": {"pooling": "mean"}}

    def validate(self) -> None:
        self.label_words = tuple(self.label_words)
        if isinstance(self.num_virtual_tokens, bool) or not isinstance(self.num_virtual_tokens, int) \
                or self.num_virtual_tokens < 1:
            raise ConfigError(f"num_virtual_tokens must be a positive integer, got {self.num_virtual_tokens!r}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {INITS}, got {self.init!r}")
        if self.init == "text" and not self.init_text:
            raise ConfigError("init='text' needs init_text (e.g. 'Classify the sentiment:')")
        if self.init == "labels" and not self.label_words:
            raise ConfigError("init='labels' needs label_words (e.g. ('negative', 'positive'))")
        if self.encoder not in ENCODERS:
            raise ConfigError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        check_range("init_range", self.init_range, low=0.0)

    @property
    def prefix_config(self) -> None:
        return None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PromptConfig":
        data = dict(data)
        if "num_labels" in data and data["num_labels"] is None:  # the flat form saved before heads were composed
            for key in ("num_labels", "pooling", "head_dropout"):
                data.pop(key, None)
        return super().from_dict(data)


def prompt_embedding(config: PromptConfig, d_model: int) -> PromptEmbedding:
    """A fresh (randomly initialized) prompt for ``config`` on a model of width ``d_model``."""
    return PromptEmbedding(config.num_virtual_tokens, d_model, config.encoder, config.encoder_hidden_size,
                           config.dropout, config.init_range)


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    if tokenizer is None:
        raise ConfigError("this prompt init needs the model's tokenizer: pass tokenizer= to wrap()")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(f"{text!r} tokenizes to nothing")
    return list(ids)


@torch.no_grad()
def initial_vectors(config: PromptConfig, embeddings: torch.Tensor, tokenizer: Any = None,
                    generator: torch.Generator | None = None) -> torch.Tensor | None:
    """The prompt's starting vectors ``(l, d)`` from the model's input ``embeddings`` ``(V, d)`` per
    ``config.init`` (None for ``"random"``). ``"text"`` and ``"labels"`` need the tokenizer. With a
    prompt encoder the vectors are the encoder's *input*, as in P-tuning."""
    l = config.num_virtual_tokens
    vocab = embeddings.shape[0]

    def sampled(n: int) -> torch.Tensor:
        ids = torch.randint(0, min(vocab, 5000), (n,), generator=generator)
        return embeddings[ids]

    if config.init == "random":
        return None
    if config.init == "vocab":
        return sampled(l)
    if config.init == "text":
        ids = _token_ids(tokenizer, config.init_text)
        return embeddings[torch.tensor((ids * (l // len(ids) + 1))[:l])]
    rows = [embeddings[torch.tensor(_token_ids(tokenizer, w))].mean(0) for w in config.label_words][:l]
    return torch.cat([torch.stack(rows), sampled(l - len(rows))]) if len(rows) < l else torch.stack(rows)


def build(config: PromptConfig, layout: ModelLayout, input_embeddings: torch.Tensor | None = None,
          tokenizer: Any = None, initialize: bool = True) -> Parts:
    """The parts of prompt tuning / P-tuning: a prompt, and a head when ``config.head`` is set.

    Args:
        input_embeddings: the model's input embedding weight ``(V, d)`` (inits other than
            ``"random"`` sample or copy token embeddings).
        initialize: apply the configured init (off when a checkpoint's tensors follow).
    """
    prompt = prompt_embedding(config, layout.d_model)
    if initialize and config.init != "random":
        if input_embeddings is None:
            raise ConfigError(f"prompt init {config.init!r} needs the model's input embeddings")
        vectors = initial_vectors(config, input_embeddings.detach().float(), tokenizer)
        prompt.embedding.data.copy_(vectors.to(prompt.embedding.dtype))
    head = config.head.build(layout.d_model) if config.head is not None else None
    return Parts(prompt=prompt, head=head)
