import logging
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from tiny import save_tiny_bert, save_tiny_llama, write_e2e_mini, write_sentiment  # noqa: E402
# scripts/mutate.py runs two single-threaded workers side by side
torch.set_num_threads(int(os.environ.get("PREFIXTUNE_TEST_THREADS", min(2, os.cpu_count() or 1))))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _prefixtune_logging():
    """Undo what a command run in-process (``prefixtune.cli.main.main``) did to the ``prefixtune``
    logger (its own handler, no propagation), so that ``caplog`` sees the next tests' records."""
    yield
    logger = logging.getLogger("prefixtune")
    logger.handlers.clear()
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


# ---------------------------------------------------------------- small runs on disk (training, CLI, compare)

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama with SmolLM2's real tokenizer, saved like any local model."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def e2e_dir(tmp_path_factory):
    return write_e2e_mini(tmp_path_factory.mktemp("e2e-mini"))


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def sentiment_dir(tmp_path_factory):
    """A tiny SST-2-like TSV task whose label is given away by one word."""
    return write_sentiment(tmp_path_factory.mktemp("sentiment"))
