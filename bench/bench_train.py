#!/usr/bin/env python
"""Training throughput: prefixtune's training loop vs PEFT prefix tuning under the HF Trainer.

Same model (bundled SmolLM2-135M), same data (the first ``--examples`` E2E training records,
tokenized once by prefixtune: prompt + target + EOS, loss on the target only; by default exactly
one epoch, so every variant sees the same examples and the same tokens), same batch size,
optimizer (AdamW, lr 5e-4, no weight decay, linear warm-up 6% then linear decay, grad-norm clip
1.0), same prefix (length 10, MLP reparameterization of width 512), fp32, 2 torch threads.

Variants, each in a fresh subprocess, interleaved A, B, C, A, B, C:

- ``prefixtune``: ``prefixtune.train.loop.train`` (accelerate; length-grouped batches).
- ``peft-trainer``: ``peft.get_peft_model(PrefixTuningConfig(...))`` trained by
  ``transformers.Trainer`` with its default random sampler (batches padded to their longest row).
- ``peft-trainer-grouped``: the same with ``train_sampling_strategy="group_by_length"``, the
  Trainer's own length grouping, so the comparison separates batching from the rest.

Reported per variant: real (non-padding) tokens per second over the timed steps (wall clock of
the training steps only: data, forward, backward, update), the share of padding in the batches,
and the peak resident memory above the memory at the start of training (peak RSS counter reset
there). Results: the ``bench_train`` section of ``docs/results.md`` and ``docs/bench_train.json``.

Usage::

    python bench/bench_train.py                 # ~11 min on 2 idle cores
    python bench/bench_train.py --steps 3 --reps 1 --examples 200   # smoke run
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, env_line, environment, log, maxrss_kib, median, replace_section, reset_peak_rss, status_kib  # noqa: E402

RESULT_TAG = "BENCH_TRAIN_RESULT "
VARIANTS = ("prefixtune", "peft-trainer", "peft-trainer-grouped")
PREFIX = dict(prefix_length=10, reparameterization="mlp", hidden_size=512)
LR, WARMUP, MAX_LENGTH = 5e-4, 0.06, 96


def _examples(tok: Any, n: int) -> list[Any]:
    from prefixtune.data.batching import encode
    from prefixtune.data.tasks import BUILTINS, load_task

    task = load_task(BUILTINS["e2e"], "train", limit=n)
    encoded, _ = encode(tok, task.examples, MAX_LENGTH, "generation")
    return encoded


def worker_prefixtune(spec: dict[str, Any]) -> dict[str, Any]:
    import logging

    from prefixtune.train.config import TrainConfig
    from prefixtune.train.loop import train

    start: dict[str, Any] = {}

    class Hook(logging.Handler):  # the loop logs (info) after loading model and data, before step 1
        def emit(self, record: logging.LogRecord) -> None:
            if not start:
                start.update(rss_kib=status_kib("VmRSS"), reset=reset_peak_rss())

    logger = logging.getLogger("prefixtune.train.loop")
    logger.setLevel(logging.INFO)
    logger.addHandler(Hook())

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(model=spec["model"], task="e2e", method="prefix", adapter=dict(PREFIX), steps=spec["steps"],
                          batch_size=spec["batch"], lr=LR, warmup_ratio=WARMUP, max_grad_norm=1.0,
                          max_length=MAX_LENGTH, train_limit=spec["examples"], eval_every=0, eval_limit=1,
                          save_every=spec["steps"], seed=spec["seed"], out=tmp)
        result = train(cfg, resume=False)
    peak = maxrss_kib()  # before anything else is loaded in this process
    from transformers import AutoTokenizer

    from prefixtune.bundled.models import resolve
    from prefixtune.data.batching import length_grouped_batches

    tok = AutoTokenizer.from_pretrained(resolve(spec["model"]))
    lengths = [len(e.input_ids) for e in _examples(tok, spec["examples"])]
    per_epoch = max(1, len(lengths) // spec["batch"])
    real = padded = 0
    for step in range(spec["steps"]):
        epoch, within = divmod(step, per_epoch)
        rows = [lengths[i] for i in length_grouped_batches(lengths, spec["batch"], spec["seed"], epoch)[within]]
        real, padded = real + sum(rows), padded + max(rows) * len(rows)
    return {"seconds": result["train_seconds"], "tokens": result["train_tokens"], "padded_tokens": padded,
            "replayed_real_tokens": real, "rss_start_kib": start["rss_kib"], "peak_reset": start["reset"],
            "peak_rss_kib": peak}


def worker_trainer(spec: dict[str, Any], grouped: bool) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import PrefixTuningConfig, TaskType, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from prefixtune.bundled.models import load_model

    torch.manual_seed(spec["seed"])
    base, tok = load_model(spec["model"])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = get_peft_model(base, PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=PREFIX["prefix_length"],
                                                    prefix_projection=True, encoder_hidden_size=PREFIX["hidden_size"]))
    encoded = _examples(tok, spec["examples"])
    ds = Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels} for e in encoded])
    counts = {"real": 0, "padded": 0, "active": False}
    pad = tok.pad_token_id

    def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
        if counts["active"]:
            counts["real"] += int(mask.sum())
            counts["padded"] += mask.numel()
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    timing: dict[str, Any] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            timing.update(rss_kib=status_kib("VmRSS"), reset=reset_peak_rss(), t0=time.perf_counter())
            counts["active"] = True

        def on_train_end(self, args, state, control, **kw):  # noqa: ANN001
            timing["t1"] = time.perf_counter()
            counts["active"] = False
            timing["loss"] = state.log_history[-1].get("train_loss") if state.log_history else None

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=spec["batch"], max_steps=spec["steps"], learning_rate=LR,
            warmup_steps=int(WARMUP * spec["steps"]), lr_scheduler_type="linear", weight_decay=0.0,
            max_grad_norm=1.0, logging_steps=10**6, save_strategy="no", eval_strategy="no", report_to="none",
            use_cpu=True, seed=spec["seed"], disable_tqdm=True, dataloader_num_workers=0,
            remove_unused_columns=False,
            train_sampling_strategy="group_by_length" if grouped else "random")
        trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collate, callbacks=[Clock()])
        trainer.train()
    return {"seconds": timing["t1"] - timing["t0"], "tokens": counts["real"], "padded_tokens": counts["padded"],
            "rss_start_kib": timing["rss_kib"], "peak_reset": timing["reset"], "peak_rss_kib": maxrss_kib(),
            "final_loss": timing.get("loss")}


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(spec["threads"])
    if spec["variant"] == "prefixtune":
        res = worker_prefixtune(spec)
    else:
        res = worker_trainer(spec, grouped=spec["variant"] == "peft-trainer-grouped")
    res["tokens_per_s"] = res["tokens"] / res["seconds"]
    res["padding_share"] = 1 - res["tokens"] / res["padded_tokens"] if res.get("padded_tokens") else None
    if spec["variant"] == "prefixtune":  # replayed batches: padding share from the same order the loop used
        res["padding_share"] = 1 - res["replayed_real_tokens"] / res["padded_tokens"]
    res["peak_above_start_mib"] = (res["peak_rss_kib"] - res["rss_start_kib"]) / 1024
    return res


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise RuntimeError(f"worker {spec['variant']} failed (exit code {proc.returncode})")
    return json.loads(lines[-1][len(RESULT_TAG):])


def render(r: dict[str, Any]) -> str:
    s = r["summary"]
    base = s["prefixtune"]["tokens_per_s"]
    L = ["## Training throughput: prefixtune vs PEFT prefix tuning under the HF Trainer", "",
         f"Command: `{r['command']}` · {env_line(r['env'])} · wall time {r['wall_min']:.1f} min.", "",
         f"SmolLM2-135M (bundled), E2E train (first {r['args']['examples']:,} records, max length {MAX_LENGTH}), "
         f"batch {r['args']['batch']}, {r['args']['steps']} optimizer steps per run, prefix length 10 with an MLP of "
         f"width 512, AdamW lr 5e-4, fp32, {r['args']['reps']} fresh process(es) per variant, interleaved; medians "
         "over runs. Tokens are real (non-padding) tokens; time is the wall clock of the training steps.", "",
         "| variant | real tokens/s | prefixtune speed-up | padding in batches | peak RSS above start of training (MiB) "
         "| peak RSS (MiB) |", "|---|---:|---:|---:|---:|---:|"]
    for v in VARIANTS:
        x = s[v]
        L.append(f"| {v} | {x['tokens_per_s']:.0f} | {base / x['tokens_per_s']:.2f}x | {100 * x['padding_share']:.1f}% "
                 f"| {x['peak_above_start_mib']:.0f} | {x['peak_rss_mib']:.0f} |")
    t = r["summary"]["peft-trainer"]["tokens_per_s"]
    L += ["", f"Target (issue 4): >= 1.3x the tokens/s of PEFT prefix tuning under the Trainer: "
              f"**{'met' if base / t >= 1.3 else 'not met'}** against its default sampler ({base / t:.2f}x); "
              f"{base / s['peft-trainer-grouped']['tokens_per_s']:.2f}x against the Trainer's own length grouping.",
          "", "Per run (tokens/s): " + "; ".join(
              f"{v}: " + ", ".join(f"{x['tokens_per_s']:.0f}" for x in r["runs"][v]) for v in VARIANTS)]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--examples", type=int, default=400,
                   help="training records; the default 400 = steps x batch, so every variant trains on exactly the "
                        "same examples once (one epoch) and only the batching differs")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "docs"), help="where results.md and bench_train.json go")
    args = p.parse_args(argv)
    if args.worker:
        print(RESULT_TAG + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    t0 = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for rep in range(args.reps):
        for v in VARIANTS:
            spec = dict(variant=v, model=args.model, steps=args.steps, batch=args.batch, examples=args.examples,
                        threads=args.threads, seed=args.seed)
            res = run_worker(spec)
            runs[v].append(res)
            log(f"rep {rep + 1}/{args.reps} {v}: {res['tokens_per_s']:.0f} tokens/s, {res['seconds']:.1f} s, padding "
                f"{100 * res['padding_share']:.1f}%, peak above start {res['peak_above_start_mib']:.0f} MiB")
    summary = {v: {"tokens_per_s": median([x["tokens_per_s"] for x in rs]),
                   "padding_share": median([x["padding_share"] for x in rs]),
                   "peak_above_start_mib": median([x["peak_above_start_mib"] for x in rs]),
                   "peak_rss_mib": median([x["peak_rss_kib"] / 1024 for x in rs])} for v, rs in runs.items()}
    command = "python bench/bench_train.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    result = {"command": command.strip(), "env": environment(args.threads), "args": vars(args), "runs": runs,
              "summary": summary, "wall_min": (time.perf_counter() - t0) / 60}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_train.json").write_text(json.dumps(result, indent=2) + "\n")
    replace_section(out / "results.md", "bench_train", render(result), "# Results")
    print(render(result))


if __name__ == "__main__":
    main()
