"""``DataError``, and how a reading library's exception is quoted in one."""

from __future__ import annotations


class DataError(ValueError):
    """Input data cannot be read or lacks what the task needs; the message names file and fix."""


def root_cause(error: BaseException) -> BaseException:
    """The innermost ``__cause__`` of ``error``.

    ``datasets`` wraps a reader's exception in its own (``DatasetGenerationError: An error
    occurred while generating the dataset``); the reader's is the one that says what is wrong.
    """
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def cause(error: BaseException) -> str:
    """``"Type: first line"`` of :func:`root_cause`."""
    error = root_cause(error)
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
