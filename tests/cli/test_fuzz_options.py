"""Property-based fuzzing of ``prefixtune train``'s options and config files: whatever the command
line or the file holds, it ends in a config that prints as YAML and loads back to itself, or in
one line ``prefixtune: error: ...`` with exit status 2; never a traceback, never another status.

The flags are the train parser's own (every option it has, each spelling), so a flag added later
is fuzzed too; values are drawn from what people mistype: numbers out of range, ``nan``/``inf``,
``1e309``, fractions for counts, text for numbers, empty and non-ASCII text, ``--set`` pairs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefixtune.cli.main import _parser, main
from prefixtune.core.config import ConfigError
from prefixtune.train.config import TrainConfig

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
NOT_FUZZED = {"--config", "--print-config", "--help", "-h", "--no-resume"}  # --config: its own test below


def _train_flags() -> list[str]:
    train = _parser(["train"])._subparsers._group_actions[0].choices["train"]
    return sorted(s for a in train._actions if not isinstance(a, argparse._HelpAction)
                  for s in a.option_strings if s not in NOT_FUZZED)


FLAGS = _train_flags()
SET_KEYS = ["prefix_length", "hidden_size", "reparameterization", "dropout", "gate", "init", "num_virtual_tokens",
            "layers", "nope", ""]
value = st.one_of(
    st.integers(-3, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "1.5", "0", "-1", "", " ", "true", "false", "none", "[]",
                     "[0,1]", "0,1", "{0}", "{mr}", "Café", "\\n", "direct", "mlp", "e2e", "sst2", "prefix",
                     "prompt", "ptuning_v2", "lora", "cpu"]),
    st.text(max_size=8),
)
set_pair = st.tuples(st.sampled_from(SET_KEYS), value).map(lambda kv: f"{kv[0]}={kv[1]}")
token_pair = st.one_of(st.tuples(st.sampled_from(FLAGS), value).map(list),
                       set_pair.map(lambda p: ["--set", p]),
                       st.sampled_from(FLAGS).map(lambda f: [f]))  # a flag missing its value


def _one_error_line(err: str) -> None:
    lines = [line for line in err.strip().splitlines() if " WARNING " not in line]
    assert len(lines) == 1 and lines[0].startswith("prefixtune: error:"), err[-2000:]


@FUZZ
@given(pairs=st.lists(token_pair, max_size=5))
def test_any_train_command_line_ends_in_a_config_or_one_error_line(pairs, capsys):
    argv = [t for pair in pairs for t in pair]
    rc = main(["train", *argv, "--print-config"])
    out, err = capsys.readouterr()
    assert rc in (0, 2), (argv, rc, err[-2000:])
    if rc == 2:
        _one_error_line(err)
        return
    printed = yaml.safe_load(out)
    assert TrainConfig.from_dict(printed).to_dict() == printed  # what it printed is what --config reads back


field_names = st.sampled_from([f.name for f in dataclasses.fields(TrainConfig)] + ["nope"])
json_value = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats()
                          | st.text(max_size=6), lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=6) | st.sampled_from(SET_KEYS), inner, max_size=3),
                          max_leaves=5)


@FUZZ
@given(values=st.dictionaries(field_names, json_value, max_size=4) | json_value,
       suffix=st.sampled_from([".json", ".yaml"]))
def test_any_config_file_ends_in_a_config_or_a_config_error(tmp_path, values, suffix):
    path = tmp_path / f"run{suffix}"
    path.write_text(json.dumps(values) if suffix == ".json" else yaml.safe_dump(values), encoding="utf-8")
    try:
        cfg = TrainConfig.load(path)
    except ConfigError as e:
        assert str(e).startswith(f"{path}:") and str(e).strip()
        return
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
