"""SIGKILL at random moments and in the middle of atomic writes; the resumed run ends byte-identical.

What it covers and what a longer loop would add: docs/reliability.md.
"""

from __future__ import annotations

import json
import random

import pytest

from killing import adapter_bytes, killed_run, random_moments, run_to_end

ADAPTERS = {"prefix": {"prefix_length": 3, "hidden_size": 16, "dropout": 0.2},  # dropout: RNG state must resume
            "prompt": {"num_virtual_tokens": 3, "encoder": "mlp", "dropout": 0.1}}


def _config(tiny_dir, e2e_dir, out, method) -> dict:
    return dict(model=str(tiny_dir), task="e2e", data=str(e2e_dir), method=method, adapter=ADAPTERS[method],
                steps=6, batch_size=4, lr=1e-2, eval_every=3, save_every=1, eval_limit=2, max_new_tokens=4,
                out=str(out))


@pytest.mark.parametrize("method", ADAPTERS)
def test_killed_anywhere_the_run_resumes_to_the_same_bytes(tiny_dir, e2e_dir, tmp_path, method):
    whole = tmp_path / "whole.json"
    whole.write_text(json.dumps(_config(tiny_dir, e2e_dir, tmp_path / "whole", method)))
    seconds = run_to_end(whole)
    reference = adapter_bytes(tmp_path / "whole")
    assert set(reference) == {"adapter.safetensors", "trainable.safetensors"}
    killed = tmp_path / "killed.json"
    killed.write_text(json.dumps(_config(tiny_dir, e2e_dir, tmp_path / "killed", method)))
    # os.replace #1 is config.json; later ones fall inside checkpoints (adapter files, state, manifest)
    moments = random_moments(random.Random(method), 1, 0.5 * seconds, 0.95 * seconds)
    outcome = killed_run(killed, reference, moments, replaces=[1, 4, 9])
    assert len(outcome.kills) >= 3, outcome
    assert outcome.identical, outcome
