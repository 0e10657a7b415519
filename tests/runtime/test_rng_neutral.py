"""Bookkeeping draws no random numbers: counting, folding, exporting and saving an adapter leave the
torch RNG where it was. (Resuming restores the RNG and then logs the parameter count; a fold that
drew a fresh random init made a resumed run's dropout masks differ from the uninterrupted run's.)"""

from __future__ import annotations

import pytest
import torch

import prefixtune as pt
from tiny import tiny_model

CONFIGS = {
    "prefix-mlp": pt.PrefixConfig(prefix_length=3, hidden_size=16, dropout=0.2),
    "prefix-direct": pt.PrefixConfig(prefix_length=3, reparameterization="direct"),
    "prompt-mlp": pt.PromptConfig(num_virtual_tokens=3, encoder="mlp", dropout=0.1),
    "prompt-lstm-head": pt.PromptConfig(num_virtual_tokens=3, encoder="lstm", num_labels=2),
    "ptuning_v2": pt.PTuningV2Config(prefix_length=2, num_labels=2),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_counting_exporting_saving_and_folding_draw_no_random_numbers(tmp_path, name):
    pm = pt.wrap(tiny_model("bert" if "head" in name or name == "ptuning_v2" else "llama"), CONFIGS[name])
    steps = {"count_parameters": pm.count_parameters, "num_parameters": pm.num_parameters,
             "inference_state": pm.parts.inference_state, "trainable_state": pm.parts.trainable_state,
             "state_dict": pm.state_dict, "save_pretrained": lambda: pm.save_pretrained(tmp_path / "a"),
             "fold": pm.fold}
    for what, call in steps.items():
        torch.manual_seed(123)
        want = torch.rand(3)
        torch.manual_seed(123)
        call()
        assert torch.equal(torch.rand(3), want), f"{what} drew random numbers"
