"""Adapters on the Hub, offline: a pre-filled hub cache with HF_HUB_OFFLINE=1, and an upload that is recorded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

import prefixtune as pt
from prefixtune.io.checkpoint import CheckpointError
from tiny import tiny_model, token_ids

TESTS = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _perturbed(pm: pt.PrefixModel) -> pt.PrefixModel:
    with torch.no_grad():
        for p in pm.trainable_parameters():
            p.add_(torch.randn_like(p))
    return pm.eval()


def _into_cache(cache: Path, repo: str, folder: Path) -> None:
    """What ``snapshot_download`` leaves behind for ``repo`` at revision main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / COMMIT)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)


OFFLINE = r"""
import json, sys, torch
import prefixtune as pt
from prefixtune.io.checkpoint import CheckpointError
from tiny import tiny_model, token_ids
ids = token_ids("llama", 2, 5)
out = {}
for name in ("user/tiny-prefix", "user/tiny-peft"):
    pm = pt.PrefixModel.from_pretrained(tiny_model("llama"), name).eval()
    with torch.no_grad():
        out[name] = pm(input_ids=ids).logits.tolist()
out["load"] = pt.load(tiny_model("llama"), "user/tiny-prefix").adapter_config.method
try:
    pt.load(tiny_model("llama"), "user/never-downloaded")
except CheckpointError as e:
    out["missing"] = str(e)
print(json.dumps(out))
"""


def test_from_pretrained_reads_hub_repositories_from_the_cache_offline(tmp_path):
    ids = token_ids("llama", 2, 5)
    ours = _perturbed(pt.wrap(tiny_model("llama"), pt.PrefixConfig(prefix_length=3, hidden_size=16)))
    ours.save_pretrained(tmp_path / "ours")
    peft_style = _perturbed(pt.wrap(tiny_model("llama"), pt.PromptConfig(num_virtual_tokens=2)))
    peft_style.save_peft(tmp_path / "peft")
    cache = tmp_path / "hub"
    _into_cache(cache, "user/tiny-prefix", tmp_path / "ours")
    _into_cache(cache, "user/tiny-peft", tmp_path / "peft")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home"),
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", OFFLINE], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(got["user/tiny-prefix"]), ours(input_ids=ids).logits)
        torch.testing.assert_close(torch.tensor(got["user/tiny-peft"]), peft_style(input_ids=ids).logits)
    assert got["load"] == "prefix"
    assert "user/never-downloaded" in got["missing"] and "HF_HUB_OFFLINE" in got["missing"]


def test_push_to_hub_uploads_the_adapter_and_its_card_in_one_commit(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create", repo_id, kw))

    def upload_folder(self, repo_id, folder_path, **kw):
        shutil.copytree(folder_path, tmp_path / "uploaded")
        calls.append(("upload", repo_id, kw))
        return "commit-info"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    pm = _perturbed(pt.wrap(tiny_model("llama"), pt.PrefixConfig(prefix_length=3, hidden_size=16)))
    assert pm.push_to_hub("me/adapter", private=True, base_model_name="HuggingFaceTB/SmolLM2-135M") == "commit-info"
    assert [c[:2] for c in calls] == [("create", "me/adapter"), ("upload", "me/adapter")]
    assert calls[0][2]["private"] is True and calls[0][2]["exist_ok"] is True
    uploaded = tmp_path / "uploaded"
    assert {"prefixtune_config.json", "adapter.safetensors", "trainable.safetensors", "README.md"} \
        <= {p.name for p in uploaded.iterdir()}
    ids = token_ids("llama", 2, 5)
    with torch.no_grad():
        torch.testing.assert_close(pt.load(tiny_model("llama"), uploaded).eval()(input_ids=ids).logits,
                                   pm(input_ids=ids).logits)
    assert ModelCard.load(uploaded / "README.md").data.base_model == "HuggingFaceTB/SmolLM2-135M"


def test_a_missing_local_directory_is_named():
    with pytest.raises(CheckpointError, match="no such"):
        pt.load(tiny_model("llama"), "/nonexistent/adapter")
