"""The command line generated from the typed configs, in process: each field's own help with its
default and choices, ``--set`` keys listed and validated per method, typed values (lists, bools,
None), ``--print-config`` round trips, ``params`` for every method, bad values as one clear line.

None of these load a model or data unless the test says so: a bad value must be refused before
anything loads (the cases pass ``--model no-such-model``, whose error would come first otherwise).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from prefixtune.cli import main

ROOT = Path(__file__).resolve().parents[2]


def run(argv, capsys) -> tuple[int, str, str]:
    """``prefixtune *argv`` in this process: (exit status, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own exit (--help, a usage error)
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps help to the terminal's width


def help_of(text: str, option: str) -> str:
    """The help entry of ``option`` in an argparse help text, on one line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"\s+{re.escape(option)}[ ,=\[]|\s+{re.escape(option)}$",
                                                                line))
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"\s{2}\S", lines[i]) or not lines[i].strip()),
               len(lines))
    return " ".join(" ".join(lines[start:end]).split())


def one_error_line(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prefixtune: error: "), err
    return lines[0]


# ------------------------------------------------------------------------------------------- help


def test_train_help_gives_each_field_its_own_text_and_default(capsys):
    code, out, _ = run(["train", "--help"], capsys)
    assert code == 0
    lr, seed, where = help_of(out, "--lr"), help_of(out, "--seed"), help_of(out, "--out")
    assert "learning rate" in lr and "(default: auto)" in lr, lr
    assert "seeds the data order" in seed and "(default: 0)" in seed, seed
    assert "run directory" in where and "(default: runs/run)" in where, where
    steps = help_of(out, "--steps")
    assert "optimizer steps" in steps and "(default: 300)" in steps and "lr" not in steps.split(), steps
    assert "(default: None)" in help_of(out, "--max-seconds") and "(default: 8)" in help_of(out, "--batch-size")
    assert "bf16 autocast" in help_of(out, "--bf16")
    method = help_of(out, "--method")
    assert "{prefix,prompt,ptuning_v2,lora,full}" in method and "(default: prefix)" in method
    assert "P-tuning v2" in method and "LoRA" in method


def test_train_help_lists_the_set_keys_of_the_chosen_method(capsys):
    _, prefix, _ = run(["train", "--help"], capsys)
    listing = prefix[prefix.index("--set KEY=VALUE options of --method prefix"):]
    assert "prefix_length" in listing and "reparameterization" in listing and "exclude_layers" in listing
    assert "{mlp,direct}" in listing and "(default: 10)" in listing
    assert "num_virtual_tokens" not in listing
    _, prompt, _ = run(["train", "--method", "prompt", "--help"], capsys)
    listing = prompt[prompt.index("--set KEY=VALUE options of --method prompt"):]
    assert "num_virtual_tokens" in listing and "{none,mlp,lstm}" in listing and "prefix_length" not in listing
    assert "num_labels" in listing and "head options (any of them adds the head)" in listing
    _, ptv2, _ = run(["train", "--method=ptuning_v2", "--help"], capsys)
    listing = ptv2[ptv2.index("--set KEY=VALUE options of --method ptuning_v2"):]
    assert "prefix_length" in listing and "(default: 16)" in listing and "pooling" in listing  # the paper's 16
    _, lora, _ = run(["train", "--method", "lora", "--help"], capsys)
    assert "target_modules" in lora[lora.index("--set KEY=VALUE options of --method lora"):]


def test_train_help_with_a_config_file_lists_its_methods_keys(tmp_path, capsys):
    f = tmp_path / "run.yaml"
    f.write_text("method: prompt\n")
    _, out, _ = run(["train", "--config", f, "--help"], capsys)
    assert "--set KEY=VALUE options of --method prompt" in out
    _, out, _ = run(["train", "--config", f, "--method", "lora", "--help"], capsys)  # --method overrides the file
    assert "--set KEY=VALUE options of --method lora" in out
    _, out, _ = run(["train", "--config", tmp_path / "missing.yaml", "--help"], capsys)
    assert "--set KEY=VALUE options of --method prefix" in out  # the run itself reports the missing file


def test_params_help_shows_prefix_fields_with_choices_and_defaults(capsys):
    code, out, _ = run(["params", "--help"], capsys)
    assert code == 0
    rep = help_of(out, "--reparameterization")
    assert "{mlp,direct}" in rep and "(default: mlp)" in rep
    assert "(default: False)" in help_of(out, "--gate") and "(default: 10)" in help_of(out, "--prefix-length")


# ---------------------------------------------------------------------------------- --set values


def printed_config(argv, capsys) -> dict:
    code, out, err = run(["train", *argv, "--print-config"], capsys)
    assert code == 0, err
    return yaml.safe_load(out)


def test_set_values_are_typed_by_the_method_config(capsys):
    cfg = printed_config(["--set", "exclude_layers=[0, 1]", "--set", "gate=False", "--set", "init_text=none",
                          "--set", "dropout=0.1", "--set", "prefix_length=3", "--set", "locations=decoder_self"],
                         capsys)
    assert cfg["adapter"] == {"exclude_layers": [0, 1], "gate": False, "init_text": None, "dropout": 0.1,
                              "prefix_length": 3, "locations": ["decoder_self"]}
    assert printed_config(["--set", "exclude_layers=2,3", "--set", "gate=true"], capsys)["adapter"] == {
        "exclude_layers": [2, 3], "gate": True}
    assert printed_config(["--set", "exclude_layers=[]"], capsys)["adapter"] == {"exclude_layers": []}
    lora = printed_config(["--method", "lora", "--set", "target_modules=[q_proj,v_proj]", "--set", "r=4"], capsys)
    assert lora["adapter"] == {"target_modules": ["q_proj", "v_proj"], "r": 4}
    text = printed_config(["--set", "init=text", "--set", "init_text=table-to-text: 1,2"], capsys)
    assert text["adapter"]["init_text"] == "table-to-text: 1,2"  # a str option takes the text as it is


def test_set_merges_with_the_config_files_adapter(tmp_path, capsys):
    f = tmp_path / "run.yaml"
    f.write_text("steps: 5\nadapter:\n  prefix_length: 3\n  hidden_size: 16\n")
    cfg = printed_config(["--config", f, "--set", "hidden_size=32", "--steps", "6"], capsys)
    assert cfg["adapter"] == {"prefix_length": 3, "hidden_size": 32} and cfg["steps"] == 6


# ----------------------------------------------------------------------------------- --print-config


@pytest.mark.parametrize("given,printed", [([], "lr: auto"), (["--lr", "auto"], "lr: auto"),
                                           (["--lr", "1e-3"], "lr: 0.001")])
def test_lr_is_a_rate_or_auto(given, printed, capsys):
    code, out, err = run(["train", *given, "--print-config"], capsys)
    assert code == 0, err
    assert printed in out.splitlines()


def test_print_config_round_trips_through_config(tmp_path, capsys):
    from prefixtune.train.config import TrainConfig

    argv = ["--model", "some/model", "--steps", "7", "--lr", "1e-3", "--bf16", "--stop", "END", "--stop", "\n",
            "--patience", "none", "--eval-limit", "none", "--method", "ptuning_v2", "--task", "sst2",
            "--set", "num_labels=3", "--set", "prefix_length=4", "--set", "exclude_layers=0,2", "--out", tmp_path / "r"]
    code, first, err = run(["train", *argv, "--print-config"], capsys)
    assert code == 0, err
    saved = tmp_path / "printed.yaml"
    saved.write_text(first)
    code, again, err = run(["train", "--config", saved, "--print-config"], capsys)
    assert code == 0, err
    assert again == first
    cfg = TrainConfig.from_dict(yaml.safe_load(first))
    assert cfg == TrainConfig(model="some/model", steps=7, lr=1e-3, bf16=True, stop=["END", "\n"], patience=None,
                              eval_limit=None, method="ptuning_v2", task="sst2", out=str(tmp_path / "r"),
                              adapter={"num_labels": 3, "prefix_length": 4, "exclude_layers": [0, 2]})
    # the printed file is a full config: every field, so the run does not depend on today's defaults
    assert set(yaml.safe_load(first)) == set(TrainConfig().to_dict())


def test_a_run_directorys_config_json_reproduces_through_print_config(tmp_path, capsys):
    import json

    from prefixtune.train.config import TrainConfig

    old = {"model": "m", "task": "e2e", "steps": 4, "adapter": {"prefix_length": 3}, "stop": ["\n"]}
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = printed_config(["--config", tmp_path / "config.json"], capsys)
    assert TrainConfig.from_dict(cfg) == TrainConfig.from_dict(old)


# ------------------------------------------------------------------------------------------ params


def test_params_gate_false_means_false(tiny_dir, capsys):
    import prefixtune as pt
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    without = str(pt.wrap(model, pt.PrefixConfig(prefix_length=3, gate=False)).count_parameters())
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    gated = str(pt.wrap(model, pt.PrefixConfig(prefix_length=3, gate=True)).count_parameters())
    assert without != gated
    for flag, want in ((["--gate", "False"], without), (["--gate", "false"], without), (["--gate"], gated),
                       (["--gate", "true"], gated), ([], without)):
        code, out, err = run(["params", "--model", tiny_dir, "--prefix-length", "3", *flag], capsys)
        assert code == 0, err
        assert out.strip() == want, flag


def test_params_options_apply_to_every_method(tiny_dir, capsys):
    import prefixtune as pt
    from transformers import AutoModelForCausalLM

    want = pt.wrap(AutoModelForCausalLM.from_pretrained(tiny_dir),
                   pt.PTuningV2Config(prefix_length=4, num_labels=3, exclude_layers=(1,))).count_parameters()
    code, out, err = run(["params", "--model", tiny_dir, "--method", "ptuning_v2", "--prefix-length", "4",
                          "--exclude-layers", "1", "--set", "num_labels=3"], capsys)
    assert code == 0, err
    assert out.strip() == str(want)
    line = one_error_line(*run(["params", "--model", "no-such-model", "--method", "prompt", "--prefix-length", "4"],
                               capsys)[::2])
    assert "method prompt has no option 'prefix_length'" in line and "num_virtual_tokens" in line


# ---------------------------------------------------------------------------------- bad input: exit 2


@pytest.mark.parametrize("argv, message", [
    (["train", "--steps", "1.5"], "argument --steps: invalid int value: '1.5'"),
    (["train", "--steps", "abc"], "argument --steps: invalid int value: 'abc'"),
    (["train", "--lr", "fast"], "argument --lr: --lr: expected a float or one of auto, got 'fast'"),
    (["train", "--method", "nope"], "argument --method: invalid choice: 'nope'"),
    (["train", "--bf16", "maybe"], "argument --bf16"),
    (["train", "--set", "foo=1"], "--set foo: method prefix has no option 'foo'"),
    (["train", "--set", "prefx_length=3"], "did you mean 'prefix_length'?"),
    (["train", "--method", "prompt", "--set", "prefix_length=3"], "method prompt has no option 'prefix_length'"),
    (["train", "--set", "prefix_length"], "--set expects KEY=VALUE, got 'prefix_length'"),
    (["train", "--set", "prefix_length=abc"], "--set prefix_length: expected an int, got 'abc'"),
    (["train", "--set", "gate=maybe"], "--set gate: expected true or false, got 'maybe'"),
    (["train", "--set", "exclude_layers=[0,x]"], "--set exclude_layers: expected an int, got 'x'"),
    (["train", "--set", "reparameterization=lstm"], "--set reparameterization: expected one of mlp, direct"),
    (["train", "--set", "prefix_length=0"], "prefix_length must be a positive integer"),
    (["params", "--gate", "maybe"], "argument --gate"),
    (["params", "--method", "nope"], "argument --method: invalid choice: 'nope'"),
    (["params", "--set", "prefx_length=3"], "did you mean 'prefix_length'?"),
    (["params", "--reparameterization", "lstm"], "argument --reparameterization: invalid choice"),
    (["train", "--no-such-option"], "unrecognized arguments: --no-such-option"),
])
def test_bad_values_are_one_clear_line(argv, message, capsys):
    line = one_error_line(*run([*argv, "--model", "no-such-model"], capsys)[::2])
    assert message in line, line
    assert "unknown model" not in line  # refused before anything loads


@pytest.mark.parametrize("text, message", [
    ("steps: '10'\n", "steps must be an int, got '10'"),
    ("steps: 1.5\n", "steps must be an int, got 1.5"),
    ("lr: 1e-3\n", "lr must be a float or one of auto, got '1e-3'"),
    ("bf16: 'no'\n", "bf16 must be true or false or one of auto, got 'no'"),
    ("stop: 5\n", "stop must be a list of str, got 5"),
    ("method: nope\n", "method must be one of prefix, prompt, ptuning_v2, lora, full, got 'nope'"),
    ("adapter:\n  prefx_length: 3\n", "did you mean 'prefix_length'?"),
    ("adapter:\n  hidden_size: '512'\n", "adapter.hidden_size must be an int, got '512'"),
    ("adapter: [1, 2]\n", "adapter must be a mapping"),
    ("stepz: 3\n", "did you mean 'steps'?"),
    ("steps: [oops\n", "not valid YAML"),
])
def test_bad_config_files_are_one_clear_line(text, message, tmp_path, capsys):
    f = tmp_path / "run.yaml"
    f.write_text(text)
    line = one_error_line(*run(["train", "--config", f, "--model", "no-such-model"], capsys)[::2])
    assert message in line and str(f) in line, line


# ------------------------------------------------------------------- the documented commands parse


def documented_commands() -> list[str]:
    """Every ``prefixtune ...`` command line of the README, docs/, scripts/ and configs/ (in code
    blocks, comments or backticks), continuation lines joined, trailing comments dropped."""
    found = []
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "scripts").glob("*.sh")),
             *sorted((ROOT / "configs").glob("*.yaml"))]
    for path in files:
        text = re.sub(r"\\\n\s*", " ", path.read_text())
        for m in re.finditer(r"(?:^|[`\s/])prefixtune ((?:params|train|eval|generate|compare|serve)\b[^`\n#]*)", text,
                             re.M):
            command = re.split(r"\s{2,}[(#]", m.group(1))[0].strip().rstrip(".;,)")
            if " " in command and not {"|", "$"} & set(command):  # a bare "prefixtune train" is prose
                found.append(command)
    return sorted(set(found))


def test_documented_commands_parse():
    from prefixtune.cli.main import parse_args
    from prefixtune.cli.train import train_config
    from prefixtune.compare import CompareConfig

    commands = documented_commands()
    assert len(commands) >= 15 and any("--set prefix_length=20" in c for c in commands), commands
    for command in commands:
        if "--help" in command.split():
            with pytest.raises(SystemExit) as e:
                parse_args(shlex.split(command))
            assert e.value.code == 0, command
            continue
        args = parse_args(shlex.split(command))
        if args.command == "train":
            if args.config:
                args.config = str(ROOT / args.config)
            train_config(args)  # the config file and every override resolve to a valid TrainConfig
        elif args.command == "compare" and (ROOT / args.config).is_file():
            assert CompareConfig.load(ROOT / args.config).runs()  # every run's TrainConfig is valid


@pytest.mark.parametrize("flags, value", [(["--bf16"], True), (["--bf16", "auto"], "auto"),
                                          (["--bf16", "false"], False), (["--bf16", "--steps", "3"], True), ([], False)])
def test_bf16_is_true_false_or_auto(flags, value, capsys):
    code, out, err = run(["train", *flags, "--print-config"], capsys)
    assert code == 0, err
    assert yaml.safe_load(out)["bf16"] == value
