"""Reading one data file (CSV, TSV, JSON, JSON Lines, Parquet) through ``datasets``.

``datasets`` builds an Arrow table from the file (cached under ``$HF_DATASETS_CACHE``, so a
second read is fast) and we take its rows. Its CSV reader is pandas', which by default guesses
types and turns ``NA``, ``null`` or empty fields into missing values; a text field must stay the
text it is, so CSV and TSV are read with every column a string and no missing-value guessing
(an empty field is ``""``, ``007`` stays ``"007"``, a label ``1`` is ``"1"``). Every row must
have as many fields as the header: a shorter or longer one is a DataError naming its line, never
fields silently dropped or left empty. TSV is read
without quote processing, as GLUE's TSVs require (they contain stray ``"``). JSON, JSON Lines and
Parquet keep their own types (numbers, lists, nested objects).
"""

from __future__ import annotations

import csv
import glob
import logging
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

from prefixtune.data.errors import DataError, cause
from prefixtune.data.scan import check_json_rows, check_widths
from prefixtune.extras import require

#: the file types read, in the order a directory's ``{split}.<ext>`` files are looked for
EXTENSIONS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


def datasets_library() -> ModuleType:
    """The ``datasets`` module (it comes with the ``train`` extra)."""
    return require("datasets", "train", "data reading")


@contextmanager
def quiet(datasets: ModuleType) -> Iterator[None]:
    """No progress bars or log lines while ``datasets`` converts a local file: it is quick, and a
    reader's failure is reported once, by our DataError, not also logged."""
    was_disabled = datasets.are_progress_bars_disabled()
    logger = logging.getLogger("datasets")
    level = logger.level
    datasets.disable_progress_bars()
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
        if not was_disabled:
            datasets.enable_progress_bars()


def _header(path: Path, tsv: bool) -> list[str]:
    """The header row (the Arrow schema needs the column names up front), checked, after a scan
    of every row's width (:func:`~prefixtune.data.scan.check_widths`)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else csv.reader(f)
        header = next(rows, None)
        if not header:
            raise DataError(f"{path}: empty file (a {'TSV' if tsv else 'CSV'} file starts with a header row)")
        twice = sorted({c for c in header if header.count(c) > 1})
        if twice:
            raise DataError(f"{path}: column names {twice} appear more than once in the header; make them unique")
        if not check_widths(path, rows, len(header), tsv):
            raise DataError(f"{path}: no rows")
    return header


def _load_csv(datasets: ModuleType, path: Path, files: str) -> Any:
    tsv = path.suffix.lower() == ".tsv"
    strings = datasets.Features({c: datasets.Value("string") for c in _header(path, tsv)})
    options = {"sep": "\t", "quoting": csv.QUOTE_NONE} if tsv else {}
    return datasets.load_dataset("csv", data_files=files, split="train", features=strings, index_col=False,
                                 keep_default_na=False, na_filter=False, **options)


def _load(datasets: ModuleType, path: Path) -> Any:
    """The file (one of :data:`EXTENSIONS`) as a ``datasets.Dataset``."""
    files = glob.escape(str(path))  # data_files are glob patterns: a "[" in a folder name must stay a "["
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _load_csv(datasets, path, files)
    if suffix in (".json", ".jsonl"):
        check_json_rows(path)
        ds = datasets.load_dataset("json", data_files=files, split="train")
        if suffix == ".json" and ds.column_names == ["data"] and ds.num_rows == 1:  # {"data": [rows]}
            ds = datasets.load_dataset("json", data_files=files, split="train", field="data")
        return ds
    return datasets.load_dataset("parquet", data_files=files, split="train")


def read_file(path: Path) -> list[dict[str, Any]]:
    """The rows of one CSV/TSV/JSON/JSONL/Parquet file, as dicts (column -> value).

    A ``.json`` file holds a list of rows, ``{"data": [rows]}``, or one row per line.

    Raises:
        DataError: an unsupported type, a file that cannot be parsed, or one without rows.
    """
    if path.suffix.lower() not in EXTENSIONS:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(EXTENSIONS)}, "
                        "or a directory written by Dataset.save_to_disk")
    datasets = datasets_library()
    try:
        with quiet(datasets):
            rows = _load(datasets, path).to_list()
    except DataError:
        raise
    except Exception as e:  # pandas, pyarrow and datasets raise many types for a malformed file
        raise DataError(f"{path}: cannot read it ({cause(e)})") from None
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows
