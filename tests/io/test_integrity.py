"""Saved adapters that are damaged, hostile or for another base: a CheckpointError (or a warning), never
a crash, a silent wrong adapter or a huge allocation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prefixtune as pt
from prefixtune.core.layout import ShapeMismatchError
from prefixtune.io.checkpoint import ADAPTER_NAME, CONFIG_NAME, CheckpointError
from prefixtune.io.files import sha256
from tiny import tiny_model

TESTS = Path(__file__).resolve().parents[1]


def _saved(tmp_path: Path, config=None, seed: int = 0) -> Path:
    pm = pt.wrap(tiny_model("llama", seed=seed), config or pt.PrefixConfig(prefix_length=3, hidden_size=16))
    pm.save_pretrained(tmp_path / "a")
    return tmp_path / "a"


def _manifest(path: Path) -> dict:
    return json.loads((path / CONFIG_NAME).read_text())


def _write_manifest(path: Path, manifest: dict) -> None:
    (path / CONFIG_NAME).write_text(json.dumps(manifest))


def test_a_corrupt_inference_file_is_refused_even_when_the_trainable_state_is_there(tmp_path):
    path = _saved(tmp_path)
    data = bytearray((path / ADAPTER_NAME).read_bytes())
    data[-5] ^= 0xFF
    (path / ADAPTER_NAME).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="adapter.safetensors"):
        pt.load(tiny_model("llama"), path)


def test_an_inference_file_that_disagrees_with_the_trainable_state_is_refused(tmp_path):
    """Both files verify, but adapter.safetensors was replaced by another adapter's (manifest re-signed)."""
    path = _saved(tmp_path)
    other = _saved(tmp_path / "other", seed=1)
    pm = pt.load(tiny_model("llama", seed=1), other)
    with torch.no_grad():
        for p in pm.trainable_parameters():
            p.add_(1.0)
    pm.save_pretrained(other)
    (path / ADAPTER_NAME).write_bytes((other / ADAPTER_NAME).read_bytes())
    manifest = _manifest(path)
    manifest["files"][ADAPTER_NAME] = sha256((path / ADAPTER_NAME).read_bytes())
    _write_manifest(path, manifest)
    with pytest.raises(CheckpointError, match="do not match"):
        pt.load(tiny_model("llama"), path)


BAD_VALUES = [None, 5, "x", [], [1], {}, {"a": 1}, True, -1, 1e300]
KEYS = ["config", "method", "layout", "prefixed_layers", "files", "folded", "base_model"]
#: edits that are well-formed: any base model name (it is only recorded), and "folded", which the loader
#: reads from the files present rather than from this flag
HARMLESS = [("base_model", None), ("base_model", "x"), ("folded", True)]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
def test_a_malformed_manifest_is_a_checkpoint_error(tmp_path, key, value):
    path = _saved(tmp_path)
    manifest = _manifest(path)
    manifest[key] = value
    _write_manifest(path, manifest)
    if (key, value) in HARMLESS:
        pt.load(tiny_model("llama"), path)
        return
    with pytest.raises(CheckpointError):
        pt.load(tiny_model("llama"), path)


def _nested(value):
    return st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True)
                        | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(["config", "layout", "prefixed_layers", "files", "top"]), key=st.text(max_size=16),
       value=_nested(None))
def test_any_manifest_edit_loads_or_is_a_checkpoint_error(tmp_path_factory, where, key, value):
    path = _saved(tmp_path_factory.mktemp("h"))
    manifest = _manifest(path)
    target = manifest if where == "top" else manifest[where]
    if isinstance(target, dict):
        existing = sorted(target)
        target[existing[hash(key) % len(existing)] if existing and key == "" else key] = value
    _write_manifest(path, manifest)
    try:
        pt.load(tiny_model("llama"), path)
    except (CheckpointError, ShapeMismatchError):  # the documented errors of loading
        pass


LIMITED = r"""
import resource, sys
import prefixtune as pt
from prefixtune.io.checkpoint import CheckpointError
from tiny import tiny_model
model = tiny_model("llama")
with open("/proc/self/status") as f:
    vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm + 400 * 2**20, resource.RLIM_INFINITY))
try:
    pt.load(model, sys.argv[1])
except CheckpointError as e:
    print("CheckpointError:", e)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc")
def test_sizes_in_a_small_config_are_checked_before_anything_is_allocated(tmp_path):
    """A 2 KB config that asks for a 2 GB prefix MLP (the tensor files are the small real ones)."""
    path = _saved(tmp_path)
    manifest = _manifest(path)
    manifest["config"]["hidden_size"] = 2 * 10**7
    _write_manifest(path, manifest)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", LIMITED, str(path)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "CheckpointError" in r.stdout, (r.stdout, r.stderr[-2000:])


def test_loading_onto_another_base_model_of_the_same_shape_warns(tmp_path):
    path = _saved(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pt.load(tiny_model("llama", seed=0), path)  # its own base: no warning
    with pytest.warns(UserWarning, match="another base model"):
        pt.load(tiny_model("llama", seed=1), path)
    assert "base_fingerprint" in _manifest(path)
