"""Input-level soft prompts: prompt tuning (Lester et al. 2021) and P-tuning (Liu et al. 2021).

A prompt is ``l`` trainable vectors of the model's embedding width, put in front of each row's
real tokens (after any left padding, never before it). Prompt tuning trains the vectors directly;
P-tuning produces them with a small prompt encoder (an MLP or a bidirectional LSTM + MLP).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prefixtune.core.config import ConfigError, ConfigIO

INITS = ("random", "vocab", "text", "labels")
ENCODERS = ("none", "mlp", "lstm")


@dataclass
class PromptConfig(ConfigIO):
    """Configuration of an input prompt.

    Fields:
        num_virtual_tokens: number of prompt vectors ``l``.
        init: ``"random"`` (uniform in ``±init_range``), ``"vocab"`` (embeddings of tokens sampled
            from the vocabulary), ``"text"`` (embeddings of ``init_text``, repeated or cut to
            ``l``), ``"labels"`` (embeddings of ``label_words`` first, the rest sampled from the
            vocabulary; Lester et al.'s best init for classification).
        init_text: the text for ``init="text"``.
        label_words: the class-label words for ``init="labels"``.
        init_range: half-width of the uniform random init.
        encoder: ``"none"`` (prompt tuning), ``"mlp"`` or ``"lstm"`` (P-tuning's prompt encoder).
        encoder_hidden_size: hidden width of the prompt encoder.
        dropout: dropout on the prompt vectors during training.
        num_labels: None (default) for generation/LM use; a number of classes adds a sequence
            classification head on the last hidden state of the real tokens (the prompt's
            positions are left out), trained with the prompt.
        pooling, head_dropout: the head's pooling (``cls``, ``mean``, ``last``) and dropout.
    """

    num_virtual_tokens: int = 20
    init: str = "random"
    init_text: str | None = None
    label_words: tuple[str, ...] = ()
    init_range: float = 0.5
    encoder: str = "none"
    encoder_hidden_size: int = 512
    dropout: float = 0.0
    num_labels: int | None = None
    pooling: str = "mean"
    head_dropout: float = 0.1
    method: str = field(default="prompt", init=False)

    def __post_init__(self) -> None:
        self.label_words = tuple(self.label_words)
        if not isinstance(self.num_virtual_tokens, int) or self.num_virtual_tokens < 1:
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
        if self.num_labels is not None and (not isinstance(self.num_labels, int) or self.num_labels < 1):
            raise ConfigError(f"num_labels must be a positive integer or None, got {self.num_labels!r}")
        from prefixtune.core.heads import POOLINGS

        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")


class PromptEmbedding(nn.Module):
    """``forward() -> (l, d_model)``: the prompt vectors (through the encoder for P-tuning)."""

    def __init__(self, config: PromptConfig, d_model: int) -> None:
        super().__init__()
        self.config = config
        l = config.num_virtual_tokens
        self.embedding = nn.Parameter(torch.empty(l, d_model).uniform_(-config.init_range, config.init_range))
        self.lstm: nn.LSTM | None = None
        self.mlp: nn.Sequential | None = None
        if config.encoder == "lstm":
            self.lstm = nn.LSTM(d_model, config.encoder_hidden_size // 2, num_layers=2, bidirectional=True,
                                batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(config.encoder_hidden_size, config.encoder_hidden_size), nn.ReLU(),
                                     nn.Linear(config.encoder_hidden_size, d_model))
        elif config.encoder == "mlp":
            self.mlp = nn.Sequential(nn.Linear(d_model, config.encoder_hidden_size), nn.ReLU(),
                                     nn.Linear(config.encoder_hidden_size, config.encoder_hidden_size), nn.ReLU(),
                                     nn.Linear(config.encoder_hidden_size, d_model))
        self.dropout = nn.Dropout(config.dropout)

    @property
    def is_folded(self) -> bool:
        return self.mlp is None and self.lstm is None

    def forward(self) -> torch.Tensor:
        x = self.embedding
        if self.lstm is not None:
            x = self.lstm(x[None])[0][0]  # (l, hidden)
        if self.mlp is not None:
            x = self.mlp(x)
        return self.dropout(x)

    @torch.no_grad()
    def folded(self) -> "PromptEmbedding":
        """A plain prompt holding this module's current output (the encoder is dropped)."""
        was = self.training
        self.eval()
        vectors = self().detach().clone()
        self.train(was)
        cfg = dataclasses.replace(self.config, encoder="none")
        out = PromptEmbedding(cfg, vectors.shape[1])
        out.embedding.data.copy_(vectors)
        return out

    @torch.no_grad()
    def initialize(self, embeddings: torch.Tensor, tokenizer: Any = None, generator: torch.Generator | None = None) -> None:
        """Set the prompt vectors from the model's input ``embeddings`` ``(V, d)`` per ``config.init``.

        ``"text"`` and ``"labels"`` need the model's tokenizer. With a prompt encoder the vectors
        are the encoder's *input*, as in P-tuning.
        """
        cfg = self.config
        l = cfg.num_virtual_tokens
        vocab = embeddings.shape[0]

        def sampled(n: int) -> torch.Tensor:
            ids = torch.randint(0, min(vocab, 5000), (n,), generator=generator)
            return embeddings[ids]

        if cfg.init == "random":
            return
        if cfg.init == "vocab":
            vectors = sampled(l)
        elif cfg.init == "text":
            ids = _token_ids(tokenizer, cfg.init_text)
            ids = (ids * (l // len(ids) + 1))[:l]
            vectors = embeddings[torch.tensor(ids)]
        else:  # labels
            rows = [embeddings[torch.tensor(_token_ids(tokenizer, w))].mean(0) for w in cfg.label_words][:l]
            vectors = torch.cat([torch.stack(rows), sampled(l - len(rows))]) if len(rows) < l else torch.stack(rows)
        self.embedding.copy_(vectors.to(self.embedding.dtype))


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    if tokenizer is None:
        raise ConfigError("this prompt init needs the model's tokenizer: pass tokenizer= to wrap()")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(f"{text!r} tokenizes to nothing")
    return list(ids)


def insert_prompt(prompt: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor | None,
                  extra: dict[str, torch.Tensor | None], prompt_mask: torch.Tensor | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any], torch.Tensor]:
    """Put ``prompt`` in front of each row's first real token.

    Args:
        prompt: ``(l, d)`` or ``(B, l, d)``.
        prompt_mask: ``(B, l)``: 0 for virtual slots a row does not use (rows with shorter or no
            prompts in a mixed batch put them first, where they act as extra left padding).
        embeds: ``(B, n, d)`` input embeddings.
        mask: ``(B, n)`` padding mask (1 = real) or None.
        extra: per-token tensors ``(B, n)`` to extend the same way, with the value used at the
            virtual positions: ``{"labels": -100, "token_type_ids": 0}`` style, given as
            ``name -> tensor`` (filled with -100 for labels, 0 otherwise).

    Returns:
        ``(embeds, mask, extra, real_index)``: ``(B, l+n, d)``, ``(B, l+n)``, the extended extra
        tensors, and ``real_index`` ``(B, n)``: where each original token now sits.
    """
    b, n, d = embeds.shape
    l = prompt.shape[-2]
    prompt = prompt.to(embeds.dtype)
    prompt = prompt.expand(b, l, d) if prompt.dim() == 2 else prompt
    if mask is None:
        mask = torch.ones(b, n, dtype=torch.long, device=embeds.device)
    lead = (mask.cumsum(-1) == 0).sum(-1)  # (B,) leading pads: the prompt goes right after them
    j = torch.arange(l + n, device=embeds.device)[None]  # new positions
    lead_ = lead[:, None]
    # source index into cat([prompt, embeds]) (length l + n)
    src = torch.where(j < lead_, l + j, torch.where(j < lead_ + l, j - lead_, j))
    gather = src[..., None].expand(b, l + n, d)
    new_embeds = torch.cat([prompt, embeds], 1).gather(1, gather)
    ones = torch.ones(b, l, dtype=mask.dtype, device=mask.device) if prompt_mask is None else prompt_mask.to(mask)
    new_mask = torch.cat([ones, mask], 1).gather(1, src)
    out_extra: dict[str, Any] = {}
    for name, t in extra.items():
        if t is None:
            continue
        fill = -100 if name == "labels" else 0
        pad = torch.full((b, l), fill, dtype=t.dtype, device=t.device)
        out_extra[name] = torch.cat([pad, t], 1).gather(1, src)
    i = torch.arange(n, device=embeds.device)[None]
    real_index = torch.where(i < lead_, i, i + l)
    return new_embeds, new_mask, out_extra, real_index


def prepend_ids(out: Any, ids: torch.Tensor) -> Any:
    """``generate`` from embeddings returns only new tokens: put the input ids back in front
    (of a tensor, or of ``out.sequences``) so outputs look as they do without a prompt."""
    sequences = out if isinstance(out, torch.Tensor) else out.sequences
    sequences = torch.cat([ids.to(sequences.device), sequences], dim=1)
    if isinstance(out, torch.Tensor):
        return sequences
    out.sequences = sequences
    return out
