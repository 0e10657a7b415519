"""The training recipe (Hugging Face accelerate): one process or several (DDP or FSDP), resumable.

Every optimizer step takes one global batch of ``batch_size`` examples (a deterministic,
length-grouped order per epoch). The batch is cut into ``grad_accum`` micro-batches and each of
those across processes; the loss is the sum over target tokens (or examples) divided by the
global count, so one process and several give the same gradients.

:func:`train` reads top to bottom: :func:`setup` builds the run, :func:`resume_latest` restores
the newest valid checkpoint, :func:`announce` logs the run's shape, then in :func:`run_steps` each
step is :func:`train_step`, an :func:`evaluate_step` every ``eval_every`` steps, a
:func:`stop_reason` and :func:`save_checkpoint`; :func:`finish` writes the final adapter, scores,
plots and ``result.json``. Only rank 0 evaluates, writes files and logs
(to the ``prefixtune.train.loop`` logger), but every decision that ends the loop is the same on all
processes (:mod:`prefixtune.train.agree`).
How the processes share the model (and why with FSDP all of them evaluate) is
:mod:`prefixtune.train.distributed`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from prefixtune.bundled.models import load_model
from prefixtune.data.batching import Encoded, collate, encode, length_grouped_batches
from prefixtune.core.config import ConfigError
from prefixtune.data.errors import DataError
from prefixtune.data.sources import describe, serves_every_split
from prefixtune.data.tasks import Task, TaskSpec, load_task
from prefixtune.evaluation import evaluate as evaluation  # the module: tests script its evaluate()
from prefixtune.evaluation.loss import batch_loss
from prefixtune.io.files import atomic_write
from prefixtune import progress as bars  # "progress" is the steps-state dict here
from prefixtune.extras import require
from prefixtune.hf.boundary import accepts_logits_to_keep, contiguous_head_input
from prefixtune.train import distributed, guard, logs, lr_search, methods, precision, rundir, trackers
from prefixtune.runtime.compiled import MaybeCompiled
from prefixtune.train.agree import any_process, from_main, sum_over_processes
from prefixtune.train.config import TrainConfig, task_spec
from prefixtune.train.memory import PeakMemory
from prefixtune.train.state import latest_valid, load_state, save_state

log = logging.getLogger(__name__)
RESULT = "result.json"


def _accepts_logits_to_keep(model: Any) -> bool:
    inner = getattr(model, "net", None) if hasattr(model, "net") else getattr(model, "base_model", model)
    return accepts_logits_to_keep(inner)


def linear_warmup_decay(total: int, warmup: int) -> Callable[[int], float]:
    """The learning-rate factor of step ``s`` (0-based) for ``LambdaLR``: linear warmup over
    ``warmup`` steps, then linear decay over the rest, ``min((s + 1) / warmup, (total - s) / (total - warmup))``.

    The first step already trains (``1 / warmup``, not 0 as in transformers'
    ``get_linear_schedule_with_warmup``), the peak 1 is at step ``warmup - 1`` and the last step
    still trains (``1 / (total - warmup)``). ``warmup=0`` starts at the full rate.
    """
    return lambda s: min((s + 1) / max(1, warmup), max(0.0, (total - s) / max(1, total - warmup)))


@dataclass
class TrainData:
    """The encoded training examples and the global batch (example indices) of every step."""

    encoded: list[Encoded]
    batch_size: int
    seed: int
    _epoch: tuple[int, list[list[int]]] = field(default_factory=lambda: (-1, []), repr=False)  # current epoch, its batches

    def batch_of(self, step: int) -> list[int]:
        """Step ``step``'s ``batch_size`` indices: epochs of ``len // batch_size`` steps, each in its
        own length-grouped order (deterministic in ``(seed, epoch)``)."""
        epoch, within = divmod(step, max(1, len(self.encoded) // self.batch_size))
        if self._epoch[0] != epoch:
            lengths = [len(e.input_ids) for e in self.encoded]
            self._epoch = (epoch, length_grouped_batches(lengths, self.batch_size, self.seed, epoch))
        return self._epoch[1][within]


@dataclass
class Run:
    """The live objects of one training run, built by :func:`setup`."""

    cfg: TrainConfig
    acc: Any  # accelerate.Accelerator
    spec: TaskSpec  # classification: with the label set of the training data
    tok: Any
    model: Any  # the trainable model (a prefixtune adapter or a baseline)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    data: TrainData
    trim: bool  # compute the LM head only where targets are (``batch_loss(trim_logits=True)``)
    ddp: Any = None  # what the steps call: DDP-wrapped or FSDP-sharded with several processes (set after resuming)
    forward: Any = None  # ``ddp``, compiled with --compile (:class:`~prefixtune.runtime.compiled.MaybeCompiled`)
    eval_task: Task | None = None  # loaded at the first evaluation
    memory: PeakMemory | None = None  # this process's peak memory (set when the steps start)
    lr: float = 0.0  # the peak learning rate (``cfg.lr``, or the one ``lr: auto`` found)

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def metric(self) -> str:
        """The score that picks ``best/`` and drives early stopping."""
        return "bleu" if self.spec.kind == "generation" else "accuracy"

    def write_metrics(self, row: dict[str, Any]) -> None:
        """Append one row to ``metrics.jsonl`` and send it to the trackers (rank 0 only)."""
        if self.main:
            with open(self.out / rundir.METRICS, "a") as f:
                f.write(rundir.metrics_line(row))
            trackers.log_row(self.acc, row)

    def peak_mib(self, progress: dict[str, Any]) -> float | None:
        """The run's peak memory: the most of this process's and of those it resumed from (``progress``)."""
        peaks = [p for p in (progress.get("peak_memory_mib"), self.memory.peak_mib() if self.memory else None)
                 if p is not None]
        return max(peaks) if peaks else None


def prepare_directory(cfg: TrainConfig, acc: Any, resume: bool) -> None:
    """Make ``cfg.out`` this run's directory (:mod:`prefixtune.train.rundir`): resuming refuses
    changed options before anything is written; ``resume=False`` moves an earlier run aside. Then
    partial files of killed writes are removed and ``config.json`` is written (rank 0)."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file, not a directory; the run directory must be a new or existing "
                          "directory")
    wanted = cfg.to_dict()
    if resume:  # every process reads; none has written yet
        rundir.check_same_options(out, wanted, TrainConfig().to_dict(), equal={
            "bf16": lambda saved, asked: precision.same_choice(out, saved, asked, acc.device)})
    if acc.is_main_process:
        if not resume:
            rundir.set_aside(out)
        rundir.remove_stale(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / rundir.CONFIG, json.dumps(wanted, indent=2).encode())
    acc.wait_for_everyone()


def record_labels(cfg: TrainConfig, acc: Any, spec: TaskSpec, resume: bool) -> None:
    """Classification: the run's label ids (its training data's label set, in id order) go to
    ``labels.json``, which ``eval`` and test scoring read; resuming refuses training data whose
    label set changed."""
    if spec.kind != "classification":
        return
    file = Path(cfg.out) / rundir.LABELS
    if resume and file.is_file():
        saved = json.loads(file.read_text()).get("labels")
        if saved != list(spec.labels):
            raise DataError(f"{cfg.out}: the run was trained with labels {saved}, its training data now has "
                            f"{list(spec.labels)}: resume with the same data, or start over with --no-resume")
    if acc.is_main_process:
        atomic_write(file, json.dumps({"labels": list(spec.labels)}, indent=2).encode())


def setup(cfg: TrainConfig, resume: bool = True) -> Run:
    """Accelerator (with the trackers of ``report_to``), the run directory and its ``config.json``,
    seeds, model, training data (and its label ids), AdamW and its schedule."""
    Accelerator = require("accelerate", "train", "training").Accelerator
    acc = Accelerator(cpu=not torch.cuda.is_available(), **trackers.accelerator_kwargs(cfg))
    micro = cfg.batch_size // cfg.grad_accum
    if micro % acc.num_processes:
        raise ValueError(f"batch_size/grad_accum = {micro} is not divisible by {acc.num_processes} processes")
    spec = task_spec(cfg)
    prepare_directory(cfg, acc, resume)
    # bf16 auto becomes true or false here, once per run (rank 0 decides and records it in precision.json,
    # all take its choice); config.json keeps "auto"
    cfg = dataclasses.replace(cfg, bf16=from_main(precision.run_choice(Path(cfg.out), cfg.bf16, acc.device)
                                                  if acc.is_main_process else None, acc))
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    methods.method_config(cfg.method, cfg.adapter, spec.kind)  # bad options fail before the model loads
    base, tok = load_model(cfg.model, task=methods.model_task(spec.kind), **precision.load_kwargs(cfg.method, cfg.bf16))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    contiguous_head_input(base)  # the trimmed LM head as one plain matmul (several times faster in bf16)
    train_task = load_task(spec, "train", data=cfg.data, limit=cfg.train_limit, sample_seed=cfg.train_sample_seed)
    spec = train_task.spec  # classification: the label set is known now
    record_labels(cfg, acc, spec, resume)
    config = methods.method_config(cfg.method, cfg.adapter, spec.kind, max(2, len(spec.labels)))
    model = methods.build_model(cfg.method, config, base, tok)
    precision.keep_trainables_fp32(model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if not distributed.shards(cfg, acc):  # before the optimizer state exists (resuming loads it beside the weights)
        model.to(acc.device)
    encoded, report = encode(tok, train_task.examples, cfg.max_length, spec.kind)
    if acc.is_main_process:
        log.info(f"{len(encoded)} training examples ({report})")
    data = TrainData(encoded, cfg.batch_size, cfg.seed)
    trim = spec.kind == "generation" and _accepts_logits_to_keep(model)
    lr = learning_rate(cfg, acc, model, data, tok, spec, trim, config)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=lr, weight_decay=cfg.weight_decay)
    schedule = linear_warmup_decay(cfg.steps, int(cfg.warmup_ratio * cfg.steps))
    return Run(cfg, acc, spec, tok, model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
               data, trim=trim, lr=lr)


def learning_rate(cfg: TrainConfig, acc: Any, model: Any, data: TrainData, tok: Any, spec: TaskSpec, trim: bool,
                  config: Any) -> float:
    """The run's peak rate: ``cfg.lr``, or with ``lr: auto`` the one an earlier search of this run
    directory chose (``lr_search.json``), or a new search's (:mod:`prefixtune.train.lr_search`,
    on rank 0; every process takes its choice)."""
    if cfg.lr != "auto":
        return cfg.lr
    chosen = lr_search.saved_choice(Path(cfg.out)) if acc.is_main_process else None
    if acc.is_main_process and chosen is not None:
        log.info(f"lr auto: {chosen:g}, as the search recorded in {Path(cfg.out) / lr_search.FILE} chose")
    elif acc.is_main_process:
        searcher = lr_search.Searcher(
            model, lambda step: [data.encoded[i] for i in data.batch_of(step)], spec.kind, tok.pad_token_id,
            cfg.batch_size // cfg.grad_accum, cfg.max_grad_norm, cfg.weight_decay,
            lambda: precision.autocast(cfg.method, cfg.bf16, acc.device.type), trim, acc.device)
        rates = lr_search.candidates(cfg.method, config)
        trials = lr_search.search(searcher, rates, cfg.lr_search_steps or max(lr_search.COST, cfg.steps // 10))
        lr_search.record(Path(cfg.out), trials)
        chosen = trials.chosen
        log.info(f"lr auto: {chosen:g} (of {', '.join(f'{r:g}' for r in rates)}; {trials.seconds:.0f} s, "
                 f"recorded in {Path(cfg.out) / lr_search.FILE})")
    return from_main(chosen, acc)


def fresh_progress() -> dict[str, Any]:
    """The progress record of a run that has not trained yet (saved in every checkpoint)."""
    return {"best": None, "best_step": None, "bad_evals": 0, "history": []}


def resume_latest(run: Run) -> tuple[int, dict[str, Any]]:
    """``(step, progress)`` from the newest checkpoint that verifies, or ``(0, fresh_progress())``.

    Rank 0 picks the checkpoint and every process loads that one, so all start at the same step.
    ``metrics.jsonl`` keeps what the checkpoint knows of (:func:`rundir.rows_of_checkpoint`): rows
    the interrupted run logged after it are dropped, so every step has one row; with no
    checkpoint the run starts over and so does the file.
    """
    found = from_main(latest_valid(run.out / "checkpoints") if run.main else None, run.acc)
    metrics = run.out / rundir.METRICS
    if found is None:
        if run.main:
            metrics.unlink(missing_ok=True)
        return 0, fresh_progress()
    meta = load_state(found, run.model, run.optimizer, run.scheduler)
    start, progress = meta["step"], meta["progress"]
    if run.main:
        log.info(f"resuming from {found} (step {start})")
    return start, progress


def trim_metrics(run: Run, start: int, progress: dict[str, Any]) -> None:
    """Keep the ``metrics.jsonl`` rows of the checkpoint the run resumes from (rank 0)."""
    if run.main and start > 0:
        metrics = run.out / rundir.METRICS
        evaluated = {h["step"] for h in progress.get("history", [])}
        kept = rundir.rows_of_checkpoint(rundir.read_metrics(metrics), start, evaluated)
        atomic_write(metrics, "".join(rundir.metrics_line(row) for row in kept).encode())


def _accumulate(run: Run, batch_idx: list[int], global_count: int) -> tuple[float, int]:
    """Forward and backward over the ``grad_accum`` micro-batches of this process's share of the
    global batch; the gradient is that of ``loss sum / global_count``. Returns ``(this process's
    loss sum, its non-padding tokens)``."""
    cfg, acc = run.cfg, run.acc
    world, micro = acc.num_processes, cfg.batch_size // cfg.grad_accum
    loss_total, tokens = 0.0, 0
    for m in range(cfg.grad_accum):
        part = batch_idx[m * micro:(m + 1) * micro][acc.process_index::world]
        rows = [run.data.encoded[i] for i in part]
        batch = {k: v.to(acc.device) for k, v in collate(rows, run.tok.pad_token_id).items()}
        with precision.autocast(cfg.method, cfg.bf16, acc.device.type):
            loss_sum, _, _ = batch_loss(run.forward, batch, run.spec.kind, trim_logits=run.trim)
        (loss_sum / global_count * world).backward()  # DDP averages over processes
        loss_total += float(loss_sum.detach())
        tokens += int(batch["attention_mask"].sum())
    return loss_total, tokens


def clip_gradients(run: Run) -> float:
    """Clip the trainable gradients to a total norm of ``max_grad_norm`` (0 or None: no clipping);
    returns their total norm before clipping (accelerate's ``clip_grad_norm_``, the same on every
    process: DDP has averaged the gradients)."""
    limit = run.cfg.max_grad_norm or float("inf")  # inf: the norm only, the gradients times 1.0
    return float(run.acc.clip_grad_norm_(run.model.trainable_parameters(), limit))


def train_step(run: Run, step: int, progress: dict[str, Any]) -> dict[str, Any]:
    """One optimizer step on step ``step``'s (0-based) global batch; logs and returns its metrics
    row and adds its tokens and wall time (data, forward, backward, update) to ``progress``. The
    row's ``train_loss`` and tokens are the whole global batch's (summed over processes), so they
    do not depend on the number of processes; ``grad_norm`` is the norm before clipping."""
    step_start = time.perf_counter()
    batch_idx = run.data.batch_of(step)
    encoded = run.data.encoded
    global_count = sum(sum(1 for t in encoded[i].labels[1:] if t != -100) if run.spec.kind == "generation" else 1
                       for i in batch_idx)
    t0 = time.perf_counter()
    run.optimizer.zero_grad(set_to_none=True)
    loss_total, tokens = sum_over_processes(_accumulate(run, batch_idx, global_count), run.acc)
    distributed.average_gradients(run)
    grad_norm = clip_gradients(run)
    lr_used = run.optimizer.param_groups[0]["lr"]  # the scheduler's step below sets the next step's rate
    guard.check_step(step + 1, loss_total / global_count, grad_norm, lr_used)
    run.optimizer.step()
    guard.check_parameters(run.model.trainable_parameters(), step + 1, lr_used)
    run.scheduler.step()
    row = {"step": step + 1, "train_loss": loss_total / global_count, "grad_norm": grad_norm,
           "lr": lr_used, "tokens_per_s": tokens / (time.perf_counter() - t0)}
    progress["train_tokens"] = progress.get("train_tokens", 0) + int(tokens)
    run.write_metrics(row)
    progress["train_seconds"] = progress.get("train_seconds", 0.0) + time.perf_counter() - step_start
    return row


def score(run: Run, step: int) -> dict[str, float]:
    """The model's scores on the eval split (logged to ``metrics.jsonl``); the model goes back to training mode."""
    cfg = run.cfg
    if run.eval_task is None:
        run.eval_task = load_task(run.spec, cfg.eval_split, data=cfg.data)
        if serves_every_split(cfg.data):
            log.warning(f"{cfg.eval_split} scores are on the training data: {describe(cfg.data)} is one file, "
                        "which serves every split; give a directory with train and dev files for held-out scores")
    scores, _ = evaluation.evaluate(run.model, run.tok, run.eval_task, cfg.max_length, cfg.eval_limit,
                                    max_new_tokens=cfg.max_new_tokens, num_beams=cfg.num_beams, stop=cfg.stop,
                                    no_repeat_ngram=cfg.no_repeat_ngram)
    run.model.train()
    run.write_metrics({"step": step, "split": cfg.eval_split, **scores})
    log.info(f"step {step}: {cfg.eval_split} " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
    return scores


def refresh_plots(run: Run) -> None:
    """Redraw ``loss.png`` and ``<metric>.png`` from ``metrics.jsonl`` (rank 0, after every evaluation)."""
    from prefixtune.train.plots import plot_run  # matplotlib, an optional extra

    plot_run(run.out / "metrics.jsonl", run.out, run.metric)


def keep_best(run: Run, progress: dict[str, Any], step: int, scores: dict[str, float], ties_win: bool) -> bool:
    """Add ``scores`` to the history; if they beat the best (or equal it, with ``ties_win``), they
    become the best and the model is saved to ``best/``. Returns whether they did. A non-finite
    score never becomes the best."""
    progress["history"].append({"step": step, **rundir.finite_values(scores)})
    value, best = scores[run.metric], progress["best"]
    if not math.isfinite(value):
        log.warning(f"step {step}: {run.metric} is {value}; not kept as best")
        return False
    if best is None or value > best or (ties_win and value == best):
        progress.update(best=value, best_step=step)
        run.model.save_pretrained(run.out / "best")
        return True
    return False


SHARED_PROGRESS = ("best", "best_step", "bad_evals", "history")  # what evaluation changes


def evaluate_step(run: Run, step: int, progress: dict[str, Any]) -> None:
    """Evaluate after step ``step`` (rank 0; every process with a sharded model), keep the best,
    count evaluations without improvement and redraw the plots; then every process takes rank 0's
    record, so all decide patience alike."""
    scores = score(run, step) if distributed.evaluates_here(run) else {}
    if run.main:
        improved = keep_best(run, progress, step, scores, ties_win=False)
        progress["bad_evals"] = 0 if improved else progress["bad_evals"] + 1
        refresh_plots(run)
    progress.update(from_main({k: progress[k] for k in SHARED_PROGRESS}, run.acc))


def stop_reason(run: Run, step: int, progress: dict[str, Any], evaluated: bool) -> str | None:
    """Why training ends after step ``step`` (before ``cfg.steps``), or None; the same on every
    process: the time budget counts once any process has used it up, patience reads the shared
    evaluation record (only after an evaluation)."""
    cfg = run.cfg
    if cfg.max_seconds is not None and any_process(progress["train_seconds"] >= cfg.max_seconds, run.acc):
        return f"time budget of {cfg.max_seconds:g} s reached at step {step}"
    if evaluated and cfg.patience is not None and progress["bad_evals"] >= cfg.patience:
        return f"early stopping at step {step}: no {run.metric} improvement in {cfg.patience} evaluations"
    return None


def save_checkpoint(run: Run, step: int, progress: dict[str, Any], stopping: bool) -> None:
    """Every ``save_every`` steps, at the last step and when stopping: a resumable checkpoint
    (rank 0; the two with the highest steps are kept), which records the peak memory so far.
    Every process waits for it."""
    cfg = run.cfg
    if run.main and (step % cfg.save_every == 0 or step == cfg.steps or stopping):
        progress["peak_memory_mib"] = run.peak_mib(progress)
        save_state(run.out / "checkpoints", step, run.model, run.optimizer, run.scheduler, progress)
        rundir.prune(run.out / "checkpoints", keep=2)
    run.acc.wait_for_everyone()


def finish(run: Run, step: int, progress: dict[str, Any]) -> dict[str, Any]:
    """The final adapter (``adapter/``), a final evaluation (``best/`` on a tie too), the plots and
    ``result.json`` (rank 0, which returns the result; the others return ``{}``)."""
    result: dict[str, Any] = {}
    if run.main:
        run.model.save_pretrained(run.out / "adapter")
    scores = score(run, step) if distributed.evaluates_here(run) else {}
    if run.main:
        keep_best(run, progress, step, scores, ties_win=True)
        refresh_plots(run)
        count = run.model.count_parameters()
        result = {"scores": scores, "best": progress["best"], "best_step": progress["best_step"],
                  "train_seconds": progress.get("train_seconds", 0.0), "train_tokens": progress.get("train_tokens", 0),
                  "bf16": run.cfg.bf16,
                  "peak_memory_mib": run.peak_mib(progress), "steps_done": step, "lr": run.lr,
                  "scored_on_training_data": serves_every_split(run.cfg.data),
                  "parameters": vars(count) | {"trainable_percent": count.trainable_percent}}
        atomic_write(run.out / RESULT, json.dumps(rundir.finite_values(result), indent=2).encode())
    run.acc.wait_for_everyone()
    return result


def announce(run: Run) -> None:
    """Log the start-up line (world size, devices, dtype, batch, method; rank 0) and, when the
    launcher evidently started one process where several were asked for, a warning saying why."""
    line = logs.startup_line(run.cfg, run.acc, run.model)  # every process: the devices are gathered
    if run.main:
        log.info(line)
        warning = logs.launch_warning(run.acc.num_processes)
        if warning:
            log.warning(warning)


def run_steps(run: Run, start: int, progress: dict[str, Any], stop_after: int | None) -> tuple[int, bool]:
    """The training steps from ``start`` (a step, then maybe an evaluation, a stop, a checkpoint)
    with a progress bar on rank 0; returns the steps done and whether ``stop_after`` cut them short."""
    cfg = run.cfg
    current = start
    stopped = bool(progress.get("stopped"))  # a resumed run that had already stopped trains no more
    bar = bars.bar(range(start, start if stopped else cfg.steps), hide=not run.main, what="training",
                   desc=f"training {cfg.method} on {run.spec.name}", unit="step", initial=start,
                   total=cfg.steps)
    for done_here, step in enumerate(bar, 1):
        row = train_step(run, step, progress)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
        current = step + 1
        evaluated = bool(cfg.eval_every) and current % cfg.eval_every == 0 and current < cfg.steps
        if evaluated:
            evaluate_step(run, current, progress)
        reason = stop_reason(run, current, progress, evaluated)
        if reason is not None:
            progress["stopped"] = reason
        save_checkpoint(run, current, progress, stopping=reason is not None)
        if reason is not None:
            if run.main:
                log.info(reason)
            break
        if stop_after is not None and done_here >= stop_after:
            bar.close()
            return current, True
    bar.close()
    return current, False


def completed(run: Run, start: int, progress: dict[str, Any]) -> dict[str, Any] | None:
    """The saved result of a run that had already finished (its last checkpoint is its end and
    ``result.json`` was written after it), with ``already_complete``; else None. Rerunning a
    finished run redoes nothing."""
    file = run.out / RESULT
    finished = (start >= run.cfg.steps or bool(progress.get("stopped"))) and start > 0 and file.is_file()
    result = json.loads(file.read_text()) if finished and run.main else None
    if result is not None and result.get("steps_done") != start:
        result = None
    result = from_main(result, run.acc)
    if result is None:
        return None
    if run.main:
        log.info(f"{run.out}: the run had already finished at step {start}; nothing to do "
                 "(prefixtune eval scores it again, --no-resume starts over)")
        return {**result, "already_complete": True}
    return {}


def train(cfg: TrainConfig, resume: bool = True, stop_after: int | None = None) -> dict[str, Any]:
    """Run (or resume) training; returns the final scores. ``stop_after`` ends the process's work
    after that many steps of this call, like a kill (tests use it). Progress goes to the
    ``prefixtune`` loggers (the command line sends them to stderr: :mod:`prefixtune.cli.logs`)."""
    redirect = require("tqdm.contrib.logging", "train", "training").logging_redirect_tqdm

    run = setup(cfg, resume)
    start, progress = resume_latest(run) if resume else (0, fresh_progress())
    done = completed(run, start, progress)
    if done is not None:
        return done
    trim_metrics(run, start, progress)
    run.ddp = distributed.prepare(run)
    run.forward = MaybeCompiled(run.ddp, cfg.compile)
    run.model.train()
    announce(run)
    run.memory = PeakMemory(run.acc.device)
    run.memory.start()
    trackers.start(run.acc, run.cfg)  # with bf16 decided
    try:
        # log lines above the progress bar, not through it
        with redirect(loggers=[logging.root, logging.getLogger("prefixtune")]):
            current, cut_short = run_steps(run, start, progress, stop_after)
        return {"stopped_at": current} if cut_short else finish(run, current, progress)
    finally:
        trackers.finish(run.acc)
