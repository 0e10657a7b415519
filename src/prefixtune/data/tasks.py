"""Tasks: examples of one split of a task, read from its data (local, given, or the hub).

:func:`load_task` reads the records (:mod:`prefixtune.data.sources`), maps a built-in's hub
layout to its own (:mod:`prefixtune.data.builtins`), and turns each record into an
:class:`Example` as the :class:`TaskSpec` says (columns by dotted path, :mod:`prefixtune.data.fields`).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field, replace
from typing import Any

from prefixtune.data.builtins import BUILTINS, find_shared_data, local_copy, missing_data_error, to_task_columns
from prefixtune.data.errors import DataError
from prefixtune.data.fields import field_value, format_template, required, scalar, texts
from prefixtune.data.hub import HubUnavailable
from prefixtune.data.sources import read_records
from prefixtune.data.spec import KINDS, HubSource, TaskSpec

__all__ = ["BUILTINS", "Example", "HubSource", "KINDS", "Task", "TaskSpec", "find_shared_data", "load_task"]


@dataclass
class Example:
    """One example. ``text``: the formatted input (or a pair); ``target``/``label`` per task kind."""

    text: str | tuple[str, str]
    target: str | None = None
    label: int | None = None


@dataclass
class Task:
    """A task's examples for one split, plus multi-reference groups for generation.

    Attributes:
        references: generation: input text -> all its references, in order of first appearance
            (several rows sharing an input, as in E2E, become one multi-reference test input;
            with :attr:`TaskSpec.references_column` or list-valued targets, the first row's list,
            plus what later rows with the same input list and it lacks).
    """

    spec: TaskSpec
    split: str
    examples: list[Example]
    references: dict[str, list[str]] = field(default_factory=dict)

    @property
    def inputs(self) -> list[str]:
        """Unique inputs (generation), in order of first appearance."""
        return list(self.references)


def _read(spec: TaskSpec, split: str, data: Any, data_dir: str | os.PathLike | None) -> tuple[list[dict], str]:
    """The split's records and a name of where they came from, for messages."""
    if data is not None:
        return read_records(data, split), str(data) if isinstance(data, (str, os.PathLike)) else type(data).__name__
    local = local_copy(spec.name, data_dir)
    if local is not None:
        return read_records(local, split), str(local)
    if spec.hub is None:
        raise missing_data_error(spec, data_dir, None)
    try:
        return read_records(spec.hub.name, split), spec.hub.name
    except HubUnavailable as e:
        raise missing_data_error(spec, data_dir, e.reason) from None


def _subset(records: list[dict], limit: int | None, sample_seed: int | None) -> list[dict]:
    if limit is not None and sample_seed is not None and limit < len(records):
        keep = sorted(random.Random(sample_seed).sample(range(len(records)), limit))
        return [records[i] for i in keep]
    return records if limit is None else records[:limit]


def _listed_references(spec: TaskSpec, record: dict, where: str) -> list[str] | None:
    """The row's :attr:`TaskSpec.references_column` as texts; None without one, or for an empty list or null."""
    if not spec.references_column:
        return None
    value = field_value(record, spec.references_column, where)
    if value is None or isinstance(value, (list, tuple)) and not value:
        return None
    return texts(value, spec.references_column, where)


def _generation(spec: TaskSpec, records: list[dict], where: str) -> tuple[list[Example], dict[str, list[str]]]:
    examples: list[Example] = []
    references: dict[str, list[str]] = {}
    for number, r in enumerate(records, 1):
        value = field_value(r, spec.target_column, where)
        targets = texts(value, spec.target_column, f"{where} record {number}")
        text = format_template(spec.template, r, where)
        examples.append(Example(text, target=targets[0]))
        refs = references.setdefault(text, [])
        listed = _listed_references(spec, r, where) or (targets if isinstance(value, (list, tuple)) else None)
        if listed is None:
            refs.append(targets[0])  # one row per reference (E2E's files): each row adds its own
        else:  # the row lists them all: later rows with the same input add only what is new
            refs.extend([t for t in listed if t not in refs] if refs else listed)
    return examples, references


def _classification(spec: TaskSpec, records: list[dict], where: str) -> tuple[TaskSpec, list[Example]]:
    def value(r: dict, column: str) -> str:
        return str(scalar(field_value(r, column, where), column, where))

    def label_of(r: dict, number: int) -> str:
        here = f"{where} record {number}"
        return str(required(scalar(field_value(r, spec.label_column, here), spec.label_column, here),
                            spec.label_column, here))

    labels = list(spec.labels)
    if not labels:
        labels = sorted({label_of(r, n) for n, r in enumerate(records, 1)})
        spec = replace(spec, labels=tuple(labels))
    index = {name: i for i, name in enumerate(labels)}
    examples = []
    for number, r in enumerate(records, 1):
        label = label_of(r, number)
        if label not in index:
            raise DataError(f"{where}: label {label!r} is not one of {labels}")
        if spec.text_columns:
            parts = tuple(value(r, c) for c in spec.text_columns)
            text: str | tuple[str, str] = parts[0] if len(parts) == 1 else (parts[0], parts[1])
        else:
            text = format_template(spec.template, r, where)
        examples.append(Example(text, label=index[label]))
    return spec, examples


def load_task(task: str | TaskSpec, split: str = "train", data: Any = None,
              data_dir: str | os.PathLike | None = None, limit: int | None = None,
              sample_seed: int | None = None) -> Task:
    """Examples of ``task`` (a built-in name or a :class:`TaskSpec`) for ``split``.

    Args:
        split: ``train``, ``dev`` (also found as ``validation``), ``test``, or any split the data has.
        data: where to read from: a file, a directory, a hub name ``owner/name[:config][@revision]``,
            or a ``datasets.Dataset``/``DatasetDict`` (:func:`prefixtune.data.sources.read_records`);
            default: the task's local copy (:mod:`prefixtune.data.builtins` lists where it is
            looked for), else its hub copy.
        data_dir: a folder holding ``<task name>/``, searched before ``$PREFIXTUNE_DATA``.
        limit: keep the first ``limit`` records.
        sample_seed: with ``limit``, keep a random sample of ``limit`` records drawn with this
            seed instead (in file order), e.g. for low-data experiments with several subsets.

    Raises:
        DataError: no data (the message says where it goes), or data that does not fit the task.
    """
    spec = BUILTINS.get(task) if isinstance(task, str) else task
    if spec is None:
        raise DataError(f"unknown task {task!r}: built-ins are {sorted(BUILTINS)}; or describe the columns "
                        "(--input-column/--target-column or --label-column)")
    if spec.kind not in KINDS:
        raise DataError(f"task kind must be one of {KINDS}, got {spec.kind!r}")
    records, source = _read(spec, split, data, data_dir)
    where = f"{source} [{split}]"
    records = to_task_columns(spec, _subset(records, limit, sample_seed), where)
    if spec.kind == "generation":
        examples, references = _generation(spec, records, where)
        return Task(spec, split, examples, references)
    spec, examples = _classification(spec, records, where)
    return Task(spec, split, examples)
