#!/usr/bin/env python
"""Accuracy of prefixtune's methods under fixed, small CPU training budgets.

Experiments (each runs on its own and rewrites only its own section of the results file):

* ``sst2``: all-MiniLM-L6-v2 (``minilm-l6``, frozen) on SST-2. P-tuning v2 (prefix at every
  layer + linear head), prompt tuning + a linear head on the mean-pooled output, and a linear
  head alone on the frozen model's mean-pooled output. A small learning-rate / pooling sweep
  on a held-out slice of the training set picks each method's setting first; the chosen
  setting is then trained on a shuffled training subset and evaluated on the full dev set.
* ``rte``: the same three methods on RTE sentence pairs (no sweep: the SST-2 choices are reused
  unless given on the command line).
* ``e2e``: SmolLM2-135M (``smollm2-135m``) prefix tuning (length 10, MLP 512) on 200 E2E
  training examples, ``init="random"`` against ``init="text"`` (``"table-to-text:"``); final
  training loss, dev loss on 100 dev examples, and BLEU (sacrebleu) of greedy outputs for the
  first 50 unique test MRs against all their references.

Every run: seed 0, AdamW (weight decay 0), linear warm-up over 6% of the steps then linear decay
to 0, gradient-norm clipping at 1.0, ``torch.set_num_threads(2)``.

Results go to ``docs/methods_results.md`` (the section between the experiment's markers) and
``docs/methods_results.json`` (the experiment's key). ``--quick`` is a smoke run with tiny sizes;
it writes to a temporary directory unless ``--out-dir`` is given.

Usage (the defaults are the settings of the runs in docs/methods_results.md; ~24, ~6 and ~25 min
on 2 quiet CPU cores; run sst2 before rte, which reuses the settings the SST-2 sweep chose)::

    nice -n 10 python bench/bench_methods.py --experiment sst2
    nice -n 10 python bench/bench_methods.py --experiment rte     # = --settings-from sst2 --steps 250 --prompt-steps 150
    nice -n 10 python bench/bench_methods.py --experiment e2e --e2e-zero-shot
    python bench/bench_methods.py --experiment sst2 --quick       # smoke run, writes to a temp dir
    python bench/bench_methods.py --experiment sst2 --render      # rewrite the markdown section from the JSON

Needs ``sacrebleu`` for e2e (``pip install sacrebleu``) and the bundled models (``prefixtune[bundled]``).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import os
import random
import shlex
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import environment as common_environment  # noqa: E402
DEFAULT_DATA = Path(os.environ.get("PREFIXTUNE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
TITLE = "# Method comparison: accuracy under fixed CPU budgets"
SEED = 0
CLIP = 1.0
WARMUP = 0.06


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def seed_all(seed: int = SEED) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# ============================================================================================
# Data


def read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        return header, [row for row in reader]


def load_sst2(data: Path) -> tuple[list[tuple[tuple[str], int]], list[tuple[tuple[str], int]]]:
    out = []
    for split in ("train", "dev"):
        header, rows = read_tsv(data / "sst2" / f"{split}.tsv")
        assert header == ["sentence", "label"], header
        out.append([((s.strip(),), int(y)) for s, y in rows])
    return out[0], out[1]


RTE_LABELS = {"not_entailment": 0, "entailment": 1}


def load_rte(data: Path) -> tuple[list[tuple[tuple[str, str], int]], list[tuple[tuple[str, str], int]]]:
    out = []
    for split in ("train", "dev"):
        header, rows = read_tsv(data / "rte" / f"{split}.tsv")
        assert header == ["index", "sentence1", "sentence2", "label"], header
        out.append([((a, b), RTE_LABELS[y]) for _, a, b, y in rows])
    return out[0], out[1]


def read_e2e(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        assert header == ["mr", "ref"], header
        return [(mr, ref) for mr, ref in reader]


# ============================================================================================
# Optimization


def make_optimizer(params: list[nn.Parameter], lr: float, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(1, int(round(WARMUP * steps)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (steps - step) / max(1, steps - warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def step_opt(params: list[nn.Parameter], opt: torch.optim.Optimizer, sched: Any) -> None:
    torch.nn.utils.clip_grad_norm_(params, CLIP)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def bucketed_batches(lengths: list[int], batch: int, steps: int, rng: random.Random, chunk: int = 50) -> list[list[int]]:
    """``steps`` batches of indices: epochs of a shuffled order, each cut into chunks of
    ``chunk`` batches that are sorted by length (less padding), then the batches are shuffled."""
    n = len(lengths)
    out: list[list[int]] = []
    while len(out) < steps:
        order = list(range(n))
        rng.shuffle(order)
        epoch: list[list[int]] = []
        for c in range(0, n, batch * chunk):
            part = sorted(order[c:c + batch * chunk], key=lambda i: lengths[i])
            epoch.extend(part[i:i + batch] for i in range(0, len(part), batch))
        epoch = [b for b in epoch if len(b) == batch] or epoch
        rng.shuffle(epoch)
        out.extend(epoch)
    return out[:steps]


# ============================================================================================
# Classification (MiniLM): three methods


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask[..., None].to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


class Encoded:
    """Tokenized examples (unpadded lists) and labels; ``batch(idx)`` pads a batch."""

    def __init__(self, tok: Any, examples: list[tuple[tuple[str, ...], int]], max_length: int) -> None:
        texts = list(zip(*[x for x, _ in examples]))
        enc = tok(*texts, truncation=True, max_length=max_length)
        self.ids = enc["input_ids"]
        self.types = enc.get("token_type_ids")
        self.labels = [y for _, y in examples]
        self.pad = tok.pad_token_id
        self.lengths = [len(x) for x in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, idx: list[int]) -> dict[str, torch.Tensor]:
        n = max(self.lengths[i] for i in idx)
        ids = torch.full((len(idx), n), self.pad, dtype=torch.long)
        mask = torch.zeros(len(idx), n, dtype=torch.long)
        types = torch.zeros(len(idx), n, dtype=torch.long)
        for r, i in enumerate(idx):
            k = self.lengths[i]
            ids[r, :k] = torch.tensor(self.ids[i])
            mask[r, :k] = 1
            if self.types is not None:
                types[r, :k] = torch.tensor(self.types[i])
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
                "labels": torch.tensor([self.labels[i] for i in idx])}


def eval_batches(data: Encoded, batch: int) -> list[list[int]]:
    order = sorted(range(len(data)), key=lambda i: data.lengths[i])
    return [order[i:i + batch] for i in range(0, len(order), batch)]


class Classifier:
    """One method on the frozen MiniLM: ``params``, ``train_step(batch) -> loss``, ``logits(batch)``."""

    name: str
    params: list[nn.Parameter]
    trainable: int
    base: int

    def train(self) -> None: ...

    def eval(self) -> None: ...

    def loss(self, b: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def logits(self, b: dict[str, torch.Tensor]) -> torch.Tensor: ...


class PTuningV2(Classifier):
    def __init__(self, pt: Any, model: nn.Module, tok: Any, prefix_length: int, pooling: str) -> None:
        cfg = pt.PTuningV2Config(prefix_length=prefix_length, reparameterization="direct",
                                 task="sequence-classification", num_labels=2, pooling=pooling,
                                 dropout=0.1, head_dropout=0.1)
        self.pm = pt.wrap(model, cfg, tokenizer=tok)
        self.params = self.pm.trainable_parameters()
        c = self.pm.count_parameters()
        self.trainable, self.base, self.stored = c.trainable, c.base, c.stored

    def train(self) -> None:
        self.pm.train()  # the frozen base model's dropout is on in training (as in P-tuning v2)

    def eval(self) -> None:
        self.pm.eval()

    def loss(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.pm(**b).loss

    def logits(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        b = {k: v for k, v in b.items() if k != "labels"}
        return self.pm(**b).logits


class PromptHead(Classifier):
    def __init__(self, pt: Any, model: nn.Module, tok: Any, num_virtual_tokens: int, init: str) -> None:
        cfg = pt.PromptConfig(num_virtual_tokens=num_virtual_tokens, init=init)
        self.pm = pt.wrap(model, cfg, tokenizer=tok)
        d = model.config.hidden_size
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(d, 2))
        self.params = self.pm.trainable_parameters() + list(self.head.parameters())
        c = self.pm.count_parameters()
        head_n = sum(p.numel() for p in self.head.parameters())
        self.trainable, self.base, self.stored = c.trainable + head_n, c.base, c.stored + head_n

    def train(self) -> None:
        self.pm.train()
        self.head.train()

    def eval(self) -> None:
        self.pm.eval()
        self.head.eval()

    def logits(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.pm(input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])
        hidden = out.last_hidden_state  # one position per input token (virtual tokens removed)
        return self.head(masked_mean(hidden, b["attention_mask"]))

    def loss(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(self.logits(b), b["labels"])


_FEATURES: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(Encoded) -> (features, computed?)


class HeadOnly(Classifier):
    """Linear head on the frozen model's masked-mean output. The base model runs in eval mode
    (no dropout), so each example's features are computed once and cached (across runs too: the
    frozen model is the same in every run)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(model.config.hidden_size, 2))
        self.params = list(self.head.parameters())
        self.trainable = self.stored = sum(p.numel() for p in self.params)
        self.base = sum(p.numel() for p in model.parameters())

    @torch.no_grad()
    def features(self, data: Encoded, needed: list[int] | None = None, batch: int = 64) -> torch.Tensor:
        if id(data) not in _FEATURES:
            _FEATURES[id(data)] = (torch.zeros(len(data), self.model.config.hidden_size),
                                   torch.zeros(len(data), dtype=torch.bool))
        feats, done = _FEATURES[id(data)]
        todo = sorted(set(range(len(data)) if needed is None else needed) - set(done.nonzero().flatten().tolist()),
                      key=lambda i: data.lengths[i])
        for k in range(0, len(todo), batch):
            idx = todo[k:k + batch]
            b = data.batch(idx)
            out = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                             token_type_ids=b["token_type_ids"])
            feats[idx] = masked_mean(out.last_hidden_state, b["attention_mask"])
            done[idx] = True
        return feats

    def train(self) -> None:
        self.head.train()

    def eval(self) -> None:
        self.head.eval()


def run_classifier(method: str, setting: dict[str, Any], train: Encoded, evalset: Encoded, steps: int,
                   batch: int, tok: Any) -> dict[str, Any]:
    """Build ``method`` on a fresh frozen MiniLM, train ``steps`` batches, evaluate on ``evalset``."""
    import prefixtune as pt
    from prefixtune.bundled.models import load_model

    seed_all()
    model, _ = load_model("minilm-l6", task="base")
    if method == "ptuning_v2":
        clf: Classifier = PTuningV2(pt, model, tok, setting["prefix_length"], setting["pooling"])
    elif method == "prompt":
        clf = PromptHead(pt, model, tok, setting["num_virtual_tokens"], setting["init"])
    elif method == "head":
        clf = HeadOnly(model)
    else:
        raise ValueError(method)
    lr = setting["lr"]
    opt, sched = make_optimizer(clf.params, lr, steps)
    batches = bucketed_batches(train.lengths, batch, steps, random.Random(SEED))
    losses: list[float] = []
    t0 = time.perf_counter()
    clf.train()
    if isinstance(clf, HeadOnly):
        feats = clf.features(train, sorted({i for b in batches for i in b}))
        labels = torch.tensor(train.labels)
        t_feat = time.perf_counter() - t0
    for s, idx in enumerate(batches):
        if isinstance(clf, HeadOnly):
            loss = F.cross_entropy(clf.head(feats[idx]), labels[idx])
        else:
            loss = clf.loss(train.batch(idx))
        loss.backward()
        step_opt(clf.params, opt, sched)
        losses.append(float(loss))
        if (s + 1) % max(1, steps // 10) == 0 or s + 1 == steps:
            el = time.perf_counter() - t0
            log(f"  {method} lr={lr:g} step {s + 1}/{steps} loss(avg last {min(len(losses), 20)}) "
                f"{sum(losses[-20:]) / len(losses[-20:]):.4f}  {el:.0f}s")
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    clf.eval()
    correct = 0
    with torch.no_grad():
        if isinstance(clf, HeadOnly):
            ef = clf.features(evalset)
            pred = clf.head(ef).argmax(-1)
            correct = int((pred == torch.tensor(evalset.labels)).sum())
        else:
            for idx in eval_batches(evalset, 64):
                b = evalset.batch(idx)
                correct += int((clf.logits(b).argmax(-1) == b["labels"]).sum())
    eval_s = time.perf_counter() - t1
    acc = correct / len(evalset)
    res = {
        "method": method, "setting": dict(setting), "steps": steps, "batch": batch,
        "train_examples_seen": steps * batch, "accuracy": acc, "correct": correct, "n_eval": len(evalset),
        "trainable": clf.trainable, "stored": clf.stored, "base": clf.base,
        "trainable_percent": 100.0 * clf.trainable / clf.base,
        "train_seconds": train_s, "eval_seconds": eval_s,
        "final_train_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
        "loss_curve": [round(sum(losses[i:i + max(1, steps // 20)]) / len(losses[i:i + max(1, steps // 20)]), 4)
                       for i in range(0, steps, max(1, steps // 20))],
    }
    if isinstance(clf, HeadOnly):
        res["feature_seconds"] = t_feat
    log(f"  -> {method} {setting}: acc {acc:.4f} ({correct}/{len(evalset)}), train {train_s:.0f}s, eval {eval_s:.0f}s")
    return res


METHOD_LABEL = {"ptuning_v2": "P-tuning v2 (prefix every layer + linear head)",
                "prompt": "prompt tuning + linear head (mean-pooled)",
                "head": "linear head only (frozen model, mean-pooled)"}


def default_settings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    return {
        "ptuning_v2": {"prefix_length": args.prefix_length, "pooling": args.pooling, "lr": args.ptv2_lr},
        "prompt": {"num_virtual_tokens": args.num_virtual_tokens, "init": args.prompt_init, "lr": args.prompt_lr},
        "head": {"lr": args.head_lr},
    }


def sweep_grid(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    base = default_settings(args)
    return {
        "ptuning_v2": [dict(base["ptuning_v2"], pooling=p, lr=float(lr)) for p, lr in
                       (item.split(":") for item in args.ptv2_grid)],
        "prompt": [dict(base["prompt"], lr=lr) for lr in args.prompt_sweep_lrs],
        "head": [dict(base["head"], lr=lr) for lr in args.head_sweep_lrs],
    }


def classification(args: argparse.Namespace, task: str) -> dict[str, Any]:
    from prefixtune.bundled.models import load_model

    torch.set_num_threads(args.threads)
    _, tok = load_model("minilm-l6", task="base")
    if task == "sst2":
        train_all, dev = load_sst2(args.data)
    else:
        train_all, dev = load_rte(args.data)
    rng = random.Random(SEED)
    order = list(range(len(train_all)))
    rng.shuffle(order)
    held = [train_all[i] for i in order[:args.sweep_eval]] if args.sweep else []
    rest = order[args.sweep_eval:] if args.sweep else order
    n_train = len(rest) if args.train_size <= 0 else min(args.train_size, len(rest))
    train_ex = [train_all[i] for i in rest[:n_train]]
    if args.dev_size > 0:
        dev = dev[:args.dev_size]
    log(f"{task}: train subset {len(train_ex)} of {len(train_all)}, dev {len(dev)}, "
        f"sweep held-out {len(held)}, max_length {args.max_length}")
    train = Encoded(tok, train_ex, args.max_length)
    devset = Encoded(tok, dev, args.max_length)
    settings = default_settings(args)
    if args.settings_from:
        src = args.out_dir_resolved / "methods_results.json"
        prev = json.loads(src.read_text(encoding="utf-8"))[args.settings_from]
        for x in prev["results"]:
            settings[x["method"]] = dict(x["setting"])
        log(f"settings taken from the {args.settings_from} results in {src}: {settings}")
    sweep: dict[str, list[dict[str, Any]]] = {}
    methods = [m for m in ("ptuning_v2", "prompt", "head") if m in args.methods]
    if args.sweep:
        heldset = Encoded(tok, held, args.max_length)
        grid = sweep_grid(args)
        for m in methods:
            sweep[m] = []
            for s in grid[m]:
                log(f"sweep {task} {m} {s} ({args.sweep_steps} steps)")
                r = run_classifier(m, s, train, heldset, args.sweep_steps, args.batch, tok)
                sweep[m].append({k: r[k] for k in ("setting", "accuracy", "steps", "train_seconds", "final_train_loss")})
            best = max(sweep[m], key=lambda r: r["accuracy"])  # ties: first (the grid's order)
            settings[m] = best["setting"]
            log(f"sweep {task} {m}: chose {settings[m]}")
    results = []
    steps_of = {"ptuning_v2": args.steps, "prompt": args.prompt_steps or args.steps, "head": args.steps}
    for m in methods:
        log(f"{task} {m} {settings[m]} ({steps_of[m]} steps, batch {args.batch})")
        results.append(run_classifier(m, settings[m], train, devset, steps_of[m], args.batch, tok))
    majority = max(sum(devset.labels), len(devset.labels) - sum(devset.labels)) / len(devset.labels)
    return {"task": task, "train_size": len(train_ex), "train_total": len(train_all), "dev_size": len(dev),
            "sweep_eval_size": len(held), "sweep_steps": args.sweep_steps if args.sweep else 0,
            "sweep": sweep, "results": results, "majority_dev": majority, "max_length": args.max_length,
            "batch": args.batch, "settings_from": args.settings_from}


def classification_md(r: dict[str, Any], header: str) -> str:
    task = r["task"]
    name = {"sst2": "SST-2", "rte": "RTE"}[task]
    lines = [f"## {name}: all-MiniLM-L6-v2 (frozen), three methods", "", header, ""]
    seen = r["results"][0]["train_examples_seen"] if r["results"] else 0
    lines.append(
        f"Training data: train.tsv ({r['train_total']:,} rows) shuffled with seed 0; "
        + (f"the first {r['sweep_eval_size']:,} rows of that order are held out for the sweep, the next " if r["sweep_eval_size"] else "the first ")
        + f"{r['train_size']:,} are the training subset. Batch {r['batch']}, max length {r['max_length']} tokens"
        + (" (sentence pairs: `tokenizer(sentence1, sentence2, truncation=True)`)" if task == "rte" else "")
        + f". Evaluation: the first {r['dev_size']} rows of dev.tsv" + (" (the full dev set)" if r["dev_size"] in (872, 277) else "")
        + f"; majority class = {100 * r['majority_dev']:.1f}%. Base model: {r['results'][0]['base']:,} parameters "
        "(incl. the 11.7M word embeddings)." if r["results"] else "")
    lines += ["", "Methods (the base model is frozen in all three; only the listed parameters train):",
              "- P-tuning v2: `prefixtune.PTuningV2Config(prefix_length, reparameterization=\"direct\", pooling, dropout=0.1, "
              "head_dropout=0.1)`; trains the per-layer prefix K/V and the library's linear head. `pm.train()` also puts the "
              "frozen MiniLM in train mode (its dropout is active while training, as in P-tuning v2).",
              "- Prompt tuning + head: `prefixtune.PromptConfig(num_virtual_tokens, init)` plus our own `Dropout(0.1) -> "
              "Linear(384, 2)` on the masked mean of `pm(...).last_hidden_state` over the real tokens (the library drops the "
              "virtual positions); trains the prompt vectors and the head; MiniLM in train mode as above.",
              "- Head only: `Dropout(0.1) -> Linear(384, 2)` on the masked mean of the plain frozen model's "
              "`last_hidden_state`, model in eval mode (so its features are computed once per example and cached).",
              "- Batches: each epoch of the training subset is shuffled, cut into chunks of 50 batches that are sorted by "
              "length (less padding), and the batches are shuffled again; all three methods see the same batches.",
              "", "| method | setting | steps | examples seen | dev accuracy | trainable params | % of base | train time (s) | final train loss |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r["results"]:
        s = ", ".join(f"{k}={v}" for k, v in x["setting"].items())
        lines.append(f"| {METHOD_LABEL[x['method']]} | {s} | {x['steps']} | {x['train_examples_seen']:,} | "
                     f"**{100 * x['accuracy']:.2f}%** ({x['correct']}/{x['n_eval']}) | {x['trainable']:,} | "
                     f"{x['trainable_percent']:.3f}% | {x['train_seconds']:.0f} | {x['final_train_loss']:.3f} |")
    ptv2 = [x for x in r["results"] if x["method"] == "ptuning_v2"]
    if task == "sst2" and ptv2:
        x = ptv2[0]
        met = x["accuracy"] >= 0.88 and x["trainable_percent"] < 1.0
        lines += ["", f"Target (issue): P-tuning v2 on SST-2 dev >= 88% with < 1% of the parameters trained: "
                      f"**{'met' if met else 'not met'}** here ({100 * x['accuracy']:.2f}% with {x['trainable_percent']:.3f}%, "
                      f"after {x['steps']} steps of batch {x['batch']})."]
    for e in r.get("earlier_runs", []):
        lines += ["", f"Earlier run of this script with a smaller budget ({e['date']}, `{e['command']}`; "
                      f"{e['train_size']:,} training examples, sweep of {e['sweep_steps']} steps per setting):", "",
                  "| method | setting | steps | dev accuracy | train time (s) |", "|---|---|---:|---:|---:|"]
        for x in e["results"]:
            s = ", ".join(f"{k}={v}" for k, v in x["setting"].items())
            lines.append(f"| {METHOD_LABEL[x['method']]} | {s} | {x['steps']} | {100 * x['accuracy']:.2f}% "
                         f"({x['correct']}/{x['n_eval']}) | {x['train_seconds']:.0f} |")
    if r.get("settings_from"):
        lines += ["", f"No sweep here: each method uses the setting chosen by the {dict(sst2='SST-2', rte='RTE')[r['settings_from']]} sweep "
                      f"(see that section)."]
    if r["sweep"]:
        lines += ["", f"Sweep (chosen setting in bold; each run {r['sweep_steps']} steps with the same schedule shape, "
                      f"accuracy on {r['sweep_eval_size']} held-out **training** examples, not on dev; "
                      f"one standard error at ~83% is {100 * math.sqrt(0.83 * 0.17 / max(1, r['sweep_eval_size'])):.1f} points, "
                      "so most differences here are within noise):", "",
                  "| method | setting | held-out accuracy | train time (s) |", "|---|---|---:|---:|"]
        chosen = {x["method"]: x["setting"] for x in r["results"]}
        for m, runs in r["sweep"].items():
            for x in runs:
                s = ", ".join(f"{k}={v}" for k, v in x["setting"].items())
                if x["setting"] == chosen.get(m):
                    s = f"**{s}**"
                lines.append(f"| {m} | {s} | {100 * x['accuracy']:.2f}% | {x['train_seconds']:.0f} |")
    return "\n".join(lines)


# ============================================================================================
# E2E with SmolLM2


def e2e(args: argparse.Namespace) -> dict[str, Any]:
    import prefixtune as pt
    from prefixtune.bundled.models import load_model

    torch.set_num_threads(args.threads)
    train_rows = read_e2e(args.data / "e2e" / "train.csv")
    dev_rows = read_e2e(args.data / "e2e" / "dev.csv")
    test_rows = read_e2e(args.data / "e2e" / "test.csv")
    rng = random.Random(SEED)
    rng.shuffle(train_rows)
    train_rows = train_rows[:args.e2e_train]
    drng = random.Random(SEED)
    dev_sh = list(dev_rows)
    drng.shuffle(dev_sh)
    dev_rows = dev_sh[:args.e2e_dev]
    refs: "OrderedDict[str, list[str]]" = OrderedDict()
    for mr, ref in test_rows:
        refs.setdefault(mr, []).append(ref)
    test_mrs = list(refs)[:args.e2e_test_mrs]

    _, tok = load_model("smollm2-135m")
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    newline_ids = sorted({i for t, i in tok.get_vocab().items() if "\n" in tok.convert_tokens_to_string([t])
                          and tok.convert_tokens_to_string([t]).strip() == ""})

    def encode(mr: str, ref: str) -> tuple[list[int], list[int]]:
        p = tok(f"{mr}\n", add_special_tokens=False)["input_ids"]
        t = tok(ref, add_special_tokens=False)["input_ids"] + [eos]
        return p + t, [-100] * len(p) + t

    train_enc = [encode(mr, ref) for mr, ref in train_rows]
    dev_enc = [encode(mr, ref) for mr, ref in dev_rows]

    def collate(items: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        n = max(len(x) for x, _ in items)
        ids = torch.full((len(items), n), pad, dtype=torch.long)
        lab = torch.full((len(items), n), -100, dtype=torch.long)
        mask = torch.zeros(len(items), n, dtype=torch.long)
        for r, (x, y) in enumerate(items):
            ids[r, :len(x)], lab[r, :len(y)], mask[r, :len(x)] = torch.tensor(x), torch.tensor(y), 1
        return {"input_ids": ids, "attention_mask": mask, "labels": lab}

    def token_nll(pm: Any, items: list[tuple[list[int], list[int]]]) -> tuple[float, int]:
        """Sum of target-token NLL and count (exact per-token mean over the set)."""
        total, count = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(items), 16):
                b = collate(items[i:i + 16])
                logits = pm(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                lab = b["labels"][:, 1:]
                nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), lab.reshape(-1),
                                      ignore_index=-100, reduction="sum")
                total += float(nll)
                count += int((lab != -100).sum())
        return total, count

    def generate(pm: Any) -> list[str]:
        tok.padding_side = "left"
        outs: list[str] = []
        for i in range(0, len(test_mrs), args.gen_batch):
            prompts = [f"{mr}\n" for mr in test_mrs[i:i + args.gen_batch]]
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            seq = pm.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                              max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=pad,
                              eos_token_id=[eos] + newline_ids)
            for row in seq[:, enc["input_ids"].shape[1]:]:
                text = tok.decode(row, skip_special_tokens=True)
                outs.append(text.split("\n")[0].strip())
        tok.padding_side = "right"
        return outs

    import sacrebleu

    def bleu(hyps: list[str]) -> dict[str, Any]:
        rs = [refs[mr] for mr in test_mrs]
        k = max(len(r) for r in rs)
        streams = [[r[j] if j < len(r) else None for r in rs] for j in range(k)]
        metric = sacrebleu.BLEU()
        b = metric.corpus_score(hyps, streams)
        return {"bleu": b.score, "signature": str(metric.get_signature()), "detail": str(b)}

    runs = []
    variants = [("random", None, lr) for lr in args.e2e_lrs] + [("text", "table-to-text:", lr) for lr in args.e2e_lrs]
    if args.e2e_zero_shot:
        runs.append(e2e_zero_shot(args, load_model, generate, bleu, token_nll, dev_enc))
    for init, text, lr in variants:
        seed_all()
        model, _ = load_model("smollm2-135m")
        cfg = pt.PrefixConfig(prefix_length=10, reparameterization="mlp", hidden_size=512, init=init, init_text=text)
        t_init = time.perf_counter()
        pm = pt.wrap(model, cfg, tokenizer=tok)
        t_init = time.perf_counter() - t_init
        c = pm.count_parameters()
        params = pm.trainable_parameters()
        steps = args.e2e_steps
        opt, sched = make_optimizer(params, lr, steps)
        order_rng = random.Random(SEED)
        batches: list[list[int]] = []
        while len(batches) < steps:
            o = list(range(len(train_enc)))
            order_rng.shuffle(o)
            batches += [o[i:i + args.e2e_batch] for i in range(0, len(o), args.e2e_batch)]
        batches = batches[:steps]
        pm.eval()
        d0_sum, d0_n = token_nll(pm, dev_enc)
        log(f"e2e init={init} lr={lr:g}: dev loss at step 0 = {d0_sum / d0_n:.4f} (init {t_init:.1f}s, fit error {pm.init_errors})")
        pm.train()
        losses: list[float] = []
        t0 = time.perf_counter()
        for s, idx in enumerate(batches):
            loss = pm(**collate([train_enc[i] for i in idx])).loss
            loss.backward()
            step_opt(params, opt, sched)
            losses.append(float(loss))
            if (s + 1) % max(1, steps // 15) == 0 or s + 1 == steps:
                log(f"  e2e init={init} lr={lr:g} step {s + 1}/{steps} loss {losses[-1]:.4f} "
                    f"(avg last 10 {sum(losses[-10:]) / len(losses[-10:]):.4f}) {time.perf_counter() - t0:.0f}s")
        train_s = time.perf_counter() - t0
        pm.eval()
        t1 = time.perf_counter()
        d_sum, d_n = token_nll(pm, dev_enc)
        dev_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        hyps = generate(pm)
        gen_s = time.perf_counter() - t2
        b = bleu(hyps)
        log(f"  -> e2e init={init} lr={lr:g}: dev loss {d_sum / d_n:.4f}, BLEU {b['bleu']:.2f}; e.g. {hyps[0]!r}")
        runs.append({
            "init": init, "init_text": text, "lr": lr, "steps": steps, "batch": args.e2e_batch,
            "trainable": c.trainable, "stored": c.stored, "base": c.base, "trainable_percent": c.trainable_percent,
            "init_seconds": t_init, "init_fit_error": pm.init_errors,
            "dev_loss_step0": d0_sum / d0_n, "dev_loss": d_sum / d_n, "dev_tokens": d_n,
            "final_train_loss_last10": sum(losses[-10:]) / len(losses[-10:]),
            "first_train_loss_first10": sum(losses[:10]) / len(losses[:10]),
            "loss_curve": [round(sum(losses[i:i + 10]) / len(losses[i:i + 10]), 4) for i in range(0, steps, 10)],
            "bleu": b["bleu"], "bleu_detail": b["detail"], "bleu_signature": b["signature"],
            "train_seconds": train_s, "dev_seconds": dev_s, "generate_seconds": gen_s,
            "samples": [{"mr": test_mrs[i], "hyp": hyps[i]} for i in range(min(5, len(hyps)))],
            "hypotheses": hyps,
        })
        del pm, model, opt
    return {"task": "e2e", "train_size": len(train_enc), "dev_size": len(dev_enc), "test_mrs": len(test_mrs),
            "test_refs": sum(len(refs[m]) for m in test_mrs), "max_new_tokens": args.max_new_tokens,
            "newline_stop_ids": newline_ids, "runs": runs}


def e2e_zero_shot(args: argparse.Namespace, load_model: Callable, generate: Callable, bleu: Callable,
                  token_nll: Callable, dev_enc: list) -> dict[str, Any]:
    """The frozen model with no prefix (wrapped with nothing trained is not possible, so a thin shim)."""

    class Bare:
        def __init__(self, m: nn.Module) -> None:
            self.m = m

        def __call__(self, **kw: Any) -> Any:
            return self.m(**kw)

        def generate(self, **kw: Any) -> Any:
            return self.m.generate(**kw)

    model, _ = load_model("smollm2-135m")
    bare = Bare(model)
    d_sum, d_n = token_nll(bare, dev_enc)
    hyps = generate(bare)
    b = bleu(hyps)
    log(f"  -> e2e no prefix: dev loss {d_sum / d_n:.4f}, BLEU {b['bleu']:.2f}; e.g. {hyps[0]!r}")
    return {"init": "none (no prefix, zero-shot)", "init_text": None, "lr": None, "steps": 0, "trainable": 0,
            "dev_loss": d_sum / d_n, "bleu": b["bleu"], "bleu_detail": b["detail"], "hypotheses": hyps,
            "samples": [{"hyp": h} for h in hyps[:5]]}


def e2e_md(r: dict[str, Any], header: str) -> str:
    lines = ["## E2E: SmolLM2-135M prefix tuning, 200 training examples, random vs text init", "", header, ""]
    lines.append(
        f"Training: the first {r['train_size']} rows of train.csv after `random.Random(0).shuffle`; input `\"{{mr}}\\n\"` "
        "then the reference and EOS (`<|im_end|>`), loss on the target tokens only; prefix length 10, MLP reparameterization "
        "(hidden 512). Dev loss: mean token NLL over the targets of "
        f"{r['dev_size']} dev rows (dev.csv shuffled with seed 0). BLEU: sacrebleu corpus BLEU (default 13a tokenization) of "
        f"greedy outputs (max {r['max_new_tokens']} new tokens, stopped at EOS or a newline token, cut at the first newline) "
        f"for the first {r['test_mrs']} unique MRs of test.csv in file order, against all their references ({r['test_refs']} in total).")
    lines += ["", "| init | lr | steps | trainable params | % of base | train loss (first 10 steps) | train loss (last 10 steps) | "
                  "dev loss step 0 | dev loss | BLEU | train time (s) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r["runs"]:
        if not x["steps"]:
            lines.append(f"| {x['init']} | - | 0 | 0 | 0 | - | - | {x['dev_loss']:.3f} | {x['dev_loss']:.3f} | {x['bleu']:.2f} | - |")
            continue
        init = "text `table-to-text:`" if x["init"] == "text" else x["init"]
        lines.append(f"| {init} | {x['lr']:g} | {x['steps']} | {x['trainable']:,} | {x['trainable_percent']:.2f}% | "
                     f"{x['first_train_loss_first10']:.3f} | {x['final_train_loss_last10']:.3f} | {x['dev_loss_step0']:.3f} | "
                     f"**{x['dev_loss']:.3f}** | **{x['bleu']:.2f}** | {x['train_seconds']:.0f} |")
    fit = [f"{x['init']} lr {x['lr']:g}: {x['init_fit_error']}, {x['init_seconds']:.1f} s"
           for x in r["runs"] if x.get("init") == "text"]
    if fit:
        lines += ["", "Text init: relative error of the MLP fitted to the model's own K/V for the init text (and time of wrap()): "
                  + "; ".join(fit) + "."]
    sig = next((x.get("bleu_signature") for x in r["runs"] if x.get("bleu_signature")), None)
    if sig:
        lines += ["", f"sacrebleu signature: `{sig}`."]
    lines += ["", "First outputs (greedy):", ""]
    for x in r["runs"]:
        init = x["init"] if x["steps"] == 0 else f"{x['init']} lr {x['lr']:g}"
        for s in x["samples"][:2]:
            lines.append(f"- {init}: {json.dumps(s['hyp'], ensure_ascii=False)}")
    return "\n".join(lines)


# ============================================================================================
# Output


def update_doc(out_dir: Path, key: str, section: str, result: dict[str, Any]) -> None:
    md, js = out_dir / "methods_results.md", out_dir / "methods_results.json"
    begin = f"<!-- BEGIN {key} (generated by bench/bench_methods.py --experiment {key}; do not edit by hand) -->"
    end = f"<!-- END {key} -->"
    text = md.read_text(encoding="utf-8") if md.exists() else ""
    if not text.startswith(TITLE):
        text = (TITLE + "\n\nEach section below is rewritten by `bench/bench_methods.py --experiment NAME` "
                "(see the script's docstring). Sections may come from different runs and dates.\n\n" + text)
    block = f"{begin}\n{section}\n{end}"
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        _, post = rest.split(end, 1)
        text = pre + block + post
    else:
        order = ["sst2", "rte", "e2e"]
        # insert before the first later section present, else append
        pos = None
        for later in order[order.index(key) + 1:]:
            tag = f"<!-- BEGIN {later} "
            if tag in text:
                pos = text.index(tag)
                break
        text = (text[:pos] + block + "\n\n" + text[pos:]) if pos is not None else (text.rstrip("\n") + "\n\n" + block + "\n")
    md.write_text(text, encoding="utf-8")
    data = json.loads(js.read_text(encoding="utf-8")) if js.exists() else {}
    data[key] = result
    js.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    log(f"wrote {md} and {js}")


def environment() -> dict[str, Any]:
    env = common_environment(torch.get_num_threads())
    commit = (env["git_commit"] or "unknown") + (" (src/ modified)" if env["src_dirty"] else "")
    return {"torch": env["torch"], "transformers": env["transformers"], "python": env["python"],
            "nproc": env["nproc"], "threads": env["torch_threads"], "cpu": env["cpu"], "git": commit}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", required=True, choices=["sst2", "rte", "e2e"])
    p.add_argument("--quick", action="store_true", help="smoke run with tiny sizes (writes to a temp dir)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"data folder (default {DEFAULT_DATA}; or $PREFIXTUNE_DATA)")
    p.add_argument("--out-dir", type=Path, default=None, help="where methods_results.{md,json} go (default docs/)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--render", action="store_true",
                   help="only rewrite the experiment's markdown section from methods_results.json (no training)")
    g = p.add_argument_group("classification (sst2, rte)")
    g.add_argument("--methods", nargs="+", default=["ptuning_v2", "prompt", "head"])
    g.add_argument("--train-size", type=int, default=None, help="training subset size (0 = all; default: 20000 sst2, all rte)")
    g.add_argument("--dev-size", type=int, default=0, help="first N dev rows (0 = all)")
    g.add_argument("--max-length", type=int, default=None, help="default 64 for sst2, 128 for rte")
    g.add_argument("--batch", type=int, default=32)
    g.add_argument("--steps", type=int, default=None, help="training steps (P-tuning v2 and head; default 2000 sst2, 250 rte)")
    g.add_argument("--prompt-steps", type=int, default=None, help="training steps for prompt tuning (default 500 sst2, 150 rte)")
    g.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=None, help="small sweep first (default: on for sst2)")
    g.add_argument("--sweep-steps", type=int, default=None)
    g.add_argument("--ptv2-grid", nargs="+", default=["mean:5e-3", "mean:1e-2", "mean:2e-2", "cls:1e-2"],
                   help="P-tuning v2 sweep settings as POOLING:LR")
    g.add_argument("--head-sweep-lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    g.add_argument("--prompt-sweep-lrs", type=float, nargs="+", default=[1e-2, 3e-2, 1e-1])
    g.add_argument("--sweep-eval", type=int, default=None, help="held-out training examples for the sweep")
    g.add_argument("--settings-from", default=None, choices=["sst2", "rte"],
                   help="use the settings chosen in that experiment's results (methods_results.json)")
    g.add_argument("--prefix-length", type=int, default=16)
    g.add_argument("--pooling", default="mean", choices=["mean", "cls"])
    g.add_argument("--ptv2-lr", type=float, default=1e-2)
    g.add_argument("--num-virtual-tokens", type=int, default=20)
    g.add_argument("--prompt-init", default="vocab", choices=["random", "vocab"])
    g.add_argument("--prompt-lr", type=float, default=1e-1)
    g.add_argument("--head-lr", type=float, default=3e-3)
    g = p.add_argument_group("e2e")
    g.add_argument("--e2e-train", type=int, default=200)
    g.add_argument("--e2e-dev", type=int, default=100)
    g.add_argument("--e2e-test-mrs", type=int, default=50)
    g.add_argument("--e2e-steps", type=int, default=150)
    g.add_argument("--e2e-batch", type=int, default=8)
    g.add_argument("--e2e-lrs", type=float, nargs="+", default=[5e-4])
    g.add_argument("--e2e-zero-shot", action="store_true", help="also evaluate the bare model (no prefix)")
    g.add_argument("--max-new-tokens", type=int, default=60)
    g.add_argument("--gen-batch", type=int, default=25)
    args = p.parse_args(argv)

    task = args.experiment
    if args.render:
        out_dir = args.out_dir or ROOT / "docs"
        result = json.loads((out_dir / "methods_results.json").read_text(encoding="utf-8"))[task]
        update_doc(out_dir, task, render(result), result)
        return
    if args.sweep is None:
        args.sweep = task == "sst2"
    if args.max_length is None:
        args.max_length = 64 if task == "sst2" else 128
    if args.train_size is None:
        args.train_size = 20000 if task == "sst2" else 0
    if args.quick:
        args.train_size, args.dev_size = min(args.train_size or 256, 256), args.dev_size or 64
        args.steps = args.steps or 6
        args.prompt_steps = args.prompt_steps or args.steps
        args.sweep_steps = args.sweep_steps or 3
        args.sweep_eval = args.sweep_eval or 32
        args.e2e_train, args.e2e_dev, args.e2e_test_mrs = 16, 8, 4
        args.e2e_steps, args.max_new_tokens, args.gen_batch = 3, 12, 4
    if task == "rte" and args.settings_from is None and not args.sweep and not args.quick:
        saved = (args.out_dir or ROOT / "docs") / "methods_results.json"  # reuse the SST-2 choices if there are any
        if saved.exists() and "sst2" in json.loads(saved.read_text(encoding="utf-8")):
            args.settings_from = "sst2"
    args.steps = args.steps or (2000 if task == "sst2" else 250)
    args.prompt_steps = args.prompt_steps or (500 if task == "sst2" else 150)
    args.sweep_steps = args.sweep_steps or 100
    args.sweep_eval = args.sweep_eval or 500
    if not args.data.is_dir():
        sys.exit(f"data folder {args.data} not found: pass --data or set PREFIXTUNE_DATA")
    out_dir = args.out_dir or (Path(tempfile.mkdtemp(prefix="bench_methods_quick_")) if args.quick else ROOT / "docs")
    out_dir.mkdir(parents=True, exist_ok=True)
    args.out_dir_resolved = out_dir

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "src"))
    started = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    t0 = time.perf_counter()
    cmd = "python bench/bench_methods.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    if task == "e2e":
        result = e2e(args)
    else:
        result = classification(args, task)
    wall = time.perf_counter() - t0
    env = environment()
    result.update({"command": cmd, "date": started.isoformat(), "wall_seconds": wall, "quick": args.quick,
                   "environment": env, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}})
    section = render(result)
    update_doc(out_dir, task, section, result)
    print(section)


def render(result: dict[str, Any]) -> str:
    """The markdown section of one experiment's result (as stored in the JSON)."""
    env = result["environment"]
    header = (f"Command: `{result['command']}` (run under `nice -n 10`) · {result['date']} · "
              f"wall time {result['wall_seconds'] / 60:.1f} min · prefixtune at git {env.get('git', 'unknown')} · "
              f"torch {env['torch']} · transformers {env['transformers']} · `nproc` {env['nproc']} · "
              f"`torch.set_num_threads({result['args']['threads']})` · {env['cpu']} · seed {SEED} · AdamW (weight decay 0), "
              f"linear warm-up {int(WARMUP * 100)}% then linear decay, grad-norm clip {CLIP}"
              + (" · **QUICK smoke sizes, not real numbers**" if result["quick"] else "")
              + ". The machine was shared with other jobs, so times are only indicative.")
    body = e2e_md(result, header) if result["task"] == "e2e" else classification_md(result, header)
    notes = result.get("notes") or []  # added by hand to the JSON, e.g. about interruptions
    return body + ("\n\nNotes:\n" + "\n".join(f"- {n}" for n in notes) if notes else "")

if __name__ == "__main__":
    main()
