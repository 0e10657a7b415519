"""The training loop (Hugging Face accelerate): one process or several (DDP), resumable.

Every optimizer step takes one global batch of ``batch_size`` examples (a deterministic,
length-grouped order per epoch). The batch is cut into ``grad_accum`` micro-batches and each of
those across processes; the loss is the sum over target tokens (or examples) divided by the
global count, so one process and several give the same gradients.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from prefixtune.io.checkpoint import atomic_write
from prefixtune.data.batching import collate, encode, length_grouped_batches
from prefixtune.data.tasks import BUILTINS, TaskSpec, load_task
from prefixtune.evaluation.loss import batch_loss
from prefixtune.train.config import TrainConfig
from prefixtune.train.memory import PeakMemory
from prefixtune.train.state import latest_valid, load_state, save_state


def task_spec(cfg: TrainConfig) -> TaskSpec:
    """The built-in task, or one described by the config's columns."""
    if cfg.task in BUILTINS and not (cfg.input_column or cfg.label_column or cfg.target_column):
        return BUILTINS[cfg.task]
    if cfg.label_column:
        template = cfg.template or "{" + (cfg.input_column or "text") + "}"
        cols = () if cfg.template else (cfg.input_column or "text",)
        return TaskSpec(cfg.task, "classification", template=template, label_column=cfg.label_column, text_columns=cols)
    if not (cfg.input_column or cfg.template) or not cfg.target_column:
        from prefixtune.data.sources import DataError

        raise DataError(f"task {cfg.task!r} is not built in: give --input-column (or --template) and "
                        "--target-column for generation, or --label-column for classification")
    template = cfg.template or "{" + cfg.input_column + "}\n"
    return TaskSpec(cfg.task, "generation", template=template, target_column=cfg.target_column)


CLASSIFICATION_METHODS = ("ptuning_v2", "prompt", "lora", "full")


def method_config(cfg: TrainConfig, kind: str, num_labels: int = 2) -> Any:
    """The method's config from ``cfg.adapter``; classification methods get ``num_labels``."""
    from prefixtune.train.baselines import BASELINE_CONFIGS
    from prefixtune.methods import CONFIGS

    options = dict(cfg.adapter)
    if kind == "classification":
        if cfg.method not in CLASSIFICATION_METHODS:
            raise ValueError(f"classification tasks train with --method {', '.join(CLASSIFICATION_METHODS)} "
                             f"(a head on the model), not {cfg.method!r}")
        options.setdefault("num_labels", num_labels)
    return {**CONFIGS, **BASELINE_CONFIGS}[cfg.method](**options)


def model_task(cfg: TrainConfig, kind: str) -> str:
    """Which transformers head class to load the base model with."""
    return "base" if kind == "classification" else "causal-lm"


def build_model(cfg: TrainConfig, base: Any, tok: Any, kind: str, num_labels: int = 2) -> Any:
    """The trainable model: a prefixtune adapter or a baseline (LoRA, full fine-tuning)."""
    import prefixtune as pt

    from prefixtune.train.baselines import BASELINE_CONFIGS, BaselineModel

    config = method_config(cfg, kind, num_labels)
    if cfg.method in BASELINE_CONFIGS:
        return BaselineModel(base, config)
    return pt.wrap(base, config, tokenizer=tok)


def _accepts_logits_to_keep(model: Any) -> bool:
    from prefixtune.hf.boundary import accepts_logits_to_keep

    inner = getattr(model, "net", None) if hasattr(model, "net") else getattr(model, "base_model", model)
    return accepts_logits_to_keep(inner)


def _any_process(flag: bool, world: int) -> bool:
    """True on every process when ``flag`` is true on any (so all processes stop at the same step)."""
    if world == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def _lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    return lambda s: min((s + 1) / max(1, warmup), max(0.0, (total - s) / max(1, total - warmup)))


def train(cfg: TrainConfig, resume: bool = True, log: Callable[[str], None] = print,
          stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) training; returns the final scores. ``stop_after`` ends the process's work
    after that many steps of this call, like a kill (tests use it)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from prefixtune.bundled.models import load_model

    acc = Accelerator(cpu=not torch.cuda.is_available())
    main = acc.is_main_process
    world, rank = acc.num_processes, acc.process_index
    out = Path(cfg.out)
    spec = task_spec(cfg)
    micro = cfg.batch_size // cfg.grad_accum
    if micro % world:
        raise ValueError(f"batch_size/grad_accum = {micro} is not divisible by {world} processes")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "config.json", json.dumps(cfg.to_dict(), indent=2).encode())
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    method_config(cfg, spec.kind)  # bad options fail before the model loads
    base, tok = load_model(cfg.model, task=model_task(cfg, spec.kind))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    train_task = load_task(spec, "train", data=cfg.data, limit=cfg.train_limit, sample_seed=cfg.train_sample_seed)
    spec = train_task.spec  # classification: the label set is known now
    pm = build_model(cfg, base, tok, spec.kind, max(2, len(spec.labels)))
    if cfg.gradient_checkpointing:
        pm.gradient_checkpointing_enable()
    encoded, report = encode(tok, train_task.examples, cfg.max_length, spec.kind)
    if main:
        log(f"{len(encoded)} training examples ({report}); {pm.count_parameters()}")
    lengths = [len(e.input_ids) for e in encoded]
    per_epoch = max(1, len(encoded) // cfg.batch_size)
    optimizer = torch.optim.AdamW(pm.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.steps, int(cfg.warmup_ratio * cfg.steps)))
    progress: dict[str, Any] = {"best": None, "best_step": None, "bad_evals": 0, "history": []}
    start = 0
    if resume:
        found = latest_valid(out / "checkpoints", log if main else (lambda m: None))
        if found is not None:
            meta = load_state(found, pm, optimizer, scheduler)
            start, progress = meta["step"], meta["progress"]
            if main:
                log(f"resuming from {found} (step {start})")
                metrics = out / "metrics.jsonl"
                if metrics.is_file():  # drop what the interrupted run logged after its checkpoint
                    kept = [line for line in metrics.read_text().splitlines()
                            if line.strip() and json.loads(line).get("step", 0) <= start]
                    atomic_write(metrics, "".join(line + "\n" for line in kept).encode())
    ddp = acc.prepare_model(pm) if world > 1 else pm
    trim = spec.kind == "generation" and _accepts_logits_to_keep(pm)
    pad = tok.pad_token_id
    eval_task = None
    metric = "bleu" if spec.kind == "generation" else "accuracy"
    metrics_file = out / "metrics.jsonl"

    def write_metrics(record: dict[str, Any]) -> None:
        if main:
            with open(metrics_file, "a") as f:
                f.write(json.dumps(record) + "\n")

    def run_eval(step: int) -> dict[str, float]:
        nonlocal eval_task
        from prefixtune.evaluation.evaluate import evaluate

        if eval_task is None:
            eval_task = load_task(spec, cfg.eval_split, data=cfg.data)
        scores, _ = evaluate(pm, tok, eval_task, cfg.max_length, cfg.eval_limit, max_new_tokens=cfg.max_new_tokens,
                             num_beams=cfg.num_beams, stop=cfg.stop)
        pm.train()
        write_metrics({"step": step, "split": cfg.eval_split, **scores})
        return scores

    pm.train()
    memory = PeakMemory(acc.device)
    memory.start()
    done_here = 0
    current = start
    stopped_early = bool(progress.get("stopped"))  # a resumed run that had already stopped trains no more
    bar = tqdm(range(start, start if stopped_early else cfg.steps),
               desc=f"training {cfg.method} on {spec.name}", unit="step", disable=not main,
               initial=start, total=cfg.steps)
    epoch_batches: dict[int, list[list[int]]] = {}
    for step in bar:
        step_start = time.perf_counter()
        epoch, within = divmod(step, per_epoch)
        if epoch not in epoch_batches:
            epoch_batches.clear()
            epoch_batches[epoch] = length_grouped_batches(lengths, cfg.batch_size, cfg.seed, epoch)
        batch_idx = epoch_batches[epoch][within]
        global_count = sum(sum(1 for t in encoded[i].labels[1:] if t != -100) if spec.kind == "generation" else 1
                           for i in batch_idx)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_total, tokens = 0.0, 0
        for m in range(cfg.grad_accum):
            part = batch_idx[m * micro:(m + 1) * micro][rank::world]
            batch = {k: v.to(acc.device) for k, v in collate([encoded[i] for i in part], pad).items()}
            with torch.autocast(acc.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                loss_sum, _, _ = batch_loss(ddp, batch, spec.kind, trim_logits=trim)
            (loss_sum / global_count * world).backward()
            loss_total += float(loss_sum.detach())
            tokens += int(batch["attention_mask"].sum())
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(pm.trainable_parameters(), cfg.max_grad_norm)
        lr_used = optimizer.param_groups[0]["lr"]  # the scheduler's step below sets the next step's rate
        optimizer.step()
        scheduler.step()
        loss_value = loss_total * world / global_count  # this process's share, scaled (exact with 1 process)
        rate = tokens * world / (time.perf_counter() - t0)
        progress["train_tokens"] = progress.get("train_tokens", 0) + tokens * world
        bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{rate:.0f}")
        write_metrics({"step": step + 1, "train_loss": loss_value, "lr": lr_used, "tokens_per_s": rate})
        # wall time of training steps (data, forward, backward, update; not evaluation or checkpoints)
        progress["train_seconds"] = progress.get("train_seconds", 0.0) + time.perf_counter() - step_start
        current = step + 1
        if cfg.max_seconds is not None and _any_process(progress["train_seconds"] >= cfg.max_seconds, world):
            stopped_early = True
            progress["stopped"] = f"time budget of {cfg.max_seconds:g} s reached at step {current}"
        if cfg.eval_every and current % cfg.eval_every == 0 and current < cfg.steps:
            if main:
                scores = run_eval(current)
                progress["history"].append({"step": current, **scores})
                if progress["best"] is None or scores[metric] > progress["best"]:
                    progress.update(best=scores[metric], best_step=current, bad_evals=0)
                    pm.save_pretrained(out / "best")
                else:
                    progress["bad_evals"] += 1
            acc.wait_for_everyone()
            if cfg.patience is not None and progress["bad_evals"] >= cfg.patience and not stopped_early:
                stopped_early = True
                progress["stopped"] = f"early stopping at step {current}: no {metric} improvement in {cfg.patience} evaluations"
        if main and (current % cfg.save_every == 0 or current == cfg.steps or stopped_early):
            save_state(out / "checkpoints", current, pm, optimizer, scheduler, progress)
            for old in sorted((out / "checkpoints").glob("step-*"))[:-2]:  # keep the last two
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        done_here += 1
        if stopped_early:
            if main:
                log(progress["stopped"])
            break
        if stop_after is not None and done_here >= stop_after:
            return {"stopped_at": current}
    bar.close()
    peak = memory.peak_mib()
    result: dict[str, Any] = {}
    if main:
        pm.save_pretrained(out / "adapter")
        scores = run_eval(current)
        progress["history"].append({"step": current, **scores})
        if progress["best"] is None or scores[metric] >= progress["best"]:
            progress.update(best=scores[metric], best_step=current)
            pm.save_pretrained(out / "best")
        from prefixtune.train.plots import plot_run

        plot_run(metrics_file, out, metric)
        result = {"scores": scores, "best": progress["best"], "best_step": progress["best_step"],
                  "train_seconds": progress.get("train_seconds", 0.0), "train_tokens": progress.get("train_tokens", 0),
                  "peak_memory_mib": peak, "steps_done": current,
                  "parameters": vars(pm.count_parameters()) | {"trainable_percent": pm.count_parameters().trainable_percent}}
        atomic_write(out / "result.json", json.dumps(result, indent=2).encode())
    acc.wait_for_everyone()
    return result
