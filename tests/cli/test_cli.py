"""The command line end to end on a tiny model: train -> eval -> generate, --help, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]


def cli(*args, timeout=600):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "prefixtune.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_train_eval_generate(tiny_dir, e2e_dir, tmp_path):
    run = tmp_path / "run"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {tiny_dir}\ntask: e2e\ndata: {e2e_dir}\nsteps: 4\nbatch_size: 4\n"
                   "adapter:\n  prefix_length: 3\n  hidden_size: 16\n")
    r = cli("train", "--config", cfg, "--eval-every", 0, "--eval-limit", 3, "--max-new-tokens", 5,
            "--set", "reparameterization=direct", "--out", run, "--test-split", "dev", "--test-limit", 2,
            "--report-to", "tensorboard")
    assert r.returncode == 0, r.stderr[-2000:]
    assert " INFO prefixtune.train.loop: world size 1 (NO), devices cpu" in r.stderr  # progress: logged on stderr
    assert list((run / "trackers" / "prefixtune").glob("events.out.tfevents.*"))
    assert "e2e dev:" in r.stdout and "bleu" in r.stdout
    assert "e2e dev (2 inputs, best adapter): bleu" in r.stdout  # scored after training, with predictions
    assert json.loads((run / "scores-dev.json").read_text())["inputs"] == 2
    saved = json.loads((run / "config.json").read_text())
    assert saved["steps"] == 4 and saved["adapter"] == {"prefix_length": 3, "hidden_size": 16,
                                                        "reparameterization": "direct"}
    assert json.loads((run / "scores-dev.json").read_text())["no_repeat_ngram"] == 0  # the run's: no guard
    r = cli("eval", "--run", run, "--split", "dev", "--limit", 2, "--no-repeat-ngram", 2)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run / "predictions-dev.jsonl").is_file()
    assert json.loads((run / "scores-dev.json").read_text())["no_repeat_ngram"] == 2
    r = cli("generate", "--run", run, "--input", "name[Place 1], food[Thai]\\n", "--max-new-tokens", 4,
            "--no-repeat-ngram", 3)
    assert r.returncode == 0 and "name[Place 1]" in r.stdout
    r = cli("params", "--model", tiny_dir, "--prefix-length", 3, "--reparameterization", "direct")
    assert r.returncode == 0 and r.stdout.startswith("trainable 192 ")  # l=3 x 2 layers x (K,V) x 2 kv heads x 8


@pytest.mark.parametrize("method, options", [
    ("prompt", ["num_virtual_tokens=7"]),
    ("ptuning_v2", ["prefix_length=4", "num_labels=3"]),
    ("prefix", ["gate=true"]),
])
def test_params_counts_every_registered_method(tiny_dir, method, options):
    from transformers import AutoModelForCausalLM

    import prefixtune as pt
    from prefixtune.cli.options import parse_set
    from prefixtune.methods import REGISTRY

    r = cli("params", "--model", tiny_dir, "--method", method, *[a for o in options for a in ("--set", o)])
    assert r.returncode == 0, r.stderr[-2000:]
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    config = REGISTRY[method].config
    want = pt.wrap(model, config(**parse_set(options, config.options(), method))).count_parameters()
    assert r.stdout.strip() == str(want)


def test_help_documents_every_option():
    r = cli("train", "--help")
    assert r.returncode == 0
    for option in ("--steps", "--batch-size", "--grad-accum", "--lr", "--bf16", "--gradient-checkpointing",
                   "--eval-every", "--patience", "--input-column", "--target-column", "--label-column", "--set"):
        assert option in r.stdout, option


@pytest.mark.parametrize("args, message", [
    (["train", "--model", "no-such-model", "--steps", "1"], "unknown model 'no-such-model'"),
    (["train", "--task", "mine", "--data", "nowhere.csv"], "give --input-column"),
    (["train", "--task", "mine", "--data", "nowhere.csv", "--input-column", "a", "--target-column", "b"],
     "no such file or directory"),
    (["train", "--steps", "0"], "steps must be >= 1"),
    (["train", "--steps", "1.5"], "argument --steps: invalid int value: '1.5'"),
    (["train", "--set", "prefx_length=3"], "--set prefx_length: method prefix has no option 'prefx_length' "
                                           "(did you mean 'prefix_length'?); its options: dropout, exclude_layers"),
    (["params", "--gate", "maybe"], "argument --gate: Truthy value expected"),
    (["eval", "--run", "/nonexistent-run"], "not a run directory"),
    (["params", "--model", "no-such-model"],
     "prefixtune: error: unknown model 'no-such-model': not a bundled name (smollm2-135m, minilm-l6), "
     "not a local directory, and not a hub id of the form owner/name"),
])
def test_bad_input_is_one_clear_line(args, message, tmp_path):
    r = cli(*args, "--out", tmp_path / "x") if args[0] == "train" else cli(*args)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prefixtune: error:") and message in lines[0], r.stderr[-2000:]


def test_missing_column_is_named(tiny_dir, tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("question,answer\nhi,there\n")
    r = cli("train", "--model", tiny_dir, "--task", "qa", "--data", data, "--input-column", "q",
            "--target-column", "answer", "--steps", "1", "--out", tmp_path / "run")
    assert r.returncode == 2
    assert "column 'q'" in r.stderr and "['answer', 'question']" in r.stderr


def test_a_built_in_task_without_data_offline_says_where_the_data_goes(tiny_dir, tmp_path):
    """No local copy (no $PREFIXTUNE_DATA, no ../shared/data from here) and the hub switched off."""
    env = {k: v for k, v in os.environ.items() if k != "PREFIXTUNE_DATA"}
    env.update(TQDM_DISABLE="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "c"))
    (tmp_path / "work").mkdir()
    r = subprocess.run([sys.executable, "-m", "prefixtune.cli", "train", "--model", str(tiny_dir), "--task", "e2e",
                        "--steps", "1", "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=600,
                       env=env, cwd=tmp_path / "work")
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prefixtune: error: task 'e2e' has no data: no folder "
                                                   f"{tmp_path / 'shared' / 'data' / 'e2e'}"), r.stderr[-2000:]
    assert "Put train.csv, dev.csv and test.csv with columns mr, ref" in lines[0]


def test_adapter_for_another_model_is_refused(tiny_dir, e2e_dir, tmp_path):
    import prefixtune as pt
    from tiny import tiny_model

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": str(tiny_dir), "task": "e2e", "data": str(e2e_dir)}))
    pt.wrap(tiny_model("gpt2"), pt.PrefixConfig(prefix_length=2)).save_pretrained(run / "best")
    r = cli("eval", "--run", run, "--split", "dev")
    assert r.returncode == 2 and "another shape" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _shared_data() -> Path:
    from prefixtune.data.tasks import find_shared_data

    where = find_shared_data(None)
    if where is None or not (where / "e2e").is_dir():
        pytest.skip("../shared/data is not here")
    return where


def test_bundled_smollm2_train_eval_generate_params(tmp_path):
    """Short real run on the bundled SmolLM2 and the shared E2E data, through every subcommand."""
    _shared_data()
    run = tmp_path / "run"
    r = cli("train", "--config", ROOT / "configs" / "e2e-smollm2.yaml", "--steps", 2, "--batch-size", 2,
            "--eval-every", 0, "--eval-limit", 2, "--test-limit", 2, "--max-new-tokens", 6, "--train-limit", 50,
            "--out", run)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "e2e test (2 inputs, best adapter): bleu" in r.stdout
    result = json.loads((run / "result.json").read_text())
    assert result["parameters"]["stored"] == 115_200 and result["steps_done"] == 2
    assert result["train_seconds"] > 0 and result["peak_memory_mib"] > 0
    r = cli("eval", "--run", run, "--split", "test", "--limit", 2, "--no-loss", "--num-beams", 2)
    assert r.returncode == 0 and "e2e test (2 inputs" in r.stdout, r.stderr[-3000:]
    r = cli("generate", "--run", run, "--input", "name[Aromi], food[Thai]\\n", "--max-new-tokens", 5)
    assert r.returncode == 0 and "name[Aromi]" in r.stdout, r.stderr[-3000:]
    r = cli("params", "--model", "smollm2-135m", "--prefix-length", 10, "--reparameterization", "direct")
    assert r.returncode == 0 and r.stdout.startswith("trainable 115,200 "), r.stdout


def test_bundled_minilm_ptuning_v2_on_sst2(tmp_path):
    _shared_data()
    run = tmp_path / "run"
    r = cli("train", "--model", "minilm-l6", "--task", "sst2", "--method", "ptuning_v2", "--set", "pooling=mean",
            "--steps", 3, "--batch-size", 8, "--train-limit", 64, "--eval-every", 0, "--eval-limit", 16,
            "--max-length", 32, "--out", run)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sst2 dev:" in r.stdout and "accuracy" in r.stdout
    r = cli("eval", "--run", run, "--split", "dev", "--limit", 16)
    assert r.returncode == 0 and "sst2 dev (16 inputs" in r.stdout, r.stderr[-3000:]
    predictions = [json.loads(line) for line in (run / "predictions-dev.jsonl").read_text().splitlines()]
    r = cli("generate", "--run", run, *[a for p in predictions[:3] for a in ("--input", p["input"])])
    assert r.returncode == 0, r.stderr[-3000:]  # a classification run: each input's label
    assert r.stdout.splitlines() == [f"{p['input']!r} -> {p['prediction']}" for p in predictions[:3]]
