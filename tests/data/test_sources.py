"""Every kind of source gives the rows of the split asked for: files, directories, save_to_disk
directories, datasets objects and hub names; dev and validation are one split."""

from __future__ import annotations

import pytest

from prefixtune.data.errors import DataError
from prefixtune.data.sources import describe, read_records, split_names

ROWS = {"train": [{"text": "a", "label": "0"}, {"text": "b", "label": "1"}], "validation": [{"text": "c", "label": "1"}]}


def dataset_dict():
    import datasets

    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows) for split, rows in ROWS.items()})


def test_split_aliases():
    assert split_names("dev") == ["dev", "validation", "valid", "val"]
    assert split_names("validation") == ["validation", "dev", "valid", "val"]
    assert split_names("train") == ["train"]


def test_save_to_disk_directories(tmp_path):
    dataset_dict().save_to_disk(str(tmp_path / "dict"))
    assert read_records(tmp_path / "dict", "train") == ROWS["train"]
    assert read_records(tmp_path / "dict", "dev") == ROWS["validation"]
    dataset_dict()["train"].save_to_disk(str(tmp_path / "one"))
    assert read_records(tmp_path / "one", "test") == ROWS["train"]  # one data set serves every split, like one file
    with pytest.raises(DataError, match=r"no split 'test' \(it has \['train', 'validation'\]\)"):
        read_records(tmp_path / "dict", "test")


def test_directories_of_split_files_and_split_folders(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na,0\nb,1\n")
    (tmp_path / "validation.jsonl").write_text('{"text": "c", "label": "1"}\n')
    dataset_dict()["train"].save_to_disk(str(tmp_path / "test"))
    assert read_records(tmp_path, "train") == ROWS["train"]
    assert read_records(tmp_path, "dev") == ROWS["validation"]
    assert read_records(tmp_path, "test") == ROWS["train"]
    with pytest.raises(DataError, match=r"no 'extra' split in this directory \(looked for extra\{.csv,.tsv,"):
        read_records(tmp_path, "extra")
    (tmp_path / "train.tsv").write_text("text\tlabel\na\t0\n")
    with pytest.raises(DataError, match="both train.csv and train.tsv could be the 'train' split; keep one"):
        read_records(tmp_path, "train")


def test_datasets_objects(tmp_path):
    import datasets

    assert read_records(dataset_dict(), "dev") == ROWS["validation"]
    assert read_records({"train": dataset_dict()["train"]}, "train") == ROWS["train"]
    assert read_records(dataset_dict()["validation"], "train") == ROWS["validation"]
    with pytest.raises(DataError, match="no rows"):
        read_records(datasets.Dataset.from_list([]), "train")
    with pytest.raises(DataError, match=r"not a data source \(IterableDataset\); give a datasets.Dataset or"):
        read_records(dataset_dict()["train"].to_iterable_dataset(), "train")


def test_hub_names_read_the_split_and_its_alias(monkeypatch):
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or dataset_dict())
    assert read_records("owner/name:config", "dev") == ROWS["validation"]
    assert calls == [(("owner/name", "config"), {"revision": None})]
    with pytest.raises(DataError, match=r"owner/name:config \[test\]: no split 'test'"):
        read_records("owner/name:config", "test")


@pytest.mark.parametrize("source", ["sub/missing.csv", "missing.jsonl", "./missing", "/no/such/dir"])
def test_missing_paths_are_not_looked_for_on_the_hub(monkeypatch, tmp_path, source):
    import datasets

    def hub(*args, **kwargs):
        raise AssertionError("asked the hub for a path")

    monkeypatch.setattr(datasets, "load_dataset", hub)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        read_records(source, "train")
    assert str(e.value) == f"{source}: no such file or directory"


def test_an_in_memory_source_is_described_and_its_description_explained():
    text = describe(dataset_dict())
    assert text.startswith("<in-memory datasets object: DatasetDict") and describe("a.csv") == "a.csv"
    with pytest.raises(DataError, match=r"save it with .save_to_disk\(DIR\) and give DIR as the data"):
        read_records(text, "train")
