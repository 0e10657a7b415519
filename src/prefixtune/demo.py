"""The main job until the training issue lands: a short, real prefix-tuning run on E2E.

Wraps the bundled SmolLM2-135M, prints the parameter accounting, trains a prefix for a few dozen
steps on E2E table-to-text (loss on the target text only), shows generations of the bare model
and of the trained prefix for a few test inputs, then saves the adapter, loads it into a fresh
copy of the model and checks the generations are identical.
"""

from __future__ import annotations

import csv
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class DemoConfig:
    """Fields: model name, prefix length, MLP width, optimizer steps, batch size, learning rate,
    number of test inputs shown, output directory, data directory (None = find ../shared/data)."""

    model: str = "smollm2-135m"
    prefix_length: int = 10
    hidden_size: int = 512
    steps: int = 60
    batch_size: int = 8
    lr: float = 5e-4
    show: int = 4
    out: str = "runs/demo"
    data: str | None = None
    seed: int = 0


def find_data(explicit: str | None = None) -> Path:
    """The shared data folder: ``explicit``, ``$PREFIXTUNE_DATA``, or ``../shared/data`` from here or the repo."""
    candidates = [explicit, os.environ.get("PREFIXTUNE_DATA"), Path.cwd() / ".." / "shared" / "data",
                  Path(__file__).resolve().parents[3] / "shared" / "data"]
    for c in candidates:
        if c and (Path(c) / "e2e" / "train.csv").is_file():
            return Path(c)
    raise FileNotFoundError("E2E data not found: pass --data DIR (holding e2e/train.csv) or set PREFIXTUNE_DATA")


def read_e2e(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [(row["mr"], row["ref"]) for row in csv.DictReader(f)]


def run(cfg: DemoConfig) -> dict:
    from tqdm.auto import tqdm

    import prefixtune as pt
    from prefixtune.bundled.models import load_model

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    data = find_data(cfg.data)
    train = read_e2e(data / "e2e" / "train.csv")
    tests = list(dict.fromkeys(mr for mr, _ in read_e2e(data / "e2e" / "test.csv")))[: cfg.show]

    print(f"loading {cfg.model} ...", flush=True)
    model, tok = load_model(cfg.model)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    pm = pt.wrap(model, pt.PrefixConfig(prefix_length=cfg.prefix_length, hidden_size=cfg.hidden_size))
    shape = pm.layout.locations[0]
    print(f"model: {pm.layout.model_type}, {shape.num_layers} layers, {shape.num_kv_heads} key/value heads "
          f"of size {shape.head_dim}")
    print(f"prefix: length {cfg.prefix_length}, MLP {cfg.hidden_size}: {pm.count_parameters()}")

    def generate(model: pt.PrefixModel, texts: list[str], bare: bool = False) -> list[str]:
        enc = tok([t + "\n" for t in texts], return_tensors="pt", padding=True)
        kw = dict(max_new_tokens=40, do_sample=False, pad_token_id=tok.pad_token_id,
                  eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("Ċ")])
        if bare:
            with model.injection.active(None):
                out = model.base_model.generate(**enc, **kw)
        else:
            out = model.generate(**enc, **kw)
        return [tok.decode(o[enc.input_ids.shape[1]:], skip_special_tokens=True).strip() for o in out]

    bare = generate(pm, tests, bare=True)

    def make_batch(rows: list[tuple[str, str]]) -> dict:
        ids, labels = [], []
        for mr, ref in rows:
            p = tok(mr + "\n").input_ids
            t = tok(ref).input_ids + [tok.eos_token_id]
            ids.append(p + t)
            labels.append([-100] * len(p) + t)
        n = max(map(len, ids))
        pad = tok.pad_token_id
        return {
            "input_ids": torch.tensor([[pad] * (n - len(i)) + i for i in ids]),
            "attention_mask": torch.tensor([[0] * (n - len(i)) + [1] * len(i) for i in ids]),
            "labels": torch.tensor([[-100] * (n - len(i)) + l for i, l in zip(ids, labels)]),
        }

    opt = torch.optim.AdamW(pm.trainable_parameters(), lr=cfg.lr, weight_decay=0.0)
    warmup = max(1, cfg.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (cfg.steps - s) / max(1, cfg.steps - warmup))))
    pm.train()
    start, losses = time.time(), []
    bar = tqdm(range(cfg.steps), desc="training prefix", unit="step")
    for _ in bar:
        batch = make_batch(random.sample(train, cfg.batch_size))
        loss = pm(**batch).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(pm.trainable_parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    pm.eval()
    seconds = time.time() - start
    first, last = sum(losses[:5]) / min(5, len(losses)), sum(losses[-5:]) / min(5, len(losses))
    print(f"trained {cfg.steps} steps in {seconds:.0f} s: loss {first:.3f} -> {last:.3f} (mean of first/last 5)")

    tuned = generate(pm, tests)
    for mr, b, t in zip(tests, bare, tuned):
        print(f"\n  input : {mr}\n  bare  : {b!r}\n  prefix: {t!r}")

    pm.save_pretrained(cfg.out, base_model_name=cfg.model)
    fresh, _ = load_model(cfg.model)
    again = generate(pt.load(fresh, cfg.out, folded=True), tests)
    same = again == tuned
    print(f"\nsaved to {cfg.out}; reloaded (folded) generations identical: {same}")
    if not same:
        raise SystemExit("reloaded adapter generated different text")
    return {"loss_first": first, "loss_last": last, "seconds": seconds, "generations": tuned}
