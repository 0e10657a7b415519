"""The command line's logging: levels and flags, quieter processes other than the main one."""

from __future__ import annotations

import logging

import pytest

from prefixtune.cli.logs import configure_logging
from prefixtune.cli.main import parse_args


def test_main_process_logs_at_the_chosen_level_to_stderr(capsys):
    logger = configure_logging("info", environ={})
    assert logger.level == logging.INFO and not logger.propagate
    logging.getLogger("prefixtune.train.loop").info("hello")
    logging.getLogger("prefixtune.train.loop").debug("not shown")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].endswith(" INFO prefixtune.train.loop: hello") and "[rank" not in err[0]


def test_other_processes_log_warnings_only_and_say_their_rank(capsys):
    logger = configure_logging("info", environ={"RANK": "1", "WORLD_SIZE": "2"})
    assert logger.level == logging.WARNING
    logging.getLogger("prefixtune.train.loop").info("not shown")
    logging.getLogger("prefixtune.train.loop").warning("careful")
    assert capsys.readouterr().err.strip().endswith("WARNING [rank 1] prefixtune.train.loop: careful")
    assert configure_logging("error", environ={"RANK": "1", "WORLD_SIZE": "2"}).level == logging.ERROR
    assert configure_logging("debug", environ={"RANK": "0", "WORLD_SIZE": "2"}).level == logging.DEBUG


def test_configuring_again_does_not_duplicate_lines(capsys):
    configure_logging("info", environ={})
    configure_logging("info", environ={})
    logging.getLogger("prefixtune").info("once")
    assert capsys.readouterr().err.count("once") == 1
    with pytest.raises(ValueError, match="log level must be one of"):
        configure_logging("loud")


@pytest.mark.parametrize("argv, level", [
    (["train"], None), (["-q", "train"], "warning"), (["train", "-q"], "warning"),
    (["-v", "eval", "--run", "x"], "debug"), (["--log-level", "error", "compare", "--config", "c"], "error"),
    (["train", "--log-level", "debug"], "debug"),
])
def test_log_level_flags_before_or_after_the_subcommand(argv, level):
    assert getattr(parse_args(argv), "log_level", None) == level
