"""The README's main job, shortened: the real CLI on the bundled SmolLM2 and the shared E2E data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from prefixtune.demo import find_data

pytestmark = pytest.mark.real


def test_demo_trains_saves_and_reloads(tmp_path):
    try:
        find_data()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "prefixtune.cli", "demo", "--steps", "3", "--batch-size", "2", "--show", "2",
           "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1],
                            env={**os.environ, "TQDM_DISABLE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reloaded (folded) generations identical: True" in result.stdout
    assert "stored 115,200 (0.086%)" in result.stdout
    assert (out / "prefixtune_config.json").is_file()


def test_cli_errors_are_one_line():
    result = subprocess.run([sys.executable, "-m", "prefixtune.cli", "params", "--model", "no-such-model"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "prefixtune: error: unknown model 'no-such-model': not a bundled name (smollm2-135m, minilm-l6), "
        "not a local directory, and not a hub id of the form owner/name"]
