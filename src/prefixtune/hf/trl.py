"""TRL's fused LM head, moved under the adapter.

TRL's ``SFTTrainer`` (trl 1.x) patches ``model.forward`` with ``trl.trainer.utils.add_fused_lm_head``:
called with ``fused_lm_head=True``, the patched forward runs ``model.base_model`` as the backbone
and projects its ``last_hidden_state`` through ``model.get_output_embeddings()`` in chunks,
returning per-token log-probabilities instead of logits. Applied to a ``PrefixModel``, that would
call the wrapped transformers model directly and skip the adapter. So a ``PrefixModel`` hands such a
patch here, and the same patch (same temperature, fp32 cast and outputs) goes onto the transformers
model inside: ``PrefixModel.forward`` → the adapter runtime → the patched base forward, whose
backbone runs with the prefix and prompt.

With a prompt, the per-token outputs cover the virtual positions too (their labels are -100, so
they are zero and masked out); TRL only sums them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

_SETTINGS = ("temperature", "cast_lm_head_to_fp32", "outputs")


def is_fused_head_patch(value: Any) -> bool:
    """Whether ``value`` (being assigned to ``model.forward``) is TRL's fused-LM-head forward."""
    code = getattr(getattr(value, "__func__", None), "__code__", None)  # its name is ours (functools.wraps)
    return code is not None and code.co_name == "_fused_forward" and \
        Path(code.co_filename).parent.parent.name == "trl"


def patch_base_model(base_model: nn.Module, patch: Any) -> None:
    """Apply TRL's fused LM head to ``base_model`` with the settings ``patch`` was made with.

    Raises:
        TypeError: this TRL builds its patch differently (the settings cannot be read).
    """
    func = patch.__func__
    cells = dict(zip(func.__code__.co_freevars, func.__closure__ or ()))
    if any(name not in cells for name in _SETTINGS):
        raise TypeError("this TRL version patches forward in a way prefixtune does not know "
                        f"(no {[n for n in _SETTINGS if n not in cells]} in its fused LM head); "
                        "use trl 1.x, or train with transformers.Trainer")
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(base_model, **{name: cells[name].cell_contents for name in _SETTINGS})
