"""The ``train``, ``eval`` and ``generate`` subcommands (their options and config resolution live in
:mod:`prefixtune.cli`)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from prefixtune.bundled.models import load_model
from prefixtune.data.sources import serves_every_split
from prefixtune.data.spec import TaskSpec
from prefixtune.data.tasks import load_task
from prefixtune.evaluation.evaluate import classify_texts, evaluate, generate_texts
from prefixtune.io.files import CheckpointError, atomic_write
from prefixtune.train.config import TrainConfig, task_spec
from prefixtune.train.loop import train
from prefixtune.train.methods import load_trained, model_task
from prefixtune.train import precision
from prefixtune.train.rundir import LABELS

log = logging.getLogger(__name__)


def run_train(cfg: TrainConfig, resume: bool = True) -> None:
    """Train (or resume) the run of ``cfg``, print its scores, and score its test split if it has one
    (a finished run whose test scores are missing, e.g. killed while scoring, is scored now)."""
    result = train(cfg, resume=resume)
    if result.get("already_complete"):
        print(f"{cfg.out}: already trained ({result['steps_done']} steps); best {result['best']:.4g} at step "
              f"{result['best_step']} (prefixtune eval --run {cfg.out} scores it again)")
        if cfg.test_split and not (Path(cfg.out) / f"scores-{cfg.test_split}.json").is_file():
            score_run(Path(cfg.out), cfg.test_split, cfg.test_limit, "best", show=5, with_loss=False)
    elif result:
        scores = ", ".join(f"{k} {v:.4g}" for k, v in result["scores"].items())
        print(f"{cfg.task} {cfg.eval_split}: {scores}; best {result['best']:.4g} at step {result['best_step']}")
        if cfg.test_split:
            score_run(Path(cfg.out), cfg.test_split, cfg.test_limit, "best", show=5, with_loss=False)
        print(f"run directory: {cfg.out}")


def run_spec(run: Path, cfg: TrainConfig) -> TaskSpec:
    """The task of the run in ``run``; for classification with the label ids it was trained with
    (``labels.json``), so every split is scored against the same ids whatever labels it holds."""
    spec = task_spec(cfg)
    if spec.kind != "classification":
        return spec
    file = run / LABELS
    if file.is_file():
        labels = json.loads(file.read_text()).get("labels")
        if not isinstance(labels, list) or not labels:
            raise CheckpointError(f"{file}: expected {{\"labels\": [the label values in id order]}}")
        return replace(spec, labels=tuple(str(label) for label in labels))
    if spec.labels:
        return spec
    train_spec = load_task(spec, "train", data=cfg.data, limit=cfg.train_limit, sample_seed=cfg.train_sample_seed).spec
    log.warning(f"{run}: no {LABELS} (a run from before label ids were saved): using the label set of its "
                f"training data, {list(train_spec.labels)}")
    return train_spec


def device_of(choice: str) -> str:
    """``--device``: ``cpu``, ``cuda`` (a ValueError where there is none), or ``auto`` (CUDA where
    there is a GPU, as in training)."""
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here; use --device cpu (or auto)")
    return choice


class LoadedRun(NamedTuple):
    """A run's trained model, ready to score: its config and task, the model (on ``device``, in the
    precision the run trained in: ``bf16``) and the tokenizer."""

    cfg: TrainConfig
    spec: TaskSpec
    model: Any
    tok: Any
    bf16: bool
    device: str


def _load_run(run: Path, which: str, device: str = "cpu") -> LoadedRun:
    """The run in ``run`` with its ``which`` adapter (``best`` or ``adapter``) on ``device``."""
    cfg_file = run / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"{run}: not a run directory (no config.json)")
    cfg = TrainConfig.from_dict(json.loads(cfg_file.read_text()))
    spec = run_spec(run, cfg)
    bf16 = precision.recorded(run)  # the precision the run trained in
    if bf16 is None:  # a run from before precision.json: its explicit setting
        bf16 = precision.resolve(cfg.bf16, device)
    base, tok = load_model(cfg.model, task=model_task(spec.kind), **precision.load_kwargs(cfg.method, bf16))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return LoadedRun(cfg, spec, load_trained(cfg.method, base, run / which).to(device), tok, bf16, device)


def command_line_text(text: str) -> str:
    """``text`` from the command line with backslash escapes (``\\n``, ``\\t``, ``\\u00e9``) decoded
    and every other character, ASCII or not, kept as typed."""
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


def score_run(run: Path, split: str, limit: int | None, adapter: str = "best", num_beams: int | None = None,
              show: int = 3, with_loss: bool = True, no_repeat_ngram: int | None = None,
              device: str = "auto") -> dict[str, float]:
    """Score a run's adapter on ``split``; writes ``scores-<split>.json`` and ``predictions-<split>.jsonl``
    (``num_beams``, ``no_repeat_ngram``: None for the run's own; ``device``: see :func:`device_of`)."""
    cfg, spec, model, tok, bf16, device = _load_run(run, adapter, device_of(device))
    task = load_task(spec, split, data=cfg.data)
    if serves_every_split(cfg.data) and split != "train":
        log.warning(f"{split} scores are on the training data: {cfg.data} is one file, which serves every split")
    t0 = time.perf_counter()
    repeats = cfg.no_repeat_ngram if no_repeat_ngram is None else no_repeat_ngram
    scores, records = evaluate(model, tok, task, cfg.max_length, limit, max_new_tokens=cfg.max_new_tokens,
                               num_beams=num_beams or cfg.num_beams, stop=cfg.stop, with_loss=with_loss,
                               no_repeat_ngram=repeats)
    meta = {"split": split, "inputs": len(records), "adapter": adapter, "num_beams": num_beams or cfg.num_beams,
            "no_repeat_ngram": repeats, "seconds": round(time.perf_counter() - t0, 1),
            "device": device, "bf16": bf16}
    atomic_write(run / f"scores-{split}.json", json.dumps({**scores, **meta}, indent=2).encode())
    atomic_write(run / f"predictions-{split}.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
    print(f"{cfg.task} {split} ({len(records)} inputs, {adapter} adapter): "
          + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
    for r in records[:show]:
        print(f"  {r['input']!r} -> {r['prediction']!r}")
    return scores


def run_eval(args: Any) -> None:
    score_run(Path(args.run), args.split, args.limit, args.adapter, args.num_beams, args.show, not args.no_loss,
              args.no_repeat_ngram, args.device)


def run_generate(args: Any) -> None:
    cfg, spec, model, tok, _, _ = _load_run(Path(args.run), args.adapter, device_of(args.device))
    texts = [command_line_text(t) for t in args.input]
    if spec.kind == "classification":  # the predicted label of each input (a pair: the two texts split at a tab)
        pairs = [tuple(t.split("\t", 1)) if len(spec.text_columns) == 2 and "\t" in t else t for t in texts]
        for t, label in zip(texts, classify_texts(model, tok, pairs, spec.labels, cfg.max_length)):
            print(f"{t!r} -> {label}")
        return
    outs = generate_texts(model, tok, texts, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                          stop=args.stop or cfg.stop, do_sample=args.temperature > 0,
                          temperature=args.temperature, no_repeat_ngram=args.no_repeat_ngram)
    for t, o in zip(texts, outs):
        print(f"{t!r} -> {o}")
