"""The one stop-string rule of evaluation and the server, against a hand-written scan."""

from __future__ import annotations

import pytest

from prefixtune.evaluation.stops import cut_at_stop


def earliest_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Independent reference: scan position by position for the first place any non-empty stop starts."""
    for i in range(len(text)):
        if any(s and text.startswith(s, i) for s in stop):
            return text[:i], True
    return text, False


CASES = [
    ("Paris is nice.\nQ: next", ["\n"], ("Paris is nice.", True)),
    ("a.b\nc", ["\n", "."], ("a", True)),  # the earliest match wins, not the first string listed
    ("a.b\nc", [".", "\n"], ("a", True)),
    ("xyz END here STOP", ["STOP", "END"], ("xyz ", True)),
    ("\nstarts with a stop", ["\n"], ("", True)),  # a match at position 0 leaves nothing
    ("no stop here", ["\n", "###"], ("no stop here", False)),
    ("keep all", [], ("keep all", False)),
    ("empty strings never match", ["", ""], ("empty strings never match", False)),
    ("empty beside real: x|y", ["", "|"], ("empty beside real: x", True)),
    ("", ["\n"], ("", False)),
    ("abcabc", ["cab", "bca"], ("a", True)),  # overlapping stops: the one starting first
]


@pytest.mark.parametrize("text,stop,want", CASES)
def test_cut_at_the_earliest_stop_string(text, stop, want):
    assert cut_at_stop(text, stop) == want
    assert earliest_stop(text, stop) == want  # the table itself agrees with the reference scan


def test_accepts_any_sequence_of_stops():
    assert cut_at_stop("one\ntwo", ("\n",)) == ("one", True)
