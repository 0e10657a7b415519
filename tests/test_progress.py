"""Progress bars: drawn at the default level, hidden by ``-q`` (the logger above INFO) or ``hide``."""

from __future__ import annotations

import logging

import pytest

from prefixtune import progress


@pytest.mark.parametrize("level, hide, shown", [(logging.INFO, False, True), (logging.DEBUG, False, True),
                                                (logging.WARNING, False, False), (logging.INFO, True, False)])
def test_a_bar_is_drawn_unless_quiet_or_hidden(monkeypatch, capsys, level, hide, shown):
    monkeypatch.setattr(logging.getLogger("prefixtune"), "level", level)
    assert list(progress.bar(range(5), hide=hide, desc="counting")) == list(range(5))  # the items pass through
    assert ("counting" in capsys.readouterr().err) is shown

