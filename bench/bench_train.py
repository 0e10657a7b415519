#!/usr/bin/env python
"""Training throughput: prefixtune's training loop (fp32, bf16, bf16 + compiled) vs PEFT prefix
tuning under the HF Trainer (fp32 and at its best, ``bf16=True`` with length grouping).

Same model (bundled SmolLM2-135M), same data (the first ``--examples`` E2E training records,
tokenized once by prefixtune: prompt + target + EOS, loss on the target only; by default exactly
one epoch, so every variant sees the same examples and the same tokens), same batch size,
optimizer (AdamW, lr 5e-4, no weight decay, linear warm-up 6% then linear decay, grad-norm clip
1.0), same prefix (length 10, MLP reparameterization of width 512), 2 torch threads.

Variants, each in a fresh subprocess, interleaved A, B, C, A, B, C:

- ``prefixtune``: ``prefixtune.train.loop.train`` in fp32 (accelerate; length-grouped batches).
- ``prefixtune-bf16``: the same with ``bf16=True``: the frozen base stored in bf16, the prefix fp32.
- ``prefixtune-bf16-compile``: and ``compile=True`` (the first step compiles; its time is counted).
- ``peft-trainer-grouped``: ``peft.get_peft_model(PrefixTuningConfig(...))`` trained by
  ``transformers.Trainer`` with ``train_sampling_strategy="group_by_length"``, fp32.
- ``peft-trainer-grouped-bf16``: the same with ``bf16=True`` (autocast), the Trainer at its best.
- ``peft-trainer`` (only with ``--variants``): the Trainer's default random sampler.
- ``prefixtune-compile`` (only with ``--variants``): fp32 and ``compile=True``, for machines whose
  CPU has no bf16 units (AVX2 only), where every bf16 variant is emulated and 70-420x slower.

Reported per variant: real (non-padding) tokens per second over the training steps (wall clock:
data, forward, backward, update), for prefixtune also without the first step (steady state), the
model FLOPs utilisation against the machine's matmul peak that ``bench/matmul_peak.py`` measured
(the faster dtype's: bf16 on a CPU with bf16 units, fp32 on one without), the
share of padding in the batches, and the peak resident memory above the memory at the start of
training (peak RSS counter reset there). Results: the ``bench_train`` section of
``docs/results.md`` and ``docs/bench_train.json`` (``--section NAME``: section ``NAME`` and
``docs/NAME.json``, e.g. for another kind of machine, next to the default one; the matmul peak is
then read from ``docs/bench_matmul-<what follows bench_train>.json``).

Usage::

    python bench/matmul_peak.py && python bench/bench_train.py     # ~15 min on 2 idle cores
    python bench/matmul_peak.py --section matmul_peak-avx2 && python bench/bench_train.py \
        --section bench_train-avx2 --variants prefixtune prefixtune-compile peft-trainer-grouped   # no bf16 units
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
VARIANTS = ("prefixtune", "prefixtune-bf16", "prefixtune-bf16-compile", "peft-trainer-grouped",
            "peft-trainer-grouped-bf16")
ALL_VARIANTS = VARIANTS + ("prefixtune-compile", "peft-trainer")
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
                          save_every=spec["steps"], seed=spec["seed"], out=tmp, bf16="bf16" in spec["variant"],
                          compile="compile" in spec["variant"])
        result = train(cfg, resume=False)
        step_tps = [json.loads(line)["tokens_per_s"] for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()
                    if '"train_loss"' in line]
    peak = maxrss_kib()  # before anything else is loaded in this process
    from transformers import AutoTokenizer

    from prefixtune.bundled.models import resolve
    from prefixtune.data.batching import length_grouped_batches

    tok = AutoTokenizer.from_pretrained(resolve(spec["model"]))
    lengths = [len(e.input_ids) for e in _examples(tok, spec["examples"])]
    per_epoch = max(1, len(lengths) // spec["batch"])
    real = padded = 0
    per_step = []
    for step in range(spec["steps"]):
        epoch, within = divmod(step, per_epoch)
        rows = [lengths[i] for i in length_grouped_batches(lengths, spec["batch"], spec["seed"], epoch)[within]]
        real, padded = real + sum(rows), padded + max(rows) * len(rows)
        per_step.append(sum(rows))
    step_seconds = [t / tps for t, tps in zip(per_step, step_tps)]  # forward, backward, update of each step
    return {"seconds": result["train_seconds"], "tokens": result["train_tokens"], "padded_tokens": padded,
            "replayed_real_tokens": real, "rss_start_kib": start["rss_kib"], "peak_reset": start["reset"],
            "peak_rss_kib": peak, "first_step_s": step_seconds[0],
            "steady_tokens_per_s": sum(per_step[1:]) / sum(step_seconds[1:]) if len(per_step) > 1 else None}


def worker_trainer(spec: dict[str, Any], grouped: bool, bf16: bool) -> dict[str, Any]:
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
            remove_unused_columns=False, bf16=bf16,
            train_sampling_strategy="group_by_length" if grouped else "random")
        trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collate, callbacks=[Clock()])
        trainer.train()
    return {"seconds": timing["t1"] - timing["t0"], "tokens": counts["real"], "padded_tokens": counts["padded"],
            "rss_start_kib": timing["rss_kib"], "peak_reset": timing["reset"], "peak_rss_kib": maxrss_kib(),
            "final_loss": timing.get("loss")}


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(spec["threads"])
    ours = spec["variant"].startswith("prefixtune")
    if ours:
        res = worker_prefixtune(spec)
    else:
        res = worker_trainer(spec, grouped="grouped" in spec["variant"], bf16="bf16" in spec["variant"])
    res["tokens_per_s"] = res["tokens"] / res["seconds"]
    res["padding_share"] = 1 - res["tokens"] / res["padded_tokens"] if res.get("padded_tokens") else None
    if ours:  # replayed batches: padding share from the same order the loop used
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


def flops_per_token(model: str, examples: int) -> dict[str, float]:
    """Model FLOPs per real training token of prefix tuning on the frozen base: forward (2 per weight
    of the layers' matmuls) plus the backward's input gradients (2 more; a frozen weight gets no
    gradient of its own), and the LM head's 4 per weight on the target tokens only, the positions
    that carry a loss (the prefix MLP and attention scores are left out: under 2% at 96 tokens)."""
    from transformers import AutoConfig, AutoTokenizer

    from prefixtune.bundled.models import resolve

    c = AutoConfig.from_pretrained(resolve(model))
    d, head_dim = c.hidden_size, c.hidden_size // c.num_attention_heads
    kv = c.num_key_value_heads * head_dim
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * c.intermediate_size
    tok = AutoTokenizer.from_pretrained(resolve(model))
    encoded = _examples(tok, examples)
    targets = sum(sum(1 for t in e.labels[1:] if t != -100) for e in encoded)
    real = sum(len(e.input_ids) for e in encoded)
    share = targets / real
    return {"layers": 4 * c.num_hidden_layers * per_layer, "head": 4 * d * c.vocab_size * share,
            "total": 4 * c.num_hidden_layers * per_layer + 4 * d * c.vocab_size * share, "target_share": share}


def render(r: dict[str, Any]) -> str:
    s, variants = r["summary"], r["variants"]
    best_peft = max((v for v in variants if v.startswith("peft")), key=lambda v: s[v]["tokens_per_s"])
    ref = s[best_peft]["tokens_per_s"]
    fpt = r["flops_per_token"]
    peak = max(r["peak_gflops"].items(), key=lambda kv: kv[1]) if r.get("peak_gflops") else None  # (dtype, GFLOP/s)
    title = ("prefixtune (fp32, bf16, bf16 + compiled) vs PEFT prefix tuning under the HF Trainer"
             if r.get("section", "bench_train") == "bench_train" else f"{', '.join(variants)} ({r['section']})")
    L = [f"## Training throughput: {title}",
         "", f"Command: `{r['command']}` · {env_line(r['env'])} · wall time {r['wall_min']:.1f} min.", "",
         f"SmolLM2-135M (bundled), E2E train (first {r['args']['examples']:,} records, max length {MAX_LENGTH}), "
         f"batch {r['args']['batch']}, {r['args']['steps']} optimizer steps per run, prefix length 10 with an MLP of "
         f"width 512, AdamW lr 5e-4, {r['args']['reps']} fresh process(es) per variant, interleaved; medians "
         "over runs. Tokens are real (non-padding) tokens; time is the wall clock of the training steps, the "
         "first (compiling) step included; *steady* leaves the first step out. "
         + ("prefixtune bf16: the base stored in bf16, the prefix fp32; the Trainer's bf16: `bf16=True` (autocast "
            "over fp32 weights). " if any("bf16" in v for v in variants) else "Every variant in fp32. ")
         + "grouped: `train_sampling_strategy=\"group_by_length\"`.", "",
         f"MFU: model FLOPs ({fpt['total'] / 1e6:.0f} MFLOP per real token: 4 per weight of the 30 layers' matmuls, "
         f"the LM head's 4 per weight on the {100 * fpt['target_share']:.0f}% of tokens that are targets) x tokens/s "
         "over the machine's measured matmul peak, the faster dtype's "
         + (f"({peak[0]} {peak[1]:.0f} GFLOP/s, `{r.get('peak_command', 'python bench/matmul_peak.py')}`)." if peak
            else "(not measured: run `python bench/matmul_peak.py` first)."), "",
         f"| variant | real tokens/s | vs {best_peft} | steady tokens/s | first step (s) | MFU | padding | "
         "peak RSS above start (MiB) | peak RSS (MiB) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v in variants:
        x = s[v]
        steady = f"{x['steady_tokens_per_s']:.0f}" if x.get("steady_tokens_per_s") else ""
        first = f"{x['first_step_s']:.1f}" if x.get("first_step_s") else ""
        mfu = f"{100 * x['tokens_per_s'] * fpt['total'] / (peak[1] * 1e9):.1f}%" if peak else ""
        L.append(f"| {v} | {x['tokens_per_s']:.0f} | {x['tokens_per_s'] / ref:.2f}x | {steady} | {first} | {mfu} "
                 f"| {100 * x['padding_share']:.1f}% | {x['peak_above_start_mib']:.0f} | {x['peak_rss_mib']:.0f} |")
    ours = max((v for v in variants if v.startswith("prefixtune")), key=lambda v: s[v]["tokens_per_s"])
    gain = s[ours]["tokens_per_s"] / ref
    L += ["", f"Target (issue 15): >= 1.5x the tokens/s of PEFT prefix tuning under the Trainer at its best "
              f"({best_peft}): **{'met' if gain >= 1.5 else 'not met'}**, {ours} at {gain:.2f}x.",
          "", "Per run (tokens/s): " + "; ".join(
              f"{v}: " + ", ".join(f"{x['tokens_per_s']:.0f}" for x in r["runs"][v]) for v in variants)]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--examples", type=int, default=320,
                   help="training records; the default 320 = steps x batch, so every variant trains on exactly the "
                        "same examples once (one epoch) and only the batching differs")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="+", choices=ALL_VARIANTS, default=list(VARIANTS))
    p.add_argument("--out", default=str(ROOT / "docs"), help="where results.md and bench_train.json go")
    p.add_argument("--section", default="bench_train",
                   help="the results.md section and JSON file name (bench_train-avx2: a machine without bf16 units)")
    args = p.parse_args(argv)
    if not args.section.startswith("bench_train"):
        p.error(f"--section {args.section}: must start with bench_train (e.g. bench_train-avx2)")
    if args.worker:
        print(RESULT_TAG + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    t0 = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    for rep in range(args.reps):
        for v in args.variants:
            spec = dict(variant=v, model=args.model, steps=args.steps, batch=args.batch, examples=args.examples,
                        threads=args.threads, seed=args.seed)
            res = run_worker(spec)
            runs[v].append(res)
            log(f"rep {rep + 1}/{args.reps} {v}: {res['tokens_per_s']:.0f} tokens/s, {res['seconds']:.1f} s, padding "
                f"{100 * res['padding_share']:.1f}%, peak above start {res['peak_above_start_mib']:.0f} MiB")
    summary = {v: {"tokens_per_s": median([x["tokens_per_s"] for x in rs]),
                   "steady_tokens_per_s": median([x["steady_tokens_per_s"] for x in rs])
                   if all(x.get("steady_tokens_per_s") for x in rs) else None,
                   "first_step_s": median([x["first_step_s"] for x in rs]) if all("first_step_s" in x for x in rs)
                   else None,
                   "padding_share": median([x["padding_share"] for x in rs]),
                   "peak_above_start_mib": median([x["peak_above_start_mib"] for x in rs]),
                   "peak_rss_mib": median([x["peak_rss_kib"] / 1024 for x in rs])} for v, rs in runs.items()}
    command = "python bench/bench_train.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    out = Path(args.out)
    matmul = out / f"bench_matmul{args.section.removeprefix('bench_train')}.json"
    result = {"command": command.strip(), "env": environment(args.threads), "args": vars(args), "runs": runs,
              "section": args.section,
              "summary": summary, "wall_min": (time.perf_counter() - t0) / 60, "variants": list(args.variants),
              "flops_per_token": flops_per_token(args.model, args.examples),
              "peak_gflops": json.loads(matmul.read_text())["peak_gflops"] if matmul.is_file() else None,
              "peak_command": json.loads(matmul.read_text())["command"] if matmul.is_file() else None}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.section}.json").write_text(json.dumps(result, indent=2) + "\n")
    replace_section(out / "results.md", args.section, render(result), "# Results")
    print(render(result))


if __name__ == "__main__":
    main()
