"""Fields of a record by dotted path, input templates, and the value kinds a task accepts.

A column name may be a dotted path into nested data: ``annotations.text`` is
``record["annotations"]["text"]``; a number picks a list element (``references.0``); a name
applied to a list of objects takes that field of each (``answers.text`` of
``[{"text": "a"}, {"text": "b"}]`` is ``["a", "b"]``). A column whose name itself holds a dot wins
over the path. Templates use the same paths: ``"{meta.title}: {text}"``.
"""

from __future__ import annotations

import math
import string
from typing import Any, Mapping

from prefixtune.data.errors import DataError


def _inside(here: str, value: Any) -> str:
    if isinstance(value, Mapping):
        return f"{here} has columns {sorted(value)}"
    if isinstance(value, list):
        return f"{here} is a list: pick an element by number"
    return f"{here} holds {str(value)[:40]!r}, which has no fields"


def field_value(record: Mapping[str, Any], path: str, where: str) -> Any:
    """``record``'s value at ``path`` (a column, or a dotted path as in the module docstring).

    Raises:
        DataError: no such column or field; the message lists what is there.
    """
    if path in record:
        return record[path]
    value: Any = record
    for depth, part in enumerate(path.split(".")):
        here = ".".join(path.split(".")[:depth]) or "the record"
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit():
            if int(part) >= len(value):
                raise DataError(f"{where}: {here} has {len(value)} elements, so {path!r} has no element {part}")
            value = value[int(part)]
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) and part in v for v in value):
            value = [v[part] for v in value]
        else:
            inside = f" ({_inside(here, value)})" if depth else ""
            raise DataError(f"{where}: no column {path!r} (columns: {sorted(record)}){inside}; "
                            "set the right column option")
    return value


def scalar(value: Any, path: str, where: str) -> Any:
    """``value`` if it is a single value (text, number, bool or None), else a DataError naming the fix."""
    if isinstance(value, (list, tuple, Mapping)):
        kind = "a list" if isinstance(value, (list, tuple)) else "an object"
        raise DataError(f"{where}: column {path!r} holds {kind} ({str(value)[:60]}); name one value with a dotted "
                        f"path, e.g. {path}.0 for a list's first element or {path}.FIELD for an object's field")
    return value


def required(value: Any, path: str, where: str) -> Any:
    """``value`` unless it is missing (None, NaN, or an empty or blank text): then a DataError
    naming the column and the fix (never the text "None" or "nan" as a target or a class)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str)
                                                                             and not value.strip()):
        shown = "empty" if isinstance(value, str) else "null (missing)" if value is None else "NaN"
        raise DataError(f"{where}: column {path!r} is {shown}; every row needs one: fill it in or drop the row")
    return value


def texts(value: Any, path: str, where: str) -> list[str]:
    """A generation target as a list of texts: one value, or every element of a list of values
    (a missing one is a DataError, :func:`required`)."""
    if isinstance(value, (list, tuple)):
        out = [str(required(scalar(v, f"{path}.{i}", where), f"{path}.{i}", where)) for i, v in enumerate(value)]
        if not out:
            raise DataError(f"{where}: column {path!r} holds an empty list; every row needs a target")
        return out
    return [str(required(scalar(value, path, where), path, where))]


class _RecordFormatter(string.Formatter):
    """``str.format`` whose fields are the record's columns or dotted paths (``{a.b}``, ``{refs.0}``)."""

    def __init__(self, where: str, template: str) -> None:
        self.where, self.template = where, template

    def get_field(self, field_name: str, args: Any, kwargs: Mapping[str, Any]) -> tuple[Any, str]:
        try:
            value = field_value(kwargs, field_name, self.where)
        except DataError:
            raise DataError(f"{self.where}: the template {self.template!r} uses column {field_name!r}, "
                            f"but the data has columns {sorted(kwargs)}") from None
        value = scalar(value, field_name, self.where)
        return ("" if value is None else value), field_name


def template_fields(template: str) -> list[str]:
    """The columns (or paths) a template uses, in order: ``"{mr} {x.y}"`` -> ``["mr", "x.y"]``."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def format_template(template: str, record: Mapping[str, Any], where: str) -> str:
    """``template`` filled from ``record`` (a missing value, None, becomes an empty string).

    Raises:
        DataError: the template names a column the data lacks, or one holding a list or an object.
    """
    try:
        return _RecordFormatter(where, template).vformat(template, (), record)
    except (ValueError, IndexError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{where}: the template {template!r} cannot be filled ({e}); write columns as {{name}} "
                        "and a literal brace as {{ or }}") from None
