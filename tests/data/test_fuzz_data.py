"""Property-based fuzzing of data files: whatever a file holds, reading it as a task ends in
examples that are what the file says, or in a ``DataError``; never another exception, never a
target or class made up from a missing value.

Two oracles: a CSV written by Python's csv module reads back as exactly the rows written (any
text, quotes, commas, line breaks); and arbitrary bytes or arbitrary JSON rows end in rows or a
DataError.
"""

from __future__ import annotations

import csv
import io
import json
from itertools import count

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefixtune.data.errors import DataError
from prefixtune.data.files import read_file
from prefixtune.data.spec import TaskSpec
from prefixtune.data.tasks import load_task

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
GEN = TaskSpec("g", "generation", template="{src}\n", target_column="tgt")
CLS = TaskSpec("c", "classification", template="{src}", label_column="tgt")
_names = count()

# field text as people's files hold it: separators, quotes, line breaks, non-ASCII, blanks
field_text = st.text(st.sampled_from(list('ab ,;"\'\t\n\r\\{}é漢🙂')) | st.characters(codec="utf-8",
                                                                                   exclude_categories=["Cs"]),
                     max_size=12)
json_value = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
                          | field_text, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.sampled_from(["src", "tgt", "x"]), inner, max_size=3), max_leaves=6)


def _file(tmp_path, suffix: str, content: str | bytes):
    path = tmp_path / f"f{next(_names)}{suffix}"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def _check_task(path) -> None:
    """load_task as generation and as classification: examples whose targets/labels are real
    values of the file, or a DataError."""
    for spec in (GEN, CLS):
        try:
            task = load_task(spec, "train", data=str(path))
        except DataError as e:
            assert len(str(e).strip().splitlines()) == 1, str(e)  # the CLI prints it as one line
            continue
        assert task.examples
        for ex in task.examples:
            if spec is GEN:
                assert isinstance(ex.target, str) and ex.target.strip()
                assert ex.target not in ("None", "nan") or ex.target in path.read_text(errors="replace")
        if spec is CLS:
            assert all(label.strip() for label in task.spec.labels)


@FUZZ
@given(rows=st.lists(st.tuples(field_text, field_text), min_size=1, max_size=6))
def test_a_csv_written_by_the_csv_module_reads_back_exactly(tmp_path, rows):
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows([("src", "tgt"), *rows])
    path = _file(tmp_path, ".csv", buf.getvalue())
    try:
        got = read_file(path)
    except DataError as e:  # only when every row is blank, which csv skips
        assert "no rows" in str(e) and all(r == ("", "") for r in rows), e
        return
    # csv.writer writes a row of two empty fields as ',' (not blank): it stays a row
    assert got == [{"src": s, "tgt": t} for s, t in rows]
    _check_task(path)


@FUZZ
@given(suffix=st.sampled_from([".csv", ".tsv", ".jsonl", ".json"]),
       content=st.binary(max_size=200) | st.text(st.sampled_from(list('src,tgt\t\n"{}[]:1 null')), max_size=120))
def test_any_bytes_end_in_rows_or_a_data_error(tmp_path, suffix, content):
    header = "src,tgt\n" if suffix == ".csv" else "src\ttgt\n" if suffix == ".tsv" else ""
    if isinstance(content, str):
        content = header + content
    _check_task(_file(tmp_path, suffix, content))


@FUZZ
@given(rows=st.lists(st.dictionaries(st.sampled_from(["src", "tgt", "x"]), json_value, max_size=3) | json_value,
                     min_size=1, max_size=5))
def test_any_json_lines_end_in_examples_or_a_data_error(tmp_path, rows):
    lines = "".join(json.dumps(r) + "\n" for r in rows)  # json.dumps writes NaN, as Python programs do
    path = _file(tmp_path, ".jsonl", lines)
    _check_task(path)
    if all(isinstance(r, dict) and isinstance(r.get("tgt"), str) and r["tgt"].strip() for r in rows):
        task = load_task(GEN, "train", data=str(path))  # every row complete: nothing refused
        assert [ex.target for ex in task.examples] == [r["tgt"] for r in rows]

