"""``PrefixModel``: a frozen Hugging Face model plus trainable continuous-prompt parts.

The parts (see :mod:`prefixtune.methods`) are a per-layer prefix, an input prompt and a task
head; each method uses a subset. ``forward``/``generate`` take the base model's arguments.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from prefixtune.core.batch import PrefixBatch
from prefixtune.hf.boundary import Injection
from prefixtune.core.layout import ModelLayout
from prefixtune.methods import MethodConfig, Parts, build_parts, prefix_config_of
from prefixtune.methods.params import ParameterCount, count_parts
from prefixtune.core.prompt import insert_prompt, prepend_ids


class PrefixModel(nn.Module):
    """A frozen base model with a trained prefix, prompt and/or head.

    Use :func:`prefixtune.wrap` (or :func:`prefixtune.load`) to make one.

    Attributes:
        base_model: the wrapped transformers model (all its parameters frozen).
        config: the method's config (:class:`PrefixConfig`, :class:`PromptConfig`, :class:`PTuningV2Config`).
        prefix: the :class:`~prefixtune.prefix.PrefixStack`, or None.
        prompt: the :class:`~prefixtune.prompt.PromptEmbedding`, or None.
        head: the task head, or None.
    """

    def __init__(self, base_model: nn.Module, config: MethodConfig, parts: Parts | None = None,
                 tokenizer: Any = None) -> None:
        super().__init__()
        self.injection = Injection(base_model)
        self.base_model = base_model
        self.config = config
        for p in base_model.parameters():
            p.requires_grad_(False)
        fresh = parts is None
        if parts is None:
            embeddings = base_model.get_input_embeddings().weight if hasattr(base_model, "get_input_embeddings") else None
            parts = build_parts(config, self.layout, embeddings, tokenizer)
        device = next(base_model.parameters()).device
        self.prefix = parts.prefix.to(device) if parts.prefix is not None else None
        self.prompt = parts.prompt.to(device) if parts.prompt is not None else None
        self.head = parts.head.to(device) if parts.head is not None else None
        self.init_errors: dict[str, float] = {}
        prefix_cfg = prefix_config_of(config)
        if fresh and self.prefix is not None and prefix_cfg.init != "random":
            from prefixtune.runtime.init import initialize_from_activations

            self.init_errors = initialize_from_activations(self, prefix_cfg, tokenizer)

    @property
    def layout(self) -> ModelLayout:
        return self.injection.layout

    @property
    def parts(self) -> Parts:
        return Parts(self.prefix, self.prompt, self.head)

    @property
    def shifted(self) -> bool:
        return getattr(self.config, "position_mode", "natural") == "shifted"

    def prefix_batch(self) -> PrefixBatch | None:
        """The prefix for this forward: the MLP runs once, its output is shared by all rows."""
        if self.prefix is None:
            return None
        return PrefixBatch.single(self.prefix(), self.prefix.layers, self.injection.modules, dict(self.prefix.gates))

    # ------------------------------------------------------------------ inputs

    def _with_prompt(self, kwargs: dict[str, Any], extend_labels: bool) -> tuple[dict[str, Any], torch.Tensor | None]:
        """Replace token ids by embeddings with the prompt in front of each row's real tokens."""
        if self.prompt is None:
            return kwargs, None
        kwargs = dict(kwargs)
        ids = kwargs.pop("input_ids", None)
        embeds = kwargs.pop("inputs_embeds", None)
        if embeds is None:
            if ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            embeds = self.base_model.get_input_embeddings()(ids)
        extra = {"token_type_ids": kwargs.pop("token_type_ids", None)}
        if extend_labels:
            extra["labels"] = kwargs.pop("labels", None)
        kwargs.pop("position_ids", None)  # recomputed from the new mask
        embeds, mask, extra, real_index = insert_prompt(self.prompt(), embeds, kwargs.get("attention_mask"), extra)
        kwargs.update(extra)
        kwargs["inputs_embeds"], kwargs["attention_mask"] = embeds, mask
        return kwargs, real_index

    @staticmethod
    def _take(t: torch.Tensor, real_index: torch.Tensor) -> torch.Tensor:
        """``(B, l+n, ...) -> (B, n, ...)`` at the original tokens' positions."""
        index = real_index.view(*real_index.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
        return t.gather(1, index)

    # ------------------------------------------------------------------ forward / generate

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Same arguments and outputs as the base model's forward (``input_ids`` may be positional).

        With a prompt, ``logits``/``last_hidden_state`` keep one position per input token (the
        virtual tokens' positions are dropped; the loss never covers them). With a head, the
        output is the head's (``SequenceClassifierOutput`` or ``TokenClassifierOutput``).
        """
        if args:
            if len(args) > 1:
                raise TypeError("pass arguments other than input_ids by keyword")
            kwargs["input_ids"] = args[0]
        seq2seq = self.injection.is_encoder_decoder
        labels = kwargs.pop("labels", None) if self.head is not None else None
        mask = kwargs.get("attention_mask")
        kwargs, real_index = self._with_prompt(kwargs, extend_labels=not seq2seq)
        batch = self.prefix_batch()
        if batch is None and kwargs.get("output_attentions"):  # no prefix, but the weights must be computed
            batch = PrefixBatch({}, torch.zeros(1, dtype=torch.long))
        kwargs = self.injection.inputs(batch, self.shifted, kwargs)
        if self.head is not None:
            kwargs["output_hidden_states"] = True
        with self.injection.active(batch):
            out = self.base_model(**kwargs)
        if self.head is not None:
            hidden = getattr(out, "last_hidden_state", None)
            if hidden is None:
                hidden = out.hidden_states[-1]
            if real_index is not None:
                hidden = self._take(hidden, real_index)
            return self.head(hidden, mask, labels)
        if real_index is not None and not seq2seq:
            for name in ("logits", "last_hidden_state"):
                value = getattr(out, name, None)
                if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[1] == real_index.shape[1] + self.prompt.config.num_virtual_tokens:
                    out[name] = self._take(value, real_index)
        return out

    @torch.no_grad()
    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """``transformers`` ``generate`` with the prefix/prompt at every step (greedy, beam, sampling).

        Decoder-only models return prompt token ids followed by the new tokens, as usual, also
        when a soft prompt is used.
        """
        if args:
            kwargs["input_ids"] = args[0]
        if self.head is not None:
            raise TypeError("this adapter has a classification head; call the model, not generate()")
        ids = kwargs.get("input_ids")
        kwargs, real_index = self._with_prompt(kwargs, extend_labels=False)
        batch = self.prefix_batch()
        kwargs = self.injection.inputs(batch, self.shifted, kwargs)
        with self.injection.active(batch):
            out = self.base_model.generate(**kwargs)
        if real_index is not None and ids is not None and not self.injection.is_encoder_decoder:
            return prepend_ids(out, ids)
        return out

    # ------------------------------------------------------------------ the rest

    def fold(self) -> "PrefixModel":
        """Replace reparameterizations (prefix MLP, prompt encoder) by their outputs. Returns self."""
        if self.prefix is not None and not self.prefix.is_folded:
            self.prefix = self.prefix.folded()
        if self.prompt is not None and not self.prompt.is_folded:
            self.prompt = self.prompt.folded()
        return self

    def gradient_checkpointing_enable(self) -> None:
        """Recompute the base model's layers in backward (non-reentrant, so prefix gradients flow)."""
        self.base_model.activation_checkpointing_enable({"use_reentrant": False})

    def gradient_checkpointing_disable(self) -> None:
        self.base_model.activation_checkpointing_disable()

    def count_parameters(self) -> ParameterCount:
        """Trainable parameters, those stored for inference (after folding), and the base model's."""
        return count_parts(self.parts, self.layout.base_parameters)

    def trainable_parameters(self) -> list[nn.Parameter]:
        own = [m for m in (self.prefix, self.prompt, self.head) if m is not None]
        return [p for m in own for p in m.parameters() if p.requires_grad]

    def save_pretrained(self, path: str | os.PathLike, base_model_name: str | None = None) -> None:
        """Write the adapter to ``path`` (see :mod:`prefixtune.checkpoint`)."""
        from prefixtune.io.checkpoint import save_adapter

        save_adapter(self, path, base_model_name=base_model_name)

    def load_trainable(self, path: str | os.PathLike) -> None:
        """Load the trainable state saved by :meth:`save_pretrained` into this model's own parts
        (resuming training keeps the live modules the optimizer holds)."""
        from prefixtune.io.checkpoint import CheckpointError, load_parts

        _, parts = load_parts(path, self.layout)
        for name in ("prefix", "prompt", "head"):
            live, saved = getattr(self, name), getattr(parts, name)
            if (live is None) != (saved is None):
                raise CheckpointError(f"{path}: the saved adapter does not match this model's method")
            if live is not None:
                live.load_state_dict(saved.state_dict())

    def save_peft(self, path: str | os.PathLike, base_model_name: str | None = None) -> None:
        """Write the adapter in PEFT's format (see :mod:`prefixtune.peft_interop`)."""
        from prefixtune.io.peft import save_peft

        save_peft(self, path, base_model_name=base_model_name)

    def unwrap(self) -> nn.Module:
        """Give the base model back with its original attention implementation."""
        self.injection.remove()
        return self.base_model


def wrap(model: nn.Module, config: MethodConfig | None = None, tokenizer: Any = None) -> PrefixModel:
    """Freeze ``model`` and give it fresh trainable parts described by ``config``.

    Args:
        config: :class:`PrefixConfig` (default), :class:`PromptConfig` or :class:`PTuningV2Config`.
        tokenizer: the model's tokenizer, for inits from text or label words.
    """
    from prefixtune.core.config import PrefixConfig

    return PrefixModel(model, config or PrefixConfig(), tokenizer=tokenizer)
