"""Reading records (dicts of column -> string) from CSV, TSV, JSONL or Hugging Face datasets."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from prefixtune.extras import require

EXTENSIONS = (".csv", ".tsv", ".jsonl", ".json")


class DataError(ValueError):
    """Input data cannot be read or lacks what the task needs; the message names file and fix."""


def _read_file(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            with open(path, newline="", encoding="utf-8") as f:
                # GLUE TSVs contain stray quote characters: TSV is read without quoting
                reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if suffix == ".tsv" else csv.DictReader(f)
                rows = list(reader)
        elif suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
        elif suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            rows = data if isinstance(data, list) else data.get("data", [])
        else:
            raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(EXTENSIONS)}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read it ({e})") from None
    if not rows:
        raise DataError(f"{path}: no rows")
    return [dict(r) for r in rows]


def read_records(source: str | Path, split: str = "train") -> list[dict[str, Any]]:
    """Rows of ``source``: a file, a directory holding ``{split}.csv/.tsv/.jsonl/.json``, or a
    Hugging Face ``datasets`` name (read with ``datasets.load_dataset``; the hub needs a network).

    Raises:
        DataError: nothing readable there (the message lists what was tried).
    """
    path = Path(source)
    if path.is_file():
        return _read_file(path)
    if path.is_dir():
        for ext in EXTENSIONS:
            candidate = path / f"{split}{ext}"
            if candidate.is_file():
                return _read_file(candidate)
        raise DataError(f"{path}: no {split}.csv, {split}.tsv, {split}.jsonl or {split}.json in this directory")
    if "/" in str(source) and not str(source).startswith((".", "/")) or not path.suffix:
        try:
            datasets = require("datasets", "datasets", "hub data sets")

            ds = datasets.load_dataset(str(source), split=split)
        except Exception as e:  # datasets raises many types (offline, missing split, ...)
            raise DataError(f"{source}: not a local file or directory, and the datasets hub gave: "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        return [dict(r) for r in ds]
    raise DataError(f"{source}: no such file or directory")
