"""The ``prefixtune`` command line."""

from prefixtune.cli.main import main

__all__ = ["main"]
