"""``PrefixModel``: a frozen Hugging Face model plus trainable continuous-prompt parts.

The parts (see :mod:`prefixtune.core.parts`) are a per-layer prefix, an input prompt and a task
head; each method uses a subset. ``forward``/``generate`` take the base model's arguments and run
through the one :class:`~prefixtune.runtime.adapters.AdapterRuntime`, with this model's adapter
for every row (the bank's one-adapter case).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from prefixtune.core.layout import ModelLayout
from prefixtune.core.parts import Parts
from prefixtune.hf.boundary import Injection, describe
from prefixtune.hf.trl import is_fused_head_patch, patch_base_model
from prefixtune.io.card import model_card, write_card
from prefixtune.io.checkpoint import CONFIG_NAME, CheckpointError, base_fingerprint, load_parts, save_adapter
from prefixtune.io.hub import local_or_download, push_folder
from prefixtune.io.module_state import check_meta, decode_meta, encode_meta, is_module_state_dir, read_module_state
from prefixtune.io.peft import PEFT_CONFIG, read_peft, write_peft
from prefixtune.methods import MethodConfig, build_parts
from prefixtune.methods.params import ParameterCount, count_parts
from prefixtune.methods.prefix import PrefixConfig
from prefixtune.runtime.adapters import AdapterRuntime, AdapterTensors
from prefixtune.runtime.compat import TransformersModelMixin
from prefixtune.runtime.init import initialize_from_activations


class PrefixModel(TransformersModelMixin, nn.Module):
    """A frozen base model with a trained prefix, prompt and/or head.

    Use :func:`prefixtune.wrap` (or :func:`prefixtune.load`) to make one.

    Attributes:
        base_model: the wrapped transformers model (all its parameters frozen).
        adapter_config: the method's config (:class:`PrefixConfig`, :class:`PromptConfig`, :class:`PTuningV2Config`).
        config: the base model's ``PretrainedConfig``, as transformers tools expect (see
            :mod:`prefixtune.runtime.compat` for the rest of the transformers model interface).
        prefix: the :class:`~prefixtune.core.prefix.PrefixStack`, or None.
        prompt: the :class:`~prefixtune.core.prompt.PromptEmbedding`, or None.
        head: the task head, or None.
        init_errors: per location, the relative error of an activation-initialized MLP prefix.
    """

    def __init__(self, base_model: nn.Module, config: MethodConfig, parts: Parts | None = None,
                 tokenizer: Any = None) -> None:
        super().__init__()
        self.runtime = AdapterRuntime(base_model)
        self.base_model = base_model
        self.adapter_config = config
        for p in base_model.parameters():
            p.requires_grad_(False)
        fresh = parts is None
        if parts is None:
            embeddings = base_model.get_input_embeddings().weight if hasattr(base_model, "get_input_embeddings") else None
            parts = build_parts(config, self.layout, embeddings, tokenizer)
        parts = parts.to(next(base_model.parameters()).device)
        self.prefix, self.prompt, self.head = parts.prefix, parts.prompt, parts.head
        self.init_errors: dict[str, float] = {}
        prefix_cfg = config.prefix_config
        if fresh and self.prefix is not None and prefix_cfg.init != "random":
            self.init_errors = initialize_from_activations(self.runtime, self.prefix, prefix_cfg, tokenizer)
        self.register_state_dict_post_hook(_without_base)
        self.register_load_state_dict_post_hook(_base_not_missing)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "forward" and is_fused_head_patch(value):
            patch_base_model(self.base_model, value)  # TRL's fused LM head belongs under the adapter
            return
        super().__setattr__(name, value)

    @property
    def injection(self) -> Injection:
        return self.runtime.injection

    @property
    def layout(self) -> ModelLayout:
        return self.runtime.layout

    @property
    def parts(self) -> Parts:
        return Parts(self.prefix, self.prompt, self.head)

    @property
    def shifted(self) -> bool:
        prefix_cfg = self.adapter_config.prefix_config
        return prefix_cfg is not None and prefix_cfg.position_mode == "shifted"

    def adapter(self) -> AdapterTensors:
        """This forward's adapter tensors (the prefix MLP runs once, shared by all rows)."""
        return AdapterTensors.of(self.adapter_config, self.parts)

    # ------------------------------------------------------------------ module state = the adapter

    def get_extra_state(self) -> torch.Tensor:
        """What this adapter is, stored in ``state_dict()`` next to its tensors (see
        :mod:`prefixtune.io.module_state`); the frozen base's tensors are left out of it."""
        return encode_meta(self.adapter_config, self.parts.is_folded)

    def set_extra_state(self, state: Any) -> None:
        """Refuse a state of another adapter (``load_state_dict`` calls this before loading the parts)."""
        check_meta(decode_meta(state, "state_dict"), self.adapter_config, self.parts.is_folded, "state_dict")

    # ------------------------------------------------------------------ forward / generate

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
                *args: Any, **kwargs: Any) -> Any:
        """Same arguments and outputs as the base model's forward (``input_ids`` may be positional).

        The common inputs are named (``transformers.Trainer`` keeps the dataset columns a model's
        forward names, and finds ``labels`` there); any other base-model argument goes by keyword.

        With a prompt, ``logits``/``last_hidden_state`` keep one position per input token (the
        virtual tokens' positions are dropped; the loss never covers them). With a head, the
        output is the head's (``SequenceClassifierOutput`` or ``TokenClassifierOutput``).
        """
        if args:
            raise TypeError("pass arguments other than input_ids by keyword")
        named = dict(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, labels=labels,
                     token_type_ids=token_type_ids, position_ids=position_ids, decoder_input_ids=decoder_input_ids,
                     decoder_attention_mask=decoder_attention_mask)
        kwargs.update({k: v for k, v in named.items() if v is not None})
        return self.runtime.forward(self.adapter(), kwargs, head=self.head)

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
        return self.runtime.generate(self.adapter(), kwargs)

    # ------------------------------------------------------------------ the rest

    def fold(self) -> "PrefixModel":
        """Replace reparameterizations (prefix MLP, prompt encoder) by their outputs. Returns self."""
        folded = self.parts.folded()
        self.prefix, self.prompt = folded.prefix, folded.prompt
        return self

    def count_parameters(self) -> ParameterCount:
        """Trainable parameters, those stored for inference (after folding), and the base model's."""
        return count_parts(self.parts, self.layout.base_parameters)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.parts.modules() for p in m.parameters() if p.requires_grad]

    def _base_name(self, given: str | None) -> str | None:
        return given or getattr(self.base_model.config, "_name_or_path", None)

    def save_pretrained(self, path: str | os.PathLike, base_model_name: str | None = None, card: bool = True) -> None:
        """Write the adapter to ``path`` (see :mod:`prefixtune.io.checkpoint`) and, with ``card``, its
        model card ``README.md`` (:mod:`prefixtune.io.card`; a README.md someone wrote is kept)."""
        base = self._base_name(base_model_name)
        save_adapter(path, self.adapter_config, self.parts, self.layout, base,
                     extra={"base_fingerprint": base_fingerprint(self.base_model)})
        if card:
            write_card(path, model_card(self.adapter_config, self.count_parameters(), base,
                                        getattr(self, "model_tags", None), self.can_generate()))

    @classmethod
    def from_pretrained(cls, model: nn.Module, path_or_id: str | os.PathLike, folded: bool = False,
                        revision: str | None = None, token: str | bool | None = None,
                        subfolder: str | None = None) -> "PrefixModel":
        """Wrap ``model`` with the adapter in a local directory or a hub repository (``owner/name``,
        downloaded through the ``huggingface_hub`` cache; ``HF_HUB_OFFLINE=1`` reads that cache only).
        Reads what :func:`load` reads: our adapters, PEFT adapters and Trainer's output directories."""
        where = local_or_download(path_or_id, revision, token, subfolder)
        if (where / PEFT_CONFIG).is_file() and not (where / CONFIG_NAME).is_file():
            return from_peft(model, where)
        return load(model, where, folded=folded)

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | bool | None = None,
                    commit_message: str = "Upload prefixtune adapter", revision: str | None = None,
                    base_model_name: str | None = None) -> Any:
        """Save the adapter and its card to hub repository ``repo_id`` (created if missing) in one
        commit; returns ``huggingface_hub``'s ``CommitInfo``."""
        return push_folder(lambda folder: self.save_pretrained(folder, base_model_name), repo_id, private, token,
                           commit_message, revision)

    def load_trainable(self, path: str | os.PathLike) -> None:
        """Load the trainable state saved by :meth:`save_pretrained` into this model's own parts
        (resuming training keeps the live modules the optimizer holds)."""
        _, saved = load_parts(path, self.layout)
        if saved.names() != self.parts.names():
            raise CheckpointError(f"{path}: the saved adapter does not match this model's method")
        for (_, live), (_, part) in zip(self.parts.items(), saved.items()):
            live.load_state_dict(part.state_dict())

    def save_peft(self, path: str | os.PathLike, base_model_name: str | None = None) -> None:
        """Write the adapter in PEFT's format (see :mod:`prefixtune.io.peft`)."""
        write_peft(path, self.adapter_config, self.parts, self.layout, self._base_name(base_model_name))

    def unwrap(self) -> nn.Module:
        """Give the base model back with its original attention implementation."""
        self.injection.remove()
        return self.base_model


def _without_base(module: PrefixModel, state: dict[str, Any], prefix: str, _meta: Any) -> None:
    """``state_dict`` post-hook: drop the frozen base model's tensors (Trainer's checkpoints hold the
    adapter only, and tied embeddings never reach safetensors twice)."""
    for key in [k for k in state if k.startswith(prefix + "base_model.")]:
        del state[key]


def _base_not_missing(module: PrefixModel, keys: Any) -> None:
    """``load_state_dict`` post-hook: the base's tensors are not missing from an adapter state (a
    strict load of ``state_dict()`` succeeds); any prefix of an enclosing module is allowed."""
    base = {"base_model." + k for k in module.base_model.state_dict(keep_vars=True)}

    def is_base(key: str) -> bool:
        return key in base or any(key[i + 1:] in base for i, c in enumerate(key) if c == ".")

    keys.missing_keys[:] = [k for k in keys.missing_keys if not is_base(k)]


def wrap(model: nn.Module, config: MethodConfig | None = None, tokenizer: Any = None) -> PrefixModel:
    """Freeze ``model`` and give it fresh trainable parts described by ``config``.

    Args:
        config: :class:`PrefixConfig` (default), :class:`PromptConfig` or :class:`PTuningV2Config`.
        tokenizer: the model's tokenizer, for inits from text or label words.
    """
    return PrefixModel(model, config or PrefixConfig(), tokenizer=tokenizer)


def load(model: nn.Module, path: str | os.PathLike, folded: bool = False, revision: str | None = None,
         token: str | bool | None = None) -> PrefixModel:
    """Wrap ``model`` with the adapter saved at ``path``: a directory written by
    :meth:`PrefixModel.save_pretrained` or by ``transformers.Trainer`` (``save_model``, checkpoints),
    or a hub repository id ``owner/name`` holding one (``revision``, ``token`` for the download).

    The full trainable state is restored when present (training can resume); ``folded=True``
    loads only the static tensors for inference.

    Raises:
        CheckpointError: missing/corrupt files, unknown method or version.
        ShapeMismatchError: the adapter was made for a model of another shape.
    """
    path = local_or_download(path, revision, token)
    if is_module_state_dir(path) and not (path / CONFIG_NAME).is_file():
        return _load_module_state(model, path, folded)
    config, parts = load_parts(path, describe(model)[0], folded=folded, base_fingerprint=base_fingerprint(model))
    return PrefixModel(model, config, parts)


def _load_module_state(model: nn.Module, path: str | os.PathLike, folded: bool) -> PrefixModel:
    """A directory written by ``Trainer.save_model`` (or a Trainer checkpoint): the module state."""
    config, saved_folded, tensors = read_module_state(path)
    parts = build_parts(config, describe(model)[0], initialize=False)
    pm = PrefixModel(model, config, parts.folded() if saved_folded else parts)
    try:
        pm.load_state_dict(tensors)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the saved tensors do not fit {config.method} with this config ({e})") from None
    return pm.fold() if folded else pm


def from_peft(model: nn.Module, path: str | os.PathLike, revision: str | None = None,
              token: str | bool | None = None) -> PrefixModel:
    """Wrap ``model`` with the PEFT adapter at ``path`` (a directory or a hub repository id;
    ``PREFIX_TUNING``, ``PROMPT_TUNING``, ``P_TUNING``; see :mod:`prefixtune.io.peft`).

    Raises:
        CheckpointError: not a PEFT adapter, unsupported type, missing tensor, corrupt file.
        ShapeMismatchError: the adapter was made for a model of another shape.
    """
    config, parts = read_peft(local_or_download(path, revision, token), describe(model)[0])
    return PrefixModel(model, config, parts)
