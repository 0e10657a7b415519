"""Records (dicts of column -> value) of one split of a data source.

A source is one of:

* a file: ``.csv``, ``.tsv``, ``.json``, ``.jsonl`` or ``.parquet`` (read through ``datasets``,
  see :mod:`prefixtune.data.files`); a single file serves every split;
* a directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``;
* a directory holding ``{split}.<ext>`` files (or ``{split}/`` ``save_to_disk`` directories);
* in Python, a ``datasets.Dataset`` (serves every split) or ``datasets.DatasetDict``;
* a hub data set ``owner/name[:config][@revision]`` (see :mod:`prefixtune.data.hub`).

Split names have aliases: asking for ``dev`` finds ``validation`` (or ``valid``, ``val``) and the
other way round, in directories, ``DatasetDict``s and hub data sets alike.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from prefixtune.data.errors import DataError
from prefixtune.data.files import EXTENSIONS, datasets_library, quiet, read_file
from prefixtune.data.hub import load_hub, parse_hub_name

__all__ = ["DataError", "IN_MEMORY", "describe", "read_records", "serves_every_split", "split_names"]

#: names that mean the same split, tried in this order after the one asked for
SPLIT_ALIASES = (("dev", "validation", "valid", "val"),)
#: how a ``datasets`` object passed in Python is recorded in a run's config.json
IN_MEMORY = "<in-memory datasets object"


def split_names(split: str) -> list[str]:
    """``split`` and then its aliases: ``"dev"`` -> ``["dev", "validation", "valid", "val"]``."""
    for group in SPLIT_ALIASES:
        if split in group:
            return [split] + [s for s in group if s != split]
    return [split]


def _pick_split(splits: Mapping[str, Any], split: str, where: str) -> Any:
    for name in split_names(split):
        if name in splits:
            return splits[name]
    raise DataError(f"{where}: no split {split!r} (it has {sorted(splits)}); ask for one of those")


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _records_of(dataset: Any, split: str, where: str) -> list[dict[str, Any]]:
    """Rows of a ``Dataset``, or of the ``split`` of a ``DatasetDict`` (or any mapping of splits)."""
    datasets = datasets_library()
    if isinstance(dataset, (datasets.DatasetDict, Mapping)):
        dataset = _pick_split(dataset, split, where)
    if not isinstance(dataset, datasets.Dataset):
        raise DataError(f"{where}: not a data source ({type(dataset).__name__}); give a datasets.Dataset or "
                        "DatasetDict (an IterableDataset: materialize it with Dataset.from_list(list(...)))")
    rows = dataset.to_list()
    if not rows:
        raise DataError(f"{where}: no rows")
    return rows


def _read_directory(path: Path, split: str) -> list[dict[str, Any]]:
    if _is_saved_dataset(path):
        datasets = datasets_library()
        with quiet(datasets):
            saved = datasets.load_from_disk(str(path))
        return _records_of(saved, split, f"{path} [{split}]")
    for name in split_names(split):
        found = [path / f"{name}{ext}" for ext in EXTENSIONS if (path / f"{name}{ext}").is_file()]
        if _is_saved_dataset(path / name):
            found.append(path / name)
        if len(found) > 1:
            raise DataError(f"{path}: both {found[0].name} and {found[1].name} could be the {split!r} split; "
                            "keep one of them")
        if found:
            return _read_directory(found[0], split) if found[0].is_dir() else read_file(found[0])
    tried = ", ".join(f"{n}{{{','.join(EXTENSIONS)}}}" for n in split_names(split))
    raise DataError(f"{path}: no {split!r} split in this directory (looked for {tried}, a {split}/ directory "
                    "written by save_to_disk, or a save_to_disk data set in the directory itself)")


def describe(source: Any) -> str | None:
    """How a run's ``config.json`` records ``source``: itself if it is a path or a name, else a
    description of the in-memory ``datasets`` object (JSON cannot hold the object)."""
    if source is None or isinstance(source, str):
        return source
    if isinstance(source, os.PathLike):
        return os.fspath(source)
    shape = getattr(source, "shape", None)
    return f"{IN_MEMORY}: {type(source).__name__} {shape}>"


def serves_every_split(source: Any) -> bool:
    """Whether ``source`` is one file or one ``datasets.Dataset``, which serves every split: its
    dev and test splits are its training rows."""
    if isinstance(source, (str, os.PathLike)):
        return not str(source).startswith(IN_MEMORY) and Path(source).expanduser().is_file()
    return type(source).__name__ == "Dataset"


def read_records(source: str | os.PathLike | Any, split: str = "train") -> list[dict[str, Any]]:
    """Rows of ``split`` of ``source`` (see the module docstring for what a source can be).

    Values keep the types the source gives: strings from CSV/TSV; numbers, lists and nested
    dicts from JSON, Parquet and ``datasets`` objects.

    Raises:
        DataError: nothing readable there, no such split, no rows (the message says what was tried).
        HubUnavailable: (a DataError) a hub name, and the hub could not be reached.
    """
    if not isinstance(source, (str, os.PathLike)):
        return _records_of(source, split, f"the {type(source).__name__} given [{split}]")
    if str(source).startswith(IN_MEMORY):
        raise DataError(f"{source}: this run read a datasets object passed in Python, which config.json cannot "
                        "hold; save it with .save_to_disk(DIR) and give DIR as the data")
    path = Path(source).expanduser()
    if path.is_file():
        return read_file(path)
    if path.is_dir():
        return _read_directory(path, split)
    hub = parse_hub_name(str(source))
    if hub is None:
        raise DataError(f"{source}: no such file or directory")
    return _records_of(load_hub(hub), split, f"{hub} [{split}]")
