"""Bad options and inputs end in one line ``prefixtune: error: ...`` and exit status 2, never a traceback."""

from __future__ import annotations

import importlib.util

import pytest

from prefixtune.cli.main import main


@pytest.mark.parametrize("args,message", [
    (["--save-every", "0"], "save_every must be >= 1"),
    (["--num-beams", "0"], "num_beams must be >= 1"),
    (["--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
    (["--eval-every", "-1"], "eval_every must be >= 0"),
    (["--eval-limit", "0"], "eval_limit must be >= 1"),
    (["--patience", "0"], "patience must be >= 1"),
    (["--max-seconds", "-1"], "max_seconds must be a finite number >= 0"),
    (["--lr", "inf"], "lr must be a finite number"),
    (["--lr", "nan"], "lr must be a finite number"),
    (["--lr", "1e300"], "lr must be a finite number >= 0 and <= 1000, got 1e+300 (a larger one can only diverge; auto: searched before training)"),
    (["--set", "init_std=-1"], "init_std must be a finite number >= 0"),
    (["--method", "prompt", "--set", "init_range=nan"], "init_range must be a finite number >= 0"),
    (["--max-grad-norm", "-1"], "max_grad_norm must be a finite number >= 0"),
    (["--warmup-ratio", "1.5"], "warmup_ratio must be"),
])
def test_bad_values_are_refused_in_one_line(args, message, capsys):
    assert main(["train", *args, "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prefixtune: error:") and message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("args,message", [
    (["eval", "--run", "r", "--limit", "0"], "argument --limit: expected a finite int >= 1, got '0'"),
    (["eval", "--run", "r", "--limit", "-1"], "argument --limit: expected a finite int >= 1, got '-1'"),
    (["eval", "--run", "r", "--num-beams", "0"], "argument --num-beams: expected a finite int >= 1"),
    (["eval", "--run", "r", "--show", "-1"], "argument --show: expected a finite int >= 0"),
    (["eval", "--run", "r", "--limit", "1.5"], "argument --limit: expected int, got '1.5'"),
    (["generate", "--run", "r", "--input", "x", "--max-new-tokens", "0"], "argument --max-new-tokens: expected"),
    (["generate", "--run", "r", "--input", "x", "--num-beams", "-2"], "argument --num-beams: expected"),
    (["generate", "--run", "r", "--input", "x", "--temperature", "-1"], "argument --temperature: expected a finite"),
    (["generate", "--run", "r", "--input", "x", "--temperature", "nan"], "argument --temperature: expected a finite"),
    (["generate", "--run", "r", "--input", "x", "--temperature", "inf"], "argument --temperature: expected a finite"),
])
def test_eval_and_generate_counts_are_checked(args, message, capsys):
    """``--limit -1`` once scored all inputs but the last, ``--temperature nan`` decoded greedily."""
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prefixtune: error:") and message in err and len(err.splitlines()) == 1


def test_config_paths_that_are_not_config_files(tmp_path, capsys):
    """Before: a directory gave an IsADirectoryError traceback."""
    for path, message in ((tmp_path, "cannot read it as a config file"), (tmp_path / "nope.yaml", "no such config file")):
        assert main(["train", "--config", str(path), "--print-config"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and err.count(str(path)) == 1


def test_out_naming_a_file(tmp_path, capsys):
    """Before: FileExistsError traceback (after the model had loaded)."""
    (tmp_path / "afile").write_text("x")
    assert main(["train", "--out", str(tmp_path / "afile"), "--model", str(tmp_path / "no-model"), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "a file, not a directory" in err


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_missing_tracker_package_is_named(tmp_path, capsys):
    """Before: a ModuleNotFoundError traceback."""
    assert main(["train", "--report-to", "wandb", "--out", str(tmp_path / "r"), "--model", str(tmp_path / "m"),
                 "--steps", "1"]) == 2
    assert "pip install wandb" in capsys.readouterr().err.strip().splitlines()[-1]
