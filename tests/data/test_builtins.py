"""Where built-in data is looked for, how hub layouts map onto the tasks, what a missing copy says."""

from __future__ import annotations

import pytest

from prefixtune.data.builtins import BUILTINS, data_roots, find_shared_data, local_copy, missing_data_error, \
    to_task_columns
from prefixtune.data.errors import DataError


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A working directory with no ../shared/data, and no $PREFIXTUNE_DATA."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("PREFIXTUNE_DATA", raising=False)
    return tmp_path


def test_nothing_is_found_next_to_the_installed_package(elsewhere):
    """The package's own location is no place to look: an install has no shared/ beside it."""
    assert find_shared_data() is None and local_copy("e2e") is None
    assert data_roots() == [elsewhere / "shared" / "data"]


def test_search_order_is_data_dir_then_the_variable_then_the_working_directory(elsewhere, monkeypatch):
    roots = {name: elsewhere / name for name in ("given", "env")}
    monkeypatch.setenv("PREFIXTUNE_DATA", str(roots["env"]))
    (elsewhere / "shared" / "data" / "e2e").mkdir(parents=True)
    assert data_roots(roots["given"]) == [roots["given"], roots["env"], elsewhere / "shared" / "data"]
    assert local_copy("e2e", roots["given"]) == elsewhere / "shared" / "data" / "e2e"
    (roots["env"] / "e2e").mkdir(parents=True)  # an existing root without the task folder is passed over
    assert local_copy("e2e", roots["given"]) == roots["env"] / "e2e"
    (roots["given"] / "e2e").mkdir(parents=True)
    assert local_copy("e2e", roots["given"]) == roots["given"] / "e2e"
    assert find_shared_data() == roots["env"]


def test_hub_layouts_map_onto_the_tasks():
    hub_e2e = [{"meaning_representation": "name[A]", "human_reference": "A."}]
    assert to_task_columns(BUILTINS["e2e"], hub_e2e, "w") == [{**hub_e2e[0], "mr": "name[A]", "ref": "A."}]
    ours = [{"mr": "name[B]", "ref": "B."}]
    assert to_task_columns(BUILTINS["e2e"], ours, "w") == ours
    rte = [{"sentence1": "a", "sentence2": "b", "label": 1}, {"sentence1": "c", "sentence2": "d", "label": "entailment"}]
    assert [r["label"] for r in to_task_columns(BUILTINS["rte"], rte, "w")] == ["not_entailment", "entailment"]
    assert [r["label"] for r in to_task_columns(BUILTINS["sst2"], [{"label": 0}, {"label": 1}], "w")] == ["0", "1"]
    with pytest.raises(DataError, match=r"label -1 is not a label id of nyu-mll/glue:sst2 \(0..1\); -1 marks an "
                                         r"unlabelled row \(GLUE hides its test labels\): evaluate on dev"):
        to_task_columns(BUILTINS["sst2"], [{"sentence": "s", "label": -1}], "w")


def test_the_missing_data_error_says_where_the_files_go(elsewhere):
    message = str(missing_data_error(BUILTINS["rte"], None, "ConnectionError: offline"))
    assert message.startswith(f"task 'rte' has no data: no folder {elsewhere / 'shared' / 'data' / 'rte'} "
                              "($PREFIXTUNE_DATA is not set; set it to a folder holding rte/)")
    for part in ("its hub copy nyu-mll/glue:rte could not be read (ConnectionError: offline)",
                 "Put train.csv, dev.csv and test.csv with columns sentence1, sentence2, label (or .tsv, .jsonl, "
                 ".json, .parquet; or a save_to_disk copy)", "--data", "owner/name[:config][@revision]"):
        assert part in message, part
