"""Dotted paths into nested fields, templates over them, and the value kinds a task accepts."""

from __future__ import annotations

import pytest

from prefixtune.data.errors import DataError
from prefixtune.data.fields import field_value, format_template, scalar, template_fields, texts

RECORD = {"id": 3, "meta": {"title": "T", "tags": ["x", "y"]}, "answers": [{"text": "a"}, {"text": "b"}],
          "refs": ["r1", "r2"], "a.b": "literal", "a": {"b": "nested"}, "none": None}


@pytest.mark.parametrize("path, value", [
    ("id", 3), ("meta.title", "T"), ("meta.tags.1", "y"), ("answers.text", ["a", "b"]), ("answers.0.text", "a"),
    ("refs.0", "r1"), ("a.b", "literal"), ("none", None),
])
def test_paths(path, value):
    assert field_value(RECORD, path, "w") == value


@pytest.mark.parametrize("path, message", [
    ("nope", "w: no column 'nope' (columns: ['a', 'a.b', 'answers', 'id', 'meta', 'none', 'refs']); set the right"),
    ("meta.nope", "(meta has columns ['tags', 'title'])"),
    ("refs.5", "w: refs has 2 elements, so 'refs.5' has no element 5"),
    ("id.x", "(id holds '3', which has no fields)"),
    ("refs.x", "(refs is a list: pick an element by number)"),
])
def test_missing_paths_are_named(path, message):
    with pytest.raises(DataError) as e:
        field_value(RECORD, path, "w")
    assert message in str(e.value)


def test_templates_fill_paths_and_refuse_lists():
    assert format_template("{meta.title}: {refs.1} {none}|{id:03d}", RECORD, "w") == "T: r2 |003"
    assert template_fields("{mr}\n{x.y!r}") == ["mr", "x.y"]
    with pytest.raises(DataError, match=r"column 'refs' holds a list \(\['r1', 'r2'\]\); name one value with a "
                                         r"dotted path, e.g. refs.0"):
        format_template("{refs}", RECORD, "w")
    with pytest.raises(DataError, match=r"the template '\{src\}' uses column 'src', but the data has columns \['a'"):
        format_template("{src}", RECORD, "w")
    with pytest.raises(DataError, match="cannot be filled"):
        format_template("{meta.title", RECORD, "w")
    for positional in ("{0}", "{}"):  # str.format's positional fields: once an IndexError
        with pytest.raises(DataError, match="the template .* (uses column '0'|cannot be filled)"):
            format_template(positional, RECORD, "w")


def test_targets_and_scalars():
    assert texts("one", "t", "w") == ["one"] and texts(["a", 2], "t", "w") == ["a", "2"]
    with pytest.raises(DataError, match="column 't' holds an empty list; every row needs a target"):
        texts([], "t", "w")
    with pytest.raises(DataError, match="column 't.0' holds a list"):
        texts([["nested"]], "t", "w")
    assert scalar(0, "label", "w") == 0
    with pytest.raises(DataError, match=r"column 'label' holds an object .*label.FIELD"):
        scalar({"x": 1}, "label", "w")
