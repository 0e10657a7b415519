"""Input-level soft prompts: prompt tuning (Lester et al. 2021) and P-tuning (Liu et al. 2021).

A prompt is ``l`` trainable vectors of the model's embedding width, put in front of each row's
real tokens (after any left padding, never before it). Prompt tuning trains the vectors directly;
P-tuning produces them with a small prompt encoder (an MLP or a bidirectional LSTM + MLP).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import nn

from prefixtune.core.parts import check_shape

Encoder = Literal["none", "mlp", "lstm"]
ENCODERS: tuple[str, ...] = get_args(Encoder)


class PromptEmbedding(nn.Module):
    """``forward() -> (l, d_model)``: the prompt vectors (through the encoder for P-tuning).

    Args:
        length: number of prompt vectors ``l``.
        d_model: the model's embedding width.
        encoder: ``"none"`` (prompt tuning), ``"mlp"`` or ``"lstm"`` (P-tuning's prompt encoder).
        hidden_size: the encoder's hidden width.
        dropout: dropout on the prompt vectors during training.
        init_range: the vectors start uniform in ``±init_range``.
    """

    def __init__(self, length: int, d_model: int, encoder: str = "none", hidden_size: int = 512,
                 dropout: float = 0.0, init_range: float | None = 0.5) -> None:
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
        self.length = length
        self.embedding = nn.Parameter(torch.empty(length, d_model))
        if init_range is not None:  # None: the caller fills it (no random numbers drawn)
            self.embedding.data.uniform_(-init_range, init_range)
        self.lstm: nn.LSTM | None = None
        self.mlp: nn.Sequential | None = None
        if encoder == "lstm":
            self.lstm = nn.LSTM(d_model, hidden_size // 2, num_layers=2, bidirectional=True, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, d_model))
        elif encoder == "mlp":
            self.mlp = nn.Sequential(nn.Linear(d_model, hidden_size), nn.ReLU(), nn.Linear(hidden_size, hidden_size),
                                     nn.ReLU(), nn.Linear(hidden_size, d_model))
        self.dropout = nn.Dropout(dropout)

    @classmethod
    def holding(cls, vectors: torch.Tensor, dropout: float = 0.0) -> "PromptEmbedding":
        """A plain prompt holding ``vectors`` ``(l, d_model)`` (a copy); draws no random numbers."""
        out = cls(vectors.shape[0], vectors.shape[1], dropout=dropout, init_range=None)
        out.embedding = nn.Parameter(vectors.detach().clone())
        return out

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
        return PromptEmbedding.holding(vectors, self.dropout.p)

    # ------------------------------------------------------------------ state (see prefixtune.core.parts)

    def inference_state(self) -> dict[str, torch.Tensor]:
        """One tensor, the folded prompt ``(l, d_model)`` (stored under the part's own name)."""
        return {"": self.folded().embedding}

    def from_inference_state(self, tensors: dict[str, torch.Tensor]) -> "PromptEmbedding":
        """A plain prompt holding the saved vectors, shaped like this one."""
        vectors = check_shape("", tensors.get(""), tuple(self.embedding.shape))
        return PromptEmbedding.holding(vectors, self.dropout.p)


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
    ids = ids.to(sequences.device).repeat_interleave(sequences.shape[0] // ids.shape[0], 0)  # num_return_sequences
    sequences = torch.cat([ids, sequences], dim=1)
    if isinstance(out, torch.Tensor):
        return sequences
    out.sequences = sequences
    return out
