"""A missing (null, empty) target or label is a DataError naming the record and column, never the text "None"."""

from __future__ import annotations

import json

import pytest

from prefixtune.data.errors import DataError
from prefixtune.data.spec import TaskSpec
from prefixtune.data.tasks import load_task

GEN = TaskSpec("g", "generation", template="{src}\n", target_column="tgt")
CLS = TaskSpec("c", "classification", template="{text}", label_column="label")


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("missing", [None, "", "  "])
def test_a_missing_target_is_refused_with_its_record(tmp_path, missing):
    data = _jsonl(tmp_path / "train.jsonl", [{"src": "a", "tgt": "x"}, {"src": "b", "tgt": missing}])
    with pytest.raises(DataError, match=r"record 2: column 'tgt' is (null|empty)"):
        load_task(GEN, "train", data=str(data))


def test_a_null_inside_a_list_of_targets(tmp_path):
    data = _jsonl(tmp_path / "train.jsonl", [{"src": "a", "tgt": ["x", None]}])
    with pytest.raises(DataError, match=r"record 1: column 'tgt.1' is null"):
        load_task(GEN, "train", data=str(data))


@pytest.mark.parametrize("missing", [None, ""])
def test_a_missing_label_is_not_a_class(tmp_path, missing):
    data = _jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"},
                                             {"text": "c", "label": missing}])
    with pytest.raises(DataError, match=r"record 3: column 'label' is (null|empty)"):
        load_task(CLS, "train", data=str(data))


def test_a_short_csv_row_is_refused_not_padded(tmp_path):
    (tmp_path / "train.csv").write_text("src,tgt\na,x\nb\n")
    with pytest.raises(DataError, match="line 3 has 1 field, the header has 2"):
        load_task(GEN, "train", data=str(tmp_path / "train.csv"))


def test_complete_rows_still_load(tmp_path):
    data = _jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
    assert load_task(CLS, "train", data=str(data)).spec.labels == ("0", "1")


def test_a_nan_label_in_parquet_is_missing(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"text": "a", "label": 1.0}, {"text": "b", "label": float("nan")}]).to_parquet(
        str(tmp_path / "train.parquet"))
    with pytest.raises(DataError, match=r"record 2: column 'label' is NaN"):
        load_task(CLS, "train", data=str(tmp_path / "train.parquet"))
