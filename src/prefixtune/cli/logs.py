"""Where the ``prefixtune`` loggers' records go when the command line runs.

The library only logs (``logging.getLogger(__name__)`` in each module, all under ``prefixtune``);
the command line decides where the records go and how many: :func:`configure_logging` sends them
to stderr, at the chosen level on the main process and at WARNING or above on the others, so
several processes do not repeat every line. Results meant for the user (scores, reports) are
printed to stdout by the commands themselves.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Mapping

LEVELS = ("debug", "info", "warning", "error")
#: the command line's logging options: ``--log-level LEVEL``, and the flags that stand for a level
LEVEL_OPTION = "--log-level"
LEVEL_FLAGS = {("-v", "--verbose"): "debug", ("-q", "--quiet"): "warning"}
#: where launchers put a process's rank and the number of processes (torchrun / accelerate, then MPI)
RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _first_int(environ: Mapping[str, str], names: tuple[str, ...], default: int) -> int:
    for name in names:
        if environ.get(name, "").strip().isdigit():
            return int(environ[name])
    return default


class StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is when a record comes (so a
    command run inside a test that swaps stderr logs to the swapped one, not a closed one)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; the property ignores it
        pass


def without_logging_options(argv: list[str]) -> list[str]:
    """``argv`` less its logging options (they change what a run prints, not what it produces)."""
    flags = {f for names in LEVEL_FLAGS for f in names}
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == LEVEL_OPTION:
            skip = True
        elif a not in flags and not a.startswith(LEVEL_OPTION + "="):
            kept.append(a)
    return kept


def configure_logging(level: str = "info", environ: Mapping[str, str] = os.environ) -> logging.Logger:
    """Send the ``prefixtune`` loggers to stderr as ``time LEVEL logger: message``; returns that logger.

    Args:
        level: one of :data:`LEVELS`, for the main process (rank 0). The other processes of a
            multi-process run log at ``warning`` unless ``level`` is stricter, and prefix their
            lines with ``[rank N]``.
        environ: where the launcher's rank and world size are read (``RANK``/``WORLD_SIZE``, or MPI's).

    Calling it again replaces the handler (no duplicated lines). The records do not propagate to
    the root logger: the command line owns the process's output.
    """
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    rank, world = _first_int(environ, RANK_VARIABLES, 0), _first_int(environ, SIZE_VARIABLES, 1)
    chosen = getattr(logging, level.upper())
    handler = StderrHandler()
    where = f"[rank {rank}] " if world > 1 else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {where}%(name)s: %(message)s",
                                           "%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger("prefixtune")
    for old in [h for h in logger.handlers if isinstance(h, StderrHandler)]:
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(chosen if rank == 0 else max(chosen, logging.WARNING))
    logger.propagate = False  # not again through a root handler that some library set up (rouge_score does)
    return logger
