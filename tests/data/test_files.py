"""Files read through ``datasets`` give exactly the rows a plain CSV reader gives, text kept as text."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from prefixtune.data.errors import DataError
from prefixtune.data.files import read_file

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
SHARED_FILES = sorted(SHARED.glob("*/*.csv")) + sorted(SHARED.glob("*/*.tsv"))


def stdlib_rows(path: Path) -> list[dict]:
    """The oracle: Python's csv module; TSV without quote processing (GLUE's TSVs hold stray quotes)."""
    with open(path, newline="", encoding="utf-8") as f:
        tsv = path.suffix == ".tsv"
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else csv.DictReader(f))


@pytest.mark.skipif(not SHARED_FILES, reason="../shared/data is not here")
@pytest.mark.parametrize("path", SHARED_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shared_files_read_as_the_csv_module_reads_them(path):
    rows = read_file(path)
    assert rows == stdlib_rows(path)
    if path.parent.name == "rte" and path.name == "train.tsv":  # the row the README warns about
        assert rows[2164]["index"] == "2164" and rows[2164]["sentence1"].startswith('"')


def test_csv_and_tsv_fields_stay_the_text_they_are(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\nNA,1\n,02\n"a, b",null\nNone,0\n')
    assert read_file(tmp_path / "a.csv") == [{"text": "NA", "label": "1"}, {"text": "", "label": "02"},
                                             {"text": "a, b", "label": "null"}, {"text": "None", "label": "0"}]
    (tmp_path / "a.tsv").write_text('text\tlabel\nhe said "hi\t1\n"quoted"\t0\n')
    assert read_file(tmp_path / "a.tsv") == [{"text": 'he said "hi', "label": "1"}, {"text": '"quoted"', "label": "0"}]
    (tmp_path / "bom.csv").write_bytes("\ufefftext,label\nx,1\n".encode())
    assert read_file(tmp_path / "bom.csv") == [{"text": "x", "label": "1"}]


def test_json_jsonl_and_parquet_keep_their_types(tmp_path):
    import datasets

    rows = [{"x": 1, "refs": ["a", "b"], "meta": {"t": "u"}}, {"x": 2, "refs": [], "meta": {"t": "v"}}]
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "data.json").write_text(json.dumps({"data": rows}, indent=1))
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "rows.parquet"))
    for name in ("list.json", "data.json", "rows.jsonl", "rows.parquet"):
        assert read_file(tmp_path / name) == rows, name


def test_csv_quoted_line_breaks_and_blank_lines_are_fine(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\n"two\nlines",1\n\nx,0\n')
    assert read_file(tmp_path / "a.csv") == [{"text": "two\nlines", "label": "1"}, {"text": "x", "label": "0"}]


def test_a_glob_character_in_the_path_is_a_plain_character(tmp_path):
    folder = tmp_path / "runs[1]"
    folder.mkdir()
    (folder / "a.csv").write_text("text\nx\n")
    assert read_file(folder / "a.csv") == [{"text": "x"}]


@pytest.mark.parametrize("name, content, message", [
    ("a.txt", "x\n", "unsupported file type '.txt'; use one of .csv, .tsv, .jsonl, .json, .parquet"),
    ("a.csv", "", "empty file"),
    ("a.csv", "text,label\n", "no rows"),
    ("a.csv", "text,text\nx,y\n", "column names ['text'] appear more than once"),
    ("a.csv", "text,label\nx,1,extra,more\n", "line 2 has 4 fields, the header has 2; quote fields"),
    ("a.csv", "text,label\nx,1\ny,2,extra\n", "line 3 has 3 fields, the header has 2"),
    ("a.csv", "text,label\nx,1\n\ny\n", "line 4 has 1 field, the header has 2"),
    ("a.csv", 'text,label\n"two\nlines,1\n', "line 3 has 1 field"),  # an unclosed quote swallows the rest
    ("a.tsv", 'text\tlabel\n"two\nlines"\t1\n', "line 2 has 1 field, the header has 2; a TSV field cannot hold"),
    ("a.tsv", "text\tlabel\nx\t1\ty\n", "line 2 has 3 fields"),
    ("a.jsonl", '{"x": 1}\n{"x": \n', "line 2 is not valid JSON (Expecting value at column 7)"),
    ("a.jsonl", '{"x": 1}\n\n[1, 2]\n', "line 3 is an array, not an object"),
    ("a.jsonl", '{"x": 1}\nnull\n', "line 2 is null, not an object"),
    ("a.json", '[{"x": 1}, "y"]', "element 2 is a string, not an object"),
    ("a.json", '{"data": [{"x": 1}, 3]}', "element 2 is a number, not an object"),
    ("a.json", '{"x": 1}\n7\n', "line 2 is a number, not an object"),
    ("a.parquet", "not parquet", "cannot read it"),
])
def test_unreadable_files_are_named(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError) as e:
        read_file(tmp_path / name)
    assert str(e.value).startswith(str(tmp_path / name)) and message in str(e.value)
