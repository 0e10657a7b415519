"""Resumable training checkpoints: every file is verified before anything is loaded."""

from __future__ import annotations

import random

import pytest
import torch

import prefixtune as pt
from prefixtune.io.checkpoint import CheckpointError
from prefixtune.train.state import latest_valid, load_state, save_state, verify
from tiny import tiny_model, token_ids


def trained(steps=2):
    pm = pt.wrap(tiny_model("llama"), pt.PrefixConfig(prefix_length=3, hidden_size=8)).train()
    opt = torch.optim.AdamW(pm.trainable_parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    ids = token_ids("llama", 2, 5)
    for _ in range(steps):
        opt.zero_grad()
        pm(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        sched.step()
    return pm, opt, sched


def flip_byte(path, offset=-5):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["state.safetensors", "adapter/trainable.safetensors", "adapter/adapter.safetensors"])
def test_a_flipped_byte_in_any_file_is_refused(tmp_path, name, caplog):
    pm, opt, sched = trained()
    save_state(tmp_path, 1, pm, opt, sched, {"best": None})
    good = save_state(tmp_path, 2, pm, opt, sched, {"best": None})
    verify(good)
    flip_byte(good / name)
    with pytest.raises(CheckpointError):
        verify(good)
    assert latest_valid(tmp_path) == tmp_path / "step-000001"
    skipped = [r for r in caplog.records if r.name == "prefixtune.train.state"]
    assert skipped and skipped[0].levelname == "WARNING" and "step-000002" in skipped[0].getMessage()


def test_load_state_restores_optimizer_scheduler_and_rngs(tmp_path):
    pm, opt, sched = trained()
    torch.manual_seed(123)
    random.seed(7)
    path = save_state(tmp_path, 2, pm, opt, sched, {"best": 1.5, "history": [{"step": 1}]})
    want_torch, want_py = torch.rand(3), random.random()
    fresh, fresh_opt, fresh_sched = trained(steps=0)
    meta = load_state(path, fresh, fresh_opt, fresh_sched)
    assert meta["step"] == 2 and meta["progress"] == {"best": 1.5, "history": [{"step": 1}]}
    assert torch.equal(torch.rand(3), want_torch) and random.random() == want_py
    assert fresh_sched.state_dict()["last_epoch"] == sched.state_dict()["last_epoch"] == 2
    for a, b in zip(pm.trainable_parameters(), fresh.trainable_parameters(), strict=True):
        assert torch.equal(a, b)
    want, got = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert sorted(want) == sorted(got)
    for i in want:
        a, b = want[i], got[i]
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])), k


def test_save_state_creates_missing_parents_and_replaces_a_stale_temporary(tmp_path):
    """A killed save can leave ``.step-N.tmp-PID``; a later save by a process with that PID must not
    mix the stale files into the new checkpoint."""
    import os

    pm, opt, sched = trained()
    root = tmp_path / "run" / "checkpoints"
    stale = root / f".step-000003.tmp-{os.getpid()}"
    (stale / "adapter").mkdir(parents=True)
    (stale / "junk.bin").write_bytes(b"left by a killed write")
    path = save_state(root, 3, pm, opt, sched, {})
    assert not (path / "junk.bin").exists() and not stale.exists()
    assert sorted(p.name for p in root.iterdir()) == ["step-000003"]
    verify(path)
    deep = save_state(tmp_path / "a" / "b" / "c", 1, pm, opt, sched, {})
    verify(deep)
