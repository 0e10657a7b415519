"""Progress bars (tqdm) for long work, shown on stderr unless the command line asked for quiet.

Every bar of the library goes through :func:`bar`, so ``-q`` (the ``prefixtune`` logger above INFO,
see :mod:`prefixtune.cli.logs`) hides them all in one place.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from prefixtune.extras import require


def quiet() -> bool:
    """Whether the ``prefixtune`` logger is set above INFO (``-q``): then no bar is drawn."""
    return logging.getLogger("prefixtune").level > logging.INFO


def bar(iterable: Iterable[Any], *, hide: bool = False, what: str = "progress", **kwargs: Any) -> Any:
    """``tqdm(iterable, **kwargs)``, disabled where ``hide`` is true or the command is quiet.
    ``what`` names the work in the error raised when tqdm (the ``train`` extra) is missing."""
    tqdm = require("tqdm.auto", "train", what).tqdm
    return tqdm(iterable, disable=hide or quiet(), **kwargs)
