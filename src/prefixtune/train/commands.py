"""The ``train``, ``eval`` and ``generate`` subcommands (their options and config resolution live in
:mod:`prefixtune.cli`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefixtune.bundled.models import load_model
from prefixtune.data.tasks import load_task
from prefixtune.evaluation.evaluate import evaluate, generate_texts
from prefixtune.io.files import atomic_write
from prefixtune.train.config import TrainConfig, task_spec
from prefixtune.train.loop import train
from prefixtune.train.methods import load_trained, model_task


def run_train(cfg: TrainConfig, resume: bool = True) -> None:
    """Train (or resume) the run of ``cfg``, print its scores, and score its test split if it has one."""
    result = train(cfg, resume=resume)
    if result:
        scores = ", ".join(f"{k} {v:.4g}" for k, v in result["scores"].items())
        print(f"{cfg.task} {cfg.eval_split}: {scores}; best {result['best']:.4g} at step {result['best_step']}")
        if cfg.test_split:
            score_run(Path(cfg.out), cfg.test_split, cfg.test_limit, "best", show=5, with_loss=False)
        print(f"run directory: {cfg.out}")


def _load_run(run: Path, which: str) -> tuple[TrainConfig, Any, Any]:
    cfg_file = run / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"{run}: not a run directory (no config.json)")
    cfg = TrainConfig.from_dict(json.loads(cfg_file.read_text()))
    base, tok = load_model(cfg.model, task=model_task(task_spec(cfg).kind))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return cfg, load_trained(cfg.method, base, run / which), tok


def score_run(run: Path, split: str, limit: int | None, adapter: str = "best", num_beams: int | None = None,
              show: int = 3, with_loss: bool = True) -> dict[str, float]:
    """Score a run's adapter on ``split``; writes ``scores-<split>.json`` and ``predictions-<split>.jsonl``."""
    cfg, model, tok = _load_run(run, adapter)
    task = load_task(task_spec(cfg), split, data=cfg.data)
    t0 = time.perf_counter()
    scores, records = evaluate(model, tok, task, cfg.max_length, limit, max_new_tokens=cfg.max_new_tokens,
                               num_beams=num_beams or cfg.num_beams, stop=cfg.stop, with_loss=with_loss)
    meta = {"split": split, "inputs": len(records), "adapter": adapter, "num_beams": num_beams or cfg.num_beams,
            "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write(run / f"scores-{split}.json", json.dumps({**scores, **meta}, indent=2).encode())
    atomic_write(run / f"predictions-{split}.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
    print(f"{cfg.task} {split} ({len(records)} inputs, {adapter} adapter): "
          + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
    for r in records[:show]:
        print(f"  {r['input']!r} -> {r['prediction']!r}")
    return scores


def run_eval(args: Any) -> None:
    score_run(Path(args.run), args.split, args.limit, args.adapter, args.num_beams, args.show, not args.no_loss)


def run_generate(args: Any) -> None:
    cfg, model, tok = _load_run(Path(args.run), args.adapter)
    texts = [t.encode().decode("unicode_escape") for t in args.input]
    outs = generate_texts(model, tok, texts, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                          stop=args.stop or cfg.stop, do_sample=args.temperature > 0,
                          temperature=args.temperature or 1.0)
    for t, o in zip(texts, outs):
        print(f"{t!r} -> {o}")
