"""Row-by-row checks of a text data file before ``datasets`` reads it, so that a malformed row is
reported by its line number instead of being padded, dropped or split (CSV/TSV), or failing deep
inside Arrow's JSON reader with a message that names no line (JSON Lines)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from prefixtune.data.errors import DataError

_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false",
               type(None): "null"}


def check_widths(path: Path, rows: Any, width: int, tsv: bool) -> int:
    """The number of rows ``rows`` (a ``csv.reader`` past the header) holds, each checked to have
    ``width`` fields; blank lines are skipped, as pandas skips them. A TSV row of another width is
    most often a field holding a line break or a tab: TSV is read without quoting, so a quoted
    line break splits its row.

    Raises:
        DataError: naming the first row of another width by its line.
    """
    count = 0
    for row in rows:
        if not row:
            continue
        count += 1
        if len(row) != width:
            hint = ("a TSV field cannot hold a tab or a line break (TSV is read without quotes, as GLUE's "
                    "files are): replace them with spaces, or write the file as CSV or JSON Lines" if tsv else
                    "quote fields that hold a comma or a line break, and write empty fields as empty (a,,c)")
            raise DataError(f"{path}: line {rows.line_num} has {len(row)} field{'s' if len(row) != 1 else ''}, "
                            f"the header has {width}; {hint}")
    return count


def _check_objects(path: Path, values: Iterable[tuple[int, Any]], unit: str) -> None:
    for number, value in values:
        if not isinstance(value, dict):
            kind = _JSON_KINDS.get(type(value), type(value).__name__)
            raise DataError(f"{path}: {unit} {number} is {kind}, not an object; each row is one JSON object "
                            '{"column": value, ...}')


def _lines(path: Path, text: str) -> Iterable[tuple[int, Any]]:
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {number} is not valid JSON ({e.msg} at column {e.colno}); "
                                "JSON Lines holds one object per line") from None


def check_json_rows(path: Path) -> None:
    """Every row of a ``.jsonl`` file (one object per line) or a ``.json`` file (an array of
    objects, ``{"data": [objects]}``, or one object per line) is a JSON object.

    Raises:
        DataError: naming the first line (or array element) that is not valid JSON or not an object.
    """
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # one object per line, checked below
        else:
            rows = whole.get("data", whole) if isinstance(whole, dict) and len(whole) == 1 else whole
            if isinstance(rows, list):
                _check_objects(path, enumerate(rows, 1), "element")
                return
            if isinstance(whole, dict):
                return
    _check_objects(path, _lines(path, text), "line")
