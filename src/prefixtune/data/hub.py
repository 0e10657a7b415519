"""Data sets on the Hugging Face hub, named ``owner/name[:config][@revision]``.

``nyu-mll/glue:sst2`` is the ``sst2`` configuration of ``nyu-mll/glue``;
``tuetschek/e2e_nlg@refs/convert/parquet`` is the hub's Parquet export of a repository that
still holds a loading script (which ``datasets`` no longer runs). Both parts are optional:
``imdb``, ``stanfordnlp/imdb``. Reading one needs the network, or a copy in the ``datasets``
cache (``HF_HUB_OFFLINE=1`` then uses the cache without trying the network).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from prefixtune.data.errors import DataError, cause
from prefixtune.data.files import EXTENSIONS, datasets_library

_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_CONFIG = re.compile(r"[\w.-]+")


class HubUnavailable(DataError):
    """The hub data set could not be reached or does not exist there (offline, no network, a typo).

    Attributes:
        reason: what the hub library said, ``"Type: first line"``.
    """

    def __init__(self, name: object, reason: str) -> None:
        super().__init__(f"{name}: the hub could not give this data set ({reason})")
        self.reason = reason


@dataclass(frozen=True)
class HubName:
    """A hub data set: ``path`` (``owner/name``), an optional ``config`` and ``revision``."""

    path: str
    config: str | None = None
    revision: str | None = None

    def __str__(self) -> str:
        return self.path + (f":{self.config}" if self.config else "") + (f"@{self.revision}" if self.revision else "")


def parse_hub_name(text: str) -> HubName | None:
    """``owner/name[:config][@revision]`` as a :class:`HubName`; None if ``text`` cannot be one
    (it looks like a file path: a known file extension, a leading ``.``/``/``/``~``, a backslash,
    more than one ``/`` before the config)."""
    name, at, revision = text.partition("@")
    path, colon, config = name.partition(":")
    if (not _NAME.fullmatch(path) or path.lower().endswith(EXTENSIONS) or (colon and not _CONFIG.fullmatch(config))
            or (at and not revision)):
        return None
    return HubName(path, config or None, revision or None)


def _hint(error: Exception) -> str:
    text = str(error)
    if "scripts are no longer supported" in text:
        return "; this repository holds a loading script: its Parquet export may work, name it as NAME@refs/convert/parquet"
    if "Config name is missing" in text or "BuilderConfig" in text:
        return "; name a configuration as owner/name:config"
    return ""


def load_hub(name: HubName) -> Any:
    """Every split of ``name`` (a ``datasets.DatasetDict``), downloaded or from the cache.

    Raises:
        HubUnavailable: the hub cannot be reached (offline, no network) or has no such data set.
        DataError: anything else the hub or ``datasets`` refused (e.g. a missing configuration).
    """
    datasets = datasets_library()
    try:
        return datasets.load_dataset(name.path, name.config, revision=name.revision)
    except (ConnectionError, datasets.exceptions.DatasetNotFoundError) as e:
        raise HubUnavailable(name, cause(e)) from None
    except Exception as e:  # datasets raises many types (no such config, a loading script, ...)
        raise DataError(f"{name}: the hub data set could not be read ({cause(e)}){_hint(e)}") from None
