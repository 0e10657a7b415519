"""PEFT's prefix-tuning forward (which works on transformers 5) as an independent oracle.

The same prefix K/V, loaded into prefixtune, must give PEFT's logits. PEFT prepends the prefix
through ``past_key_values`` with shifted positions; prefixtune through its attention function.
"""

from __future__ import annotations

import pytest
import torch

import prefixtune as pt
from prefixtune.core.prefix import DirectPrefix, PrefixStack
from tiny import tiny_model, token_ids

peft = pytest.importorskip("peft")


def peft_prefix_model(family, length, seed=0):
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    base = tiny_model(family, seed=seed)
    model = get_peft_model(base, PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=length))
    with torch.no_grad():
        for p in model.prompt_encoder.parameters():
            p.normal_(0.0, 1.0)
    return model.eval()


def to_stack(peft_model, layout):
    """PEFT's ``prompt_embeddings`` ``[l, layers*2*kv_width]`` -> our ``(layers, 2, kv_heads, l, head_dim)``."""
    table = peft_model.prompt_encoder["default"].embedding.weight.detach()
    shape = layout.location("decoder_self")
    l = table.shape[0]
    kv = table.view(l, shape.num_layers, 2, shape.num_kv_heads, shape.head_dim).permute(1, 2, 3, 0, 4)
    return PrefixStack({"decoder_self": DirectPrefix(kv.contiguous())}, {"decoder_self": tuple(range(shape.num_layers))})


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_same_logits_as_peft_forward(family):
    length = 4
    ref = peft_prefix_model(family, length)
    ids = token_ids(family, 3, 7)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding in one row
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        # PEFT numbers a left-padded row's tokens from the padding on; compare that row to PEFT run on it alone.
        want[1, 2:] = ref(input_ids=ids[1:2, 2:], attention_mask=mask[1:2, 2:]).logits[0]
    ours = pt.wrap(tiny_model(family), pt.PrefixConfig(prefix_length=length, reparameterization="direct"))
    ours.prefix = to_stack(ref, ours.layout)
    with torch.no_grad():
        got = ours(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert (got - ours.unwrap()(input_ids=ids, attention_mask=mask).logits)[real].abs().max() > 1e-3
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)


def test_sliding_window_models_match_peft_inside_the_window_and_keep_the_prefix_past_it():
    """PEFT's prefix sits in the cache at positions 0..l-1, so a sliding window (Mistral, Gemma2)
    hides it from tokens more than ``window`` positions later; prefixtune's prefix stays visible to
    every token (docs/design.md, interop). Equal while nothing is past the window, different after."""
    length, ids = 3, token_ids("mistral", 2, 7)

    def both(window):
        ref = peft_prefix_model("mistral", length)
        ref.base_model.config.sliding_window = window
        ours = pt.wrap(tiny_model("mistral"), pt.PrefixConfig(prefix_length=length, reparameterization="direct"))
        ours.base_model.config.sliding_window = window
        ours.prefix = to_stack(ref, ours.layout)
        with torch.no_grad():
            return ours(input_ids=ids).logits, ref(input_ids=ids).logits

    got, want = both(window=64)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    got, want = both(window=4)  # the first real token (position 3) sees keys 0..3: all; the next loses slot 0
    torch.testing.assert_close(got[:, 0], want[:, 0], atol=1e-5, rtol=1e-5)
    assert (got[:, 1:] - want[:, 1:]).abs().amax(-1).min() > 1e-3
