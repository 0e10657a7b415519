"""Tiny random models of every supported family, built offline from transformers configs."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
import transformers as T

from prefixtune.bundled.models import resolve

V = 96  # vocabulary

_CONFIGS = {
    "gpt2": lambda: T.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=V, n_positions=128,
                                 bos_token_id=1, eos_token_id=2, pad_token_id=0),
    "llama": lambda: T.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=64, vocab_size=V, bos_token_id=1, eos_token_id=2, pad_token_id=0),
    "qwen2": lambda: T.Qwen2Config(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=1,
                                   intermediate_size=64, vocab_size=V, bos_token_id=1, eos_token_id=2, pad_token_id=0),
    "mistral": lambda: T.MistralConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                       intermediate_size=64, vocab_size=V, sliding_window=4,
                                       bos_token_id=1, eos_token_id=2, pad_token_id=0),
    "gemma2": lambda: T.Gemma2Config(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                     head_dim=8, intermediate_size=64, vocab_size=V, sliding_window=4,
                                     attn_logit_softcapping=5.0, final_logit_softcapping=30.0,
                                     bos_token_id=1, eos_token_id=2, pad_token_id=0),
    "bert": lambda: T.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                 vocab_size=V, max_position_embeddings=128, pad_token_id=0),
    "roberta": lambda: T.RobertaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                       vocab_size=V, max_position_embeddings=130, pad_token_id=1),
    "distilbert": lambda: T.DistilBertConfig(n_layers=2, dim=32, n_heads=4, hidden_dim=64, vocab_size=V,
                                             max_position_embeddings=128, pad_token_id=0),
    "t5": lambda: T.T5Config(num_layers=2, num_decoder_layers=2, d_model=32, num_heads=4, d_kv=8, d_ff=64, vocab_size=V,
                             decoder_start_token_id=0, pad_token_id=0, eos_token_id=2),
    "bart": lambda: T.BartConfig(encoder_layers=2, decoder_layers=2, d_model=32, encoder_attention_heads=4,
                                 decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=V,
                                 max_position_embeddings=128, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                 decoder_start_token_id=2, forced_eos_token_id=None),
}

DECODERS = ("gpt2", "llama", "qwen2", "mistral", "gemma2")
ENCODERS = ("bert", "roberta", "distilbert")
SEQ2SEQ = ("t5", "bart")
FAMILIES = DECODERS + ENCODERS + SEQ2SEQ


def tiny_model(family: str, seed: int = 0, attn: str | None = None) -> torch.nn.Module:
    """A tiny randomly initialized model of ``family`` with an LM head, in eval mode."""
    torch.manual_seed(seed)
    config = _CONFIGS[family]()
    if attn:
        config._attn_implementation = attn
    if family in DECODERS:
        model = T.AutoModelForCausalLM.from_config(config)
    elif family in ENCODERS:
        model = T.AutoModelForMaskedLM.from_config(config)
    else:
        model = T.AutoModelForSeq2SeqLM.from_config(config)
    return model.eval()


def token_ids(family: str, rows: int, length: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, V, (rows, length), generator=g)


def pad_token(family: str) -> int:
    return {"roberta": 1, "bart": 1}.get(family, 0)


def save_tiny_bert(where: Path, **config) -> Path:
    """A tiny random BERT with MiniLM's real tokenizer, saved like any local model."""
    tok = T.AutoTokenizer.from_pretrained(resolve("minilm-l6"))
    torch.manual_seed(0)
    cfg = T.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                       vocab_size=len(tok), **config)
    T.BertModel(cfg).save_pretrained(where)
    tok.save_pretrained(where)
    return where


def save_tiny_llama(where: Path) -> Path:
    """A tiny random Llama (GQA 4/2 heads, 2 layers) with SmolLM2's real tokenizer, saved like any local model."""
    tok = T.AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    torch.manual_seed(0)
    cfg = T.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=64, vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                        bos_token_id=tok.bos_token_id)
    T.LlamaForCausalLM(cfg).save_pretrained(where)
    tok.save_pretrained(where)
    return where


def write_e2e_mini(where: Path) -> Path:
    """A tiny E2E-like table-to-text task (CSV, train 40 rows, dev 8 inputs with two references each)."""
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


def write_sentiment(where: Path) -> Path:
    """A tiny SST-2-like TSV task whose label is given away by one word (train 64, dev 16)."""
    for split, n in (("train", 64), ("dev", 16)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            good = i % 2 == 0
            rows.append(f"the film number {i} was {'wonderful' if good else 'dreadful'}\t{int(good)}")
        (where / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return where
