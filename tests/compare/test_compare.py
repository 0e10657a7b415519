"""``prefixtune compare`` end to end on a tiny model: all methods, a sweep, a low-data curve,
report and plots, skipping finished runs, redoing a lost one, refusing a changed configuration."""

from __future__ import annotations

import json
import logging

import pytest
import yaml

from prefixtune.cli.main import main
from prefixtune.compare import CompareConfig
from prefixtune.core.config import ConfigError


def comparison(tiny_dir, e2e_dir, out) -> dict:
    return {
        "name": "tiny", "out": str(out),
        "base": {"model": str(tiny_dir), "task": "e2e", "data": str(e2e_dir), "steps": 3, "batch_size": 4,
                 "eval_every": 2, "eval_limit": 2, "save_every": 2, "max_new_tokens": 4, "test_split": "dev",
                 "test_limit": 3},
        "seeds": [0],
        "methods": {
            "prefix-mlp": {"method": "prefix", "adapter": {"prefix_length": 2, "hidden_size": 8}, "lr": 1e-2},
            "prefix-direct": {"method": "prefix", "adapter": {"prefix_length": 2, "reparameterization": "direct"}},
            "prompt": {"method": "prompt", "adapter": {"num_virtual_tokens": 2}},
            "ptuning-lstm": {"method": "prompt", "adapter": {"num_virtual_tokens": 2, "encoder": "lstm"}},
            "lora": {"method": "lora", "adapter": {"r": 2}},
            "full": {"method": "full", "lr": 1e-4},
        },
        "sweep": [{"method": "prefix-direct", "grid": {"prefix_length": [1, 3], "lr": [1e-2], "eval_every": 0}},
                  {"name": "mlp-width", "method": "prefix-mlp", "grid": {"hidden_size": [4, 16], "steps": 2}}],
        "low_data": {"methods": ["prefix-direct"], "sizes": [8, 16], "seeds": [0, 1],
                     "method_overrides": {"prefix-direct": {"lr": 0.02}}},
    }


def test_compare_runs_reports_and_resumes(tiny_dir, e2e_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    cfg_file = tmp_path / "cmp.yaml"
    cfg_file.write_text(yaml.safe_dump(comparison(tiny_dir, e2e_dir, out), sort_keys=False))
    doc = tmp_path / "docs" / "comparison.md"
    assert main(["compare", "--config", str(cfg_file), "--publish", str(doc)]) == 0
    report = (out / "report.md").read_text()
    for method in ("prefix-mlp", "prefix-direct", "prompt", "ptuning-lstm", "lora", "full"):
        assert f"| {method} |" in report
    assert "Sweep: prefix-direct" in report and "Sweep: mlp-width (around prefix-mlp)" in report
    assert "Each run: 2 optimizer steps of batch 4" in report and "Low data" in report
    data = json.loads((out / "report.json").read_text())
    assert len(data["runs"]) == 6 + 4 + 4
    width = {p["point"]["hidden_size"]: p for p in data["sweeps"]["mlp-width"]}
    assert set(width) == {4, 16} and all(p["n"] == 1 for p in width.values())
    trainable = {r["labels"]["hidden_size"]: r["parameters"]["trainable"] for r in data["runs"] if r["part"] == "mlp-width"}
    assert trainable[16] > trainable[4]  # the swept option reached the adapter
    assert json.loads((out / "sweep" / "mlp-width" / "hidden_size=4" / "seed0" / "result.json").read_text())["steps_done"] == 2
    counts = {k: v["trainable"] for k, v in data["methods"].items()}
    assert counts["full"] > counts["lora"] > 0 and counts["prefix-mlp"] > counts["prefix-direct"]
    assert {len(v) for v in data["low_data"].values()} == {2}
    assert all(n == 2 for _, _, _, n in data["low_data"]["prefix-direct"])  # two seeds per size
    for plot in ("metric-vs-params", "learning-curves", "sweep-prefix-direct", "sweep-mlp-width", "low-data"):
        assert (out / f"tiny-{plot}.png").stat().st_size > 1000
        assert (tmp_path / "docs" / "comparison" / f"tiny-{plot}.png").is_file()
    assert "<!-- BEGIN compare-tiny" in doc.read_text() and "](comparison/tiny-sweep-mlp-width.png)" in doc.read_text()
    swept = json.loads((out / "sweep" / "prefix-direct" / "prefix_length=3,lr=0.01" / "seed0" / "config.json").read_text())
    assert swept["eval_every"] == 0 and swept["adapter"]["prefix_length"] == 3  # a single value is fixed, not swept
    assert "| prefix_length | lr |" in report and "eval_every |" not in report
    assert json.loads((out / "low_data" / "prefix-direct" / "n8" / "seed1" / "config.json").read_text())["lr"] == 0.02
    log = (out / "low_data" / "prefix-direct" / "n8" / "seed1" / "train.log").read_text()
    assert "8 training examples" in log
    # a second call trains nothing; a run whose results were lost is redone, and only that one
    lost = out / "methods" / "prompt" / "seed0"
    (lost / "result.json").unlink()
    kept = (out / "methods" / "lora" / "seed0" / "result.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["compare", "--config", str(cfg_file)]) == 0
    assert "13 of 14 runs already finished" in capsys.readouterr().err  # logged, on stderr
    assert (lost / "result.json").is_file()
    assert (out / "methods" / "lora" / "seed0" / "result.json").stat().st_mtime_ns == kept
    # the same directory with other options is refused, naming what changed
    changed = comparison(tiny_dir, e2e_dir, out)
    changed["base"]["batch_size"] = 2
    cfg_file.write_text(yaml.safe_dump(changed, sort_keys=False))
    assert main(["compare", "--config", str(cfg_file)]) == 2
    assert "batch_size" in capsys.readouterr().err


def test_dry_run_lists_runs(tiny_dir, e2e_dir, tmp_path, capsys):
    cfg_file = tmp_path / "cmp.json"
    cfg_file.write_text(json.dumps(comparison(tiny_dir, e2e_dir, tmp_path / "cmp")))
    assert main(["compare", "--config", str(cfg_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "14 runs, 0 finished" in out and "sweep/mlp-width/hidden_size=16/seed0" in out and "low_data/prefix-direct/n16/seed1" in out


@pytest.mark.parametrize("change,message", [
    (lambda c: c.update(methods={}), "at least one"),
    (lambda c: c["methods"].update(bad={"adapter": {}}), "give at least 'method'"),
    (lambda c: c["base"].update(stepz=3), "stepz"),
    (lambda c: c["sweep"][0].update(method="nope"), r"sweep\[0\]\.method"),
    (lambda c: c["sweep"][1].update(name="prefix-direct"), "must be unique"),
    (lambda c: c["sweep"][1].update(gird={}), "unknown keys"),
    (lambda c: c.update(sweep={"method": "nope", "grid": {"lr": [1]}}), r"sweep\.method"),
    (lambda c: c.update(sweep="prefix-mlp"), "mapping"),
    (lambda c: c["low_data"].update(methods=["nope"]), "low_data.methods"),
    (lambda c: c["low_data"].update(method_overrides={"lora": {"lr": 1.0}}), "method_overrides"),
    (lambda c: c["methods"]["lora"].update(method="lasso"), "method must be one of"),
])
def test_bad_comparisons_are_named(tmp_path, change, message):
    c = comparison("m", "d", tmp_path)
    change(c)
    with pytest.raises(ConfigError, match=message):
        CompareConfig(**c).runs()


def test_a_single_sweep_mapping_is_named_after_its_method(tmp_path):
    c = comparison("m", "d", tmp_path)
    c["sweep"] = {"method": "prefix-mlp", "grid": {"prefix_length": [1, 5], "reparameterization": "direct"}}
    runs = [r for r in CompareConfig(**c).runs() if r.group == "sweep"]
    assert [r.name for r in runs] == ["sweep/prefix-mlp/prefix_length=1/seed0", "sweep/prefix-mlp/prefix_length=5/seed0"]
    assert {r.part for r in runs} == {"prefix-mlp"}
    assert [r.config.adapter["reparameterization"] for r in runs] == ["direct", "direct"]
    assert [r.config.adapter["hidden_size"] for r in runs] == [8, 8]  # the rest from the method


def test_a_classification_comparison_reports_accuracy(tiny_bert_dir, sentiment_dir, tmp_path):
    """Encoder methods on an SST-2-style task: accuracy and F1 columns, a wall-clock budget, an lr sweep."""
    out = tmp_path / "cls"
    cfg = {"name": "cls", "out": str(out),
           "base": {"model": str(tiny_bert_dir), "task": "sst2", "data": str(sentiment_dir), "steps": 4,
                    "max_seconds": 600, "batch_size": 8, "max_length": 16, "eval_every": 0, "eval_limit": None,
                    "test_split": "dev"},
           "methods": {"ptuning_v2": {"method": "ptuning_v2", "adapter": {"prefix_length": 2}, "lr": 3e-2},
                       "ptuning": {"method": "prompt", "adapter": {"num_virtual_tokens": 2, "encoder": "mlp",
                                                                   "num_labels": 2}, "lr": 3e-2},
                       "lora": {"method": "lora", "adapter": {"r": 2}, "lr": 3e-2}},
           "sweep": {"method": "ptuning_v2", "grid": {"lr": [1e-3, 3e-2]}},
           "contrasts": [["ptuning_v2", "lora"]], "bootstrap_samples": 200}
    (tmp_path / "cls.json").write_text(json.dumps(cfg))
    assert main(["compare", "--config", str(tmp_path / "cls.json")]) == 0
    report = (out / "report.md").read_text()
    assert "accuracy is the task metric" in report and "| method | lr | precision | accuracy | f1 |" in report
    assert "4 optimizer steps or 600 s" in report and "Sweep: ptuning_v2" in report
    assert "| ptuning_v2 | 0.03 | fp32 | " in report
    data = json.loads((out / "report.json").read_text())
    assert data["metric"] == "accuracy" and set(data["methods"]) == {"ptuning_v2", "ptuning", "lora"}
    assert all(r["split"] == "dev" for r in data["runs"])
    # each reported score is the one its run's predictions give (recomputed here from the records)
    for r in data["runs"]:
        records = [json.loads(line) for line in (out / r["name"] / "predictions-dev.jsonl").read_text().splitlines()]
        assert len(records) == 16
        right = sum(rec["prediction"] == rec["label"] for rec in records)
        assert r["scores"]["accuracy"] == pytest.approx(100 * right / len(records)), r["name"]
    table_line = next(line for line in report.splitlines() if line.startswith("| ptuning_v2 |"))
    assert f"{data['methods']['ptuning_v2']['mean']:.2f}" in table_line
    assert data["methods"]["ptuning"]["stored"] < data["methods"]["ptuning"]["trainable"]  # the encoder is folded
    # the bootstrap row's difference is the table's difference of means, inside its own interval
    (iv,) = data["contrasts"]
    assert iv["difference"] == pytest.approx(data["methods"]["ptuning_v2"]["mean"] - data["methods"]["lora"]["mean"])
    assert iv["low"] <= iv["difference"] <= iv["high"] and iv["inputs"] == 16 and iv["samples"] == 200
    assert "### Paired bootstrap" in report and f"| ptuning_v2 − lora | **{iv['difference']:+.2f}** |" in report


def test_a_run_saved_before_an_option_existed_is_the_same_run(tmp_path):
    """A run directory whose config.json predates a TrainConfig field (here ``report_to``) ran with
    what is now that field's default: the comparison resumes it instead of refusing it."""
    from prefixtune.compare.runner import CompareError, _check_same_config, run_dir

    spec = CompareConfig(**comparison("m", "d", tmp_path)).runs()[0]
    run_dir(spec).mkdir(parents=True)
    older = {k: v for k, v in spec.config.to_dict().items() if k != "report_to"}
    (run_dir(spec) / "config.json").write_text(json.dumps(older))
    _check_same_config(spec)
    (run_dir(spec) / "config.json").write_text(json.dumps({**older, "report_to": ["tensorboard"]}))
    with pytest.raises(CompareError, match="report_to"):
        _check_same_config(spec)


def test_the_rate_column_shows_what_lr_auto_chose():
    from prefixtune.compare.report import _rates

    assert _rates([{"lr": 1e-3, "lr_auto": False}]) == "0.001"
    assert _rates([{"lr": 3e-3, "lr_auto": True}, {"lr": 9.49e-4, "lr_auto": True}, {"lr": 3e-3, "lr_auto": True}]) \
        == "0.000949/0.003 (auto)"


@pytest.mark.parametrize("files, bf16", [
    ({"result.json": {"bf16": True}, "config.json": {"bf16": "auto"}}, True),   # what auto became
    ({"result.json": {}, "precision.json": {"bf16": False}, "config.json": {"bf16": "auto"}}, False),
    ({"result.json": {}, "config.json": {"bf16": True}}, True),     # a run from before either record
    ({"result.json": {}, "config.json": {}}, False),                # ... and before the option
    ({"result.json": {}, "config.json": {"bf16": "auto"}}, None),   # unknown
])
def test_the_precision_column_reads_what_the_run_itself_recorded(tmp_path, files, bf16):
    from prefixtune.compare.report import _bf16_of, _precision

    for name, content in files.items():
        (tmp_path / name).write_text(json.dumps(content))
    assert _bf16_of(tmp_path, files["result.json"]) is bf16
    assert _precision("full", bf16) == {True: "bf16 autocast", False: "fp32", None: "?"}[bf16]


@pytest.mark.parametrize("level, bar_shown", [(logging.INFO, True), (logging.WARNING, False)])
def test_quiet_hides_the_comparison_progress_bar(tmp_path, monkeypatch, capsys, level, bar_shown):
    """``-q`` (log level warning) promises no progress bar; the comparison's own bar included."""
    from prefixtune.compare import runner

    c = comparison("m", "d", tmp_path)
    c.pop("sweep"), c.pop("low_data")
    def run_one(spec, on_progress):  # a run that fails at once, leaving its log
        runner.run_dir(spec).mkdir(parents=True)
        (runner.run_dir(spec) / "train.log").write_text("ValueError: stub\n")
        on_progress("step 1/1")
        return 1

    monkeypatch.setattr(runner, "run_one", run_one)
    monkeypatch.setattr(logging.getLogger("prefixtune"), "level", level)
    statuses = runner.run_comparison(CompareConfig(**c), only="prefix-mlp")
    assert [s["status"] for s in statuses] == ["failed"]
    assert ("tiny: methods/prefix-mlp/seed0" in capsys.readouterr().err) is bar_shown


@pytest.mark.parametrize("argv", [
    ["compare", "--config", "c.yaml", "--report-only", "-q"],
    ["-v", "compare", "--config", "c.yaml", "--report-only"],
    ["compare", "--log-level", "debug", "--config", "c.yaml", "--report-only"],
    ["compare", "--config", "c.yaml", "--log-level=error", "--report-only"],
])
def test_the_reports_command_leaves_out_the_logging_options(tiny_dir, e2e_dir, tmp_path, monkeypatch, argv):
    """The "Command:" line of a published report: what reproduces it, without -q/-v/--log-level."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(comparison(tiny_dir, e2e_dir, tmp_path / "cmp")))
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--publish", "page.md"]) == 0
    assert "Command: `prefixtune compare --config c.yaml --report-only --publish page.md`" in (tmp_path / "page.md").read_text()
