"""Fixtures of the serving tests: SmolLM2's tokenizer and two small saved adapters."""

from __future__ import annotations

import pytest
import transformers as T

import prefixtune as pt
from live_server import tiny_llama
from prefixtune.bundled.models import resolve


@pytest.fixture(scope="session")
def tokenizer():
    tok = T.AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="session")
def adapters(tokenizer, tmp_path_factory):
    out = {}
    for name, cfg in {"table": pt.PrefixConfig(prefix_length=4, init_std=1.0, hidden_size=16),
                      "soft": pt.PromptConfig(num_virtual_tokens=3, init_range=2.0)}.items():
        path = tmp_path_factory.mktemp(name)
        pt.wrap(tiny_llama(tokenizer), cfg).save_pretrained(path)
        out[name] = path
    return out
