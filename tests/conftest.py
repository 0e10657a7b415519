import csv
import logging
import os
import sys

import pytest
import torch
import transformers

sys.path.insert(0, os.path.dirname(__file__))

from prefixtune.bundled.models import resolve  # noqa: E402
from tiny import save_tiny_bert  # noqa: E402
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
    where = tmp_path_factory.mktemp("tiny-llama")
    tok = transformers.AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=64, vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                        bos_token_id=tok.bos_token_id)
    transformers.LlamaForCausalLM(cfg).save_pretrained(where)
    tok.save_pretrained(where)
    return where


@pytest.fixture(scope="module")
def e2e_dir(tmp_path_factory):
    where = tmp_path_factory.mktemp("e2e-mini")
    foods = ["French", "Thai", "Italian", "English"]
    for split, n in (("train", 40), ("dev", 8)):
        with open(where / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["mr", "ref"])
            for i in range(n):
                mr = f"name[Place {i}], food[{foods[i % 4]}]"
                w.writerow([mr, f"Place {i} serves {foods[i % 4]} food."])
                if split == "dev":
                    w.writerow([mr, f"{foods[i % 4]} food at Place {i}."])
    return where


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def sentiment_dir(tmp_path_factory):
    """A tiny SST-2-like TSV task whose label is given away by one word."""
    where = tmp_path_factory.mktemp("sentiment")
    for split, n in (("train", 64), ("dev", 16)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            good = i % 2 == 0
            rows.append(f"the film number {i} was {'wonderful' if good else 'dreadful'}\t{int(good)}")
        (where / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return where


