"""``prefixtune serve``'s options: the served model name, and counts refused at the command line."""

from __future__ import annotations

import pytest

from prefixtune.cli.main import main, parse_args
from prefixtune.cli.options import UsageError

pytest.importorskip("uvicorn")


def test_the_base_model_is_served_under_a_name_never_a_path(tmp_path):
    from prefixtune.serve.main import served_model_name

    (tmp_path / "my-model").mkdir()
    assert served_model_name(str(tmp_path / "my-model")) == "my-model"
    assert served_model_name(str(tmp_path / "my-model") + "/") == "my-model"
    assert served_model_name("smollm2-135m") == "smollm2-135m"
    assert served_model_name("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert parse_args(["serve", "--served-model-name", "prod"]).served_model_name == "prod"


@pytest.mark.parametrize("option, value", [("--max-batch-size", "0"), ("--max-queue", "0"), ("--max-tokens", "-1"),
                                           ("--max-prompt-tokens", "0"), ("--batch-wait-ms", "-1"),
                                           ("--port", "0"), ("--port", "65536"), ("--max-body-bytes", "0")])
def test_serve_refuses_non_positive_counts_and_bad_ports(option, value, capsys):
    with pytest.raises(UsageError, match=option):
        parse_args(["serve", option, value])
    assert main(["serve", option, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and option in err


@pytest.mark.parametrize("field, value", [("max_batch_size", 0), ("max_queue", -1), ("batch_wait_ms", -1.0),
                                          ("batch_wait_ms", float("nan")), ("max_batch_size", True)])
def test_engine_settings_refuse_bad_values(field, value):
    from prefixtune.serve.engine import EngineSettings

    with pytest.raises(ValueError, match=field):
        EngineSettings(**{field: value})


@pytest.mark.parametrize("field", ["max_prompt_tokens", "max_tokens", "default_max_tokens", "max_body_bytes"])
def test_server_settings_refuse_non_positive_counts(field):
    from prefixtune.serve.app import ServerSettings

    with pytest.raises(ValueError, match=field):
        ServerSettings(**{field: 0})


def test_compile_reaches_the_engine_and_is_refused_with_micro_batching(capsys):
    assert parse_args(["serve", "--compile"]).compile and not parse_args(["serve"]).compile
    assert main(["serve", "--compile", "--batching", "same"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--batching continuous or leave out --compile" in err


@pytest.mark.parametrize("choice, speedup, dtype", [("auto", 2.4, "bfloat16"), ("auto", 0.012, "float32"),
                                                    ("float32", 2.4, "float32"), ("bfloat16", 0.012, "bfloat16")])
def test_dtype_auto_serves_in_bf16_only_where_it_measures_faster(monkeypatch, choice, speedup, dtype):
    import torch

    from prefixtune.runtime import hardware
    from prefixtune.serve.main import base_dtype

    monkeypatch.setattr(hardware, "bf16_speedup", lambda: speedup)
    assert parse_args(["serve", "--dtype", choice]).dtype == choice
    assert base_dtype(choice) is getattr(torch, dtype)
