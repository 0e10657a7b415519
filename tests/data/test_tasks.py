"""Tasks from every source: the built-ins' hub copies (in the hub's own layout) give the same
tasks as the shared files; multi-reference sets, nested fields, datasets objects; no data offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prefixtune.data.errors import DataError
from prefixtune.data.files import read_file
from prefixtune.data.spec import TaskSpec
from prefixtune.data.tasks import load_task

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / ".." / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "e2e").is_dir(), reason="../shared/data is not here")
#: the hub data set each built-in asks for: (path, config, revision)
HUB = {"e2e": ("tuetschek/e2e_nlg", None, "refs/convert/parquet"), "sst2": ("nyu-mll/glue", "sst2", None),
       "rte": ("nyu-mll/glue", "rte", None)}


def hub_layout(task: str):
    """The built-in's dev and test splits as its hub copy has them (names, columns, label ids), made from
    the shared files: E2E as tuetschek/e2e_nlg, GLUE's with ClassLabel ids, -1 on the unlabelled test split."""
    import datasets

    splits = {}
    for ours, theirs in (("dev", "validation"), ("test", "test")):
        rows = read_file(next((SHARED / task).glob(f"{ours}.*")))
        if task == "e2e":
            splits[theirs] = datasets.Dataset.from_dict({"meaning_representation": [r["mr"] for r in rows],
                                                         "human_reference": [r["ref"] for r in rows]})
            continue
        names = ["negative", "positive"] if task == "sst2" else ["entailment", "not_entailment"]
        label = {"0": 0, "1": 1, "entailment": 0, "not_entailment": 1}
        texts = ["sentence"] if task == "sst2" else ["sentence1", "sentence2"]
        features = datasets.Features({**{t: datasets.Value("string") for t in texts},
                                      "label": datasets.ClassLabel(names=names), "idx": datasets.Value("int32")})
        columns = {t: [r[t] for r in rows] for t in texts}
        splits[theirs] = datasets.Dataset.from_dict(
            {**columns, "label": [label[r["label"]] if "label" in r else -1 for r in rows],
             "idx": list(range(len(rows)))}, features=features)
    return datasets.DatasetDict(splits)


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """No local copy anywhere: a working directory without ../shared/data, no $PREFIXTUNE_DATA."""
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.delenv("PREFIXTUNE_DATA", raising=False)
    return tmp_path


def fake_hub(monkeypatch, task: str):
    import datasets

    copy = hub_layout(task)

    def load_dataset(path, name=None, revision=None):
        assert (path, name, revision) == HUB[task]
        return copy

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return copy


@needs_shared
@pytest.mark.parametrize("task, split", [("e2e", "dev"), ("e2e", "test"), ("sst2", "dev"), ("rte", "dev")])
def test_hub_copies_give_the_tasks_the_shared_files_give(task, split, elsewhere, monkeypatch):
    shared = load_task(task, split, data=SHARED / task)
    fake_hub(monkeypatch, task)
    hub = load_task(task, split)
    assert (hub.spec, hub.examples, hub.references) == (shared.spec, shared.examples, shared.references)
    if task == "e2e":
        assert len(hub.inputs) == {"dev": 547, "test": 630}[split]  # multi-reference: one input per MR


@needs_shared
def test_a_save_to_disk_copy_of_the_hub_data_works_offline(elsewhere, monkeypatch):
    shared = load_task("rte", "dev", data=SHARED / "rte")
    hub_layout("rte").save_to_disk(str(elsewhere / "data" / "rte"))
    monkeypatch.setenv("PREFIXTUNE_DATA", str(elsewhere / "data"))
    copy = load_task("rte", "dev")
    assert (copy.spec, copy.examples) == (shared.spec, shared.examples)


@needs_shared
def test_the_unlabelled_glue_test_split_is_refused(elsewhere, monkeypatch):
    fake_hub(monkeypatch, "sst2")
    with pytest.raises(DataError, match=r"nyu-mll/glue:sst2 \[test\]: label -1 is not a label id .* -1 marks an "
                                         "unlabelled row"):
        load_task("sst2", "test")


@needs_shared
def test_one_row_per_input_with_a_references_list(tmp_path):
    """GEM-style multi-reference data (e.g. GEM/e2e_nlg's ``references``) gives the inputs and
    references of E2E's one-row-per-reference files."""
    import datasets

    shared = load_task("e2e", "dev", data=SHARED / "e2e")
    gem = datasets.Dataset.from_dict({"meaning_representation": [t.rstrip("\n") for t in shared.references],
                                      "target": [refs[0] for refs in shared.references.values()],
                                      "references": list(shared.references.values())})
    spec = TaskSpec("e2e-gem", "generation", template="{meaning_representation}\n", target_column="target",
                    references_column="references")
    task = load_task(spec, "dev", data=gem)
    assert task.references == shared.references and len(task.examples) == len(shared.references)
    train = datasets.Dataset.from_dict({"meaning_representation": ["name[A]", "name[A]"], "target": ["A.", "A!"],
                                        "references": [[], []]})  # GEM's training rows list no references
    assert load_task(spec, "train", data=train).references == {"name[A]\n": ["A.", "A!"]}


def test_list_targets_and_nested_fields(tmp_path):
    rows = [{"q": {"text": "Q1"}, "answers": [{"text": "a"}, {"text": "b"}]},
            {"q": {"text": "Q1"}, "answers": [{"text": "b"}, {"text": "c"}]},
            {"q": {"text": "Q2"}, "answers": [{"text": "d"}]}]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = TaskSpec("qa", "generation", template="Q: {q.text}\n", target_column="answers.text")
    task = load_task(spec, "train", data=tmp_path / "qa.jsonl")
    assert [(e.text, e.target) for e in task.examples] == [("Q: Q1\n", "a"), ("Q: Q1\n", "b"), ("Q: Q2\n", "d")]
    assert task.references == {"Q: Q1\n": ["a", "b", "c"], "Q: Q2\n": ["d"]}


def test_integer_labels_get_the_ids_their_text_gets(tmp_path):
    (tmp_path / "a.csv").write_text("text,label\nx,1\ny,0\nz,1\n")
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t, "label": l}) + "\n"
                                              for t, l in (("x", 1), ("y", 0), ("z", 1))))
    spec = TaskSpec("c", "classification", label_column="label", text_columns=("text",))
    from_csv, from_json = (load_task(spec, "train", data=tmp_path / name) for name in ("a.csv", "a.jsonl"))
    assert from_csv.examples == from_json.examples and from_csv.spec.labels == from_json.spec.labels == ("0", "1")


def test_datasets_objects_and_split_aliases(e2e_dir):
    import datasets

    rows = {split: read_file(e2e_dir / f"{split}.csv") for split in ("train", "dev")}
    given = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows["train"]),
                                  "validation": datasets.Dataset.from_list(rows["dev"])})
    for split in ("train", "dev"):
        from_files = load_task("e2e", split, data=e2e_dir)
        from_object = load_task("e2e", split, data=given)
        assert (from_object.examples, from_object.references) == (from_files.examples, from_files.references)
    assert load_task("e2e", "validation", data=e2e_dir).references == load_task("e2e", "dev", data=e2e_dir).references


def test_a_run_config_records_an_in_memory_data_set(e2e_dir):
    import datasets

    from prefixtune.train.config import TrainConfig, task_spec

    cfg = TrainConfig(data=datasets.Dataset.from_list(read_file(e2e_dir / "train.csv")), references_column="refs",
                      input_column="mr", target_column="ref")
    saved = json.loads(json.dumps(cfg.to_dict()))
    assert saved["data"] == "<in-memory datasets object: Dataset (40, 2)>" and saved["references_column"] == "refs"
    assert task_spec(cfg).references_column == "refs"
    assert TrainConfig.from_dict(saved).data == saved["data"]


def test_without_data_the_error_says_where_it_goes(elsewhere, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'tuetschek/e2e_nlg' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as e:
        load_task("e2e", "train")
    message = str(e.value)
    for part in (f"no folder {elsewhere / 'shared' / 'data' / 'e2e'} ($PREFIXTUNE_DATA is not set",
                 "its hub copy tuetschek/e2e_nlg@refs/convert/parquet could not be read (ConnectionError: Couldn't "
                 "reach", "Put train.csv, dev.csv and test.csv with columns mr, ref", "--data"):
        assert part in message, (part, message)
    with pytest.raises(DataError, match="task 'mine' has no data: no folder"):
        load_task(TaskSpec("mine", "generation", template="{a}", target_column="b"), "train")


def test_offline_for_real(tmp_path):
    """The real datasets library with the hub switched off: one DataError, quickly, naming the folders."""
    env = {k: v for k, v in os.environ.items() if k != "PREFIXTUNE_DATA"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=str(ROOT / "src"))
    code = "from prefixtune.data.tasks import load_task; load_task('sst2', 'dev')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and last.startswith("prefixtune.data.errors.DataError: task 'sst2' has no data"), r.stderr
    assert f"no folder {tmp_path.parent / 'shared' / 'data' / 'sst2'}" in last and "nyu-mll/glue:sst2" in last
