"""The built-in tasks, where their data is looked for, and how their hub copies map.

``e2e`` (table-to-text, multi-reference), ``sst2`` and ``rte`` (classification). A built-in (or
any task, by its name) reads the folder ``<root>/<task>/``, the first found of these roots:

1. ``data_dir`` (an argument of :func:`prefixtune.data.tasks.load_task`);
2. ``$PREFIXTUNE_DATA``;
3. ``../shared/data`` relative to the working directory (a development checkout's layout).

Without a local copy a built-in reads its public hub copy (:attr:`TaskSpec.hub`):
``tuetschek/e2e_nlg`` (the official E2E release the shared files come from, through the hub's
Parquet export), ``nyu-mll/glue:sst2`` and ``nyu-mll/glue:rte``. When that fails too (offline),
the error says where the files go.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefixtune.data.errors import DataError
from prefixtune.data.fields import field_value
from prefixtune.data.files import EXTENSIONS
from prefixtune.data.spec import HubSource, TaskSpec

BUILTINS: dict[str, TaskSpec] = {
    "e2e": TaskSpec("e2e", "generation", template="{mr}\n", target_column="ref",
                    hub=HubSource("tuetschek/e2e_nlg@refs/convert/parquet",
                                  columns=(("mr", "meaning_representation"), ("ref", "human_reference")))),
    "sst2": TaskSpec("sst2", "classification", label_column="label", labels=("0", "1"),
                     text_columns=("sentence",), hub=HubSource("nyu-mll/glue:sst2", labels=("0", "1"))),
    "rte": TaskSpec("rte", "classification", label_column="label", labels=("entailment", "not_entailment"),
                    text_columns=("sentence1", "sentence2"),
                    hub=HubSource("nyu-mll/glue:rte", labels=("entailment", "not_entailment"))),
}
ENV = "PREFIXTUNE_DATA"


def data_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where task folders are looked for, in order (existing or not): ``data_dir``,
    ``$PREFIXTUNE_DATA``, ``../shared/data`` from the working directory."""
    roots = [Path(data_dir)] if data_dir else []
    if os.environ.get(ENV):
        roots.append(Path(os.environ[ENV]).expanduser())
    return roots + [(Path.cwd() / ".." / "shared" / "data").resolve()]


def find_shared_data(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first of :func:`data_roots` that exists, if any."""
    return next((root for root in data_roots(data_dir) if root.is_dir()), None)


def local_copy(name: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """``<root>/<name>/`` for the first root that has it."""
    return next((root / name for root in data_roots(data_dir) if (root / name).is_dir()), None)


def missing_data_error(spec: TaskSpec, data_dir: str | os.PathLike | None, hub_error: str | None) -> DataError:
    """The error for a task without data: the folders searched, the files expected, the other ways."""
    searched = [str(root / spec.name) for root in data_roots(data_dir)]
    unset = "" if os.environ.get(ENV) else f" (${ENV} is not set; set it to a folder holding {spec.name}/)"
    hub = f"; its hub copy {spec.hub.name} could not be read ({hub_error})" if hub_error else ""
    columns = f" with columns {', '.join(spec.columns)}" if spec.columns else ""
    return DataError(
        f"task {spec.name!r} has no data: no folder {', '.join(searched)}{unset}{hub}. Put train.csv, dev.csv "
        f"and test.csv{columns} (or {', '.join(EXTENSIONS[1:])}; or a save_to_disk copy) into "
        f"{'that folder' if len(searched) == 1 else 'one of those folders'}, or name the data with --data: a "
        f"file, a directory of train/dev/test files, a save_to_disk "
        f"directory, or a hub data set owner/name[:config][@revision]")


def _label(value: Any, hub: HubSource, where: str) -> Any:
    if not isinstance(value, int) or isinstance(value, bool) or not hub.labels:
        return value
    if 0 <= value < len(hub.labels):
        return hub.labels[value]
    unlabelled = "; -1 marks an unlabelled row (GLUE hides its test labels): evaluate on dev" if value == -1 else ""
    raise DataError(f"{where}: label {value} is not a label id of {hub.name} (0..{len(hub.labels) - 1}){unlabelled}")


def to_task_columns(spec: TaskSpec, records: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """``records`` with the hub copy's columns renamed to the task's and integer labels named
    (:class:`HubSource`); records already in the task's layout come back unchanged."""
    hub = spec.hub
    if hub is None or not records:
        return records
    first = records[0]
    renames = [(ours, path) for ours, path in hub.columns if ours not in first and _has(first, path)]
    if renames:
        records = [{**r, **{ours: field_value(r, path, where) for ours, path in renames}} for r in records]
    if spec.kind == "classification" and hub.labels and spec.label_column:
        column = spec.label_column
        records = [{**r, column: _label(r[column], hub, where)} if column in r else r for r in records]
    return records


def _has(record: dict[str, Any], path: str) -> bool:
    try:
        field_value(record, path, "")
    except DataError:
        return False
    return True

