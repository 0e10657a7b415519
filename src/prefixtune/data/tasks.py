"""Tasks: which columns make the input, the target or the label, and the built-in ones.

Built-ins ``e2e`` (table-to-text), ``sst2`` and ``rte`` (classification) read
``../shared/data/<name>/`` (or ``$PREFIXTUNE_DATA/<name>``, or ``data_dir``) when present and
otherwise the public hub copies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prefixtune.data.sources import DataError, read_records

KINDS = ("generation", "classification")


@dataclass(frozen=True)
class TaskSpec:
    """How records become examples.

    Fields:
        name: task name (for run directories and reports).
        kind: ``"generation"`` or ``"classification"``.
        template: the input text, formatted with the record's columns, e.g. ``"{mr}\\n"``.
        target_column: generation: the column holding the target text.
        label_column: classification: the column holding the label.
        labels: classification: label values in id order (empty: sorted values seen in training data).
        text_columns: classification: one column, or two for sentence pairs (used instead of the
            template when given, so the tokenizer can mark the pair).
        hub: the public ``datasets`` name used when no local copy exists.
    """

    name: str
    kind: str
    template: str = "{text}"
    target_column: str | None = None
    label_column: str | None = None
    labels: tuple[str, ...] = ()
    text_columns: tuple[str, ...] = ()
    hub: str | None = None


BUILTINS: dict[str, TaskSpec] = {
    "e2e": TaskSpec("e2e", "generation", template="{mr}\n", target_column="ref", hub="GEM/e2e_nlg"),
    "sst2": TaskSpec("sst2", "classification", label_column="label", labels=("0", "1"),
                     text_columns=("sentence",), hub="glue/sst2"),
    "rte": TaskSpec("rte", "classification", label_column="label", labels=("entailment", "not_entailment"),
                    text_columns=("sentence1", "sentence2"), hub="glue/rte"),
}


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
            (several rows sharing an input, as in E2E, become one multi-reference test input).
    """

    spec: TaskSpec
    split: str
    examples: list[Example]
    references: dict[str, list[str]] = field(default_factory=dict)

    @property
    def inputs(self) -> list[str]:
        """Unique inputs (generation), in order of first appearance."""
        return list(self.references)


def find_shared_data(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The shared data folder, if there is one: ``data_dir``, ``$PREFIXTUNE_DATA``, or ``../shared/data``."""
    here = Path(__file__).resolve()
    for c in (data_dir, os.environ.get("PREFIXTUNE_DATA"), Path.cwd() / ".." / "shared" / "data",
              here.parents[4] / "shared" / "data" if len(here.parents) > 4 else None):
        if c and Path(c).is_dir():
            return Path(c)
    return None


def _format(template: str, record: dict[str, Any], source: str) -> str:
    try:
        return template.format(**{k: "" if v is None else v for k, v in record.items()})
    except KeyError as e:
        raise DataError(f"{source}: the template {template!r} uses column {e.args[0]!r}, "
                        f"but the data has columns {sorted(record)}") from None


def _column(record: dict[str, Any], name: str, source: str) -> Any:
    if name not in record:
        raise DataError(f"{source}: no column {name!r} (columns: {sorted(record)}); set the right column option")
    return record[name]


def load_task(task: str | TaskSpec, split: str = "train", data: str | os.PathLike | None = None,
              data_dir: str | os.PathLike | None = None, limit: int | None = None,
              sample_seed: int | None = None) -> Task:
    """Examples of ``task`` (a built-in name or a :class:`TaskSpec`) for ``split``.

    Args:
        data: where to read from (file, directory or hub name); default: the built-in's local
            copy, else its hub copy.
        limit: keep the first ``limit`` records.
        sample_seed: with ``limit``, keep a random sample of ``limit`` records drawn with this
            seed instead (in file order), e.g. for low-data experiments with several subsets.
    """
    spec = BUILTINS.get(task) if isinstance(task, str) else task
    if spec is None:
        raise DataError(f"unknown task {task!r}: built-ins are {sorted(BUILTINS)}; or describe the columns "
                        "(--input-column/--target-column or --label-column)")
    source = data
    if source is None:
        shared = find_shared_data(data_dir)
        local = shared / spec.name if shared is not None else None
        source = local if local is not None and local.is_dir() else spec.hub
    if source is None:
        raise DataError(f"task {spec.name!r} needs data: pass a file or directory")
    records = read_records(source, split)
    if limit is not None and sample_seed is not None and limit < len(records):
        import random

        keep = sorted(random.Random(sample_seed).sample(range(len(records)), limit))
        records = [records[i] for i in keep]
    elif limit is not None:
        records = records[:limit]
    where = f"{source} [{split}]"
    examples: list[Example] = []
    references: dict[str, list[str]] = {}
    if spec.kind == "generation":
        for r in records:
            text = _format(spec.template, r, where)
            target = str(_column(r, spec.target_column, where))
            examples.append(Example(text, target=target))
            references.setdefault(text, []).append(target)
    elif spec.kind == "classification":
        labels = list(spec.labels)
        if not labels:
            labels = sorted({str(_column(r, spec.label_column, where)) for r in records})
            spec = replace(spec, labels=tuple(labels))
        index = {name: i for i, name in enumerate(labels)}
        for r in records:
            value = str(_column(r, spec.label_column, where))
            if value not in index:
                raise DataError(f"{where}: label {value!r} is not one of {labels}")
            if spec.text_columns:
                parts = tuple(str(_column(r, c, where)) for c in spec.text_columns)
                text: str | tuple[str, str] = parts[0] if len(parts) == 1 else (parts[0], parts[1])
            else:
                text = _format(spec.template, r, where)
            examples.append(Example(text, label=index[value]))
    else:
        raise DataError(f"task kind must be one of {KINDS}, got {spec.kind!r}")
    return Task(spec, split, examples, references)
