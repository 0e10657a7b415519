"""The long kill-and-resume loop: every training method, killed with SIGKILL many times at random
moments and inside atomic writes, must finish byte-identical to a run that was never killed.

    .venv/bin/python scripts/kill_resume.py                      # every method, 3 rounds of 6 kills each
    .venv/bin/python scripts/kill_resume.py --rounds 1 --kills 3 --methods prefix prompt   # quicker

For each method a reference run trains uninterrupted (tiny random models in a temporary folder:
a Llama with SmolLM2's tokenizer on a small E2E-like CSV task, a BERT with MiniLM's tokenizer on a
small SST-2-like TSV task for ptuning_v2). Each round then trains the same config in a fresh run
directory, killed ``--kills`` times, each kill resuming the run the previous one left: half of them
at random moments of the run's wall time, half at a random ``os.replace`` (the instant a checkpoint
file, its manifest, ``config.json`` or ``best/`` is fully written to its temporary name but not yet
in place; ``save_every`` is 1, so every step writes a checkpoint). The round passes when the finished run's ``adapter/`` and ``best/`` tensor files are
byte-identical to the reference's and its ``metrics.jsonl`` holds the same rows (the same steps,
losses and scores, once each; timings aside).

Not a test (CI runs tests/train/test_kill_resume.py, two methods and three kills): the figures for
docs/reliability.md. Prints a markdown table; ``--json`` also writes the rounds as JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "train")]

from killing import kill_after, kill_at_replace, run_to_end  # noqa: E402
from tiny import save_tiny_bert, save_tiny_llama, write_e2e_mini, write_sentiment  # noqa: E402

#: method -> (adapter options, task, base model); dropout everywhere it exists, so RNG state must resume
METHODS = {
    "prefix": ({"prefix_length": 3, "hidden_size": 16, "dropout": 0.2}, "e2e", "llama"),
    "prefix-direct": ({"prefix_length": 3, "reparameterization": "direct", "gate": True}, "e2e", "llama"),
    "prompt": ({"num_virtual_tokens": 3, "encoder": "mlp", "encoder_hidden_size": 16, "dropout": 0.1}, "e2e", "llama"),
    "ptuning_v2": ({"prefix_length": 2, "pooling": "mean", "dropout": 0.1}, "sst2", "bert"),
    "lora": ({"r": 2, "dropout": 0.1}, "e2e", "llama"),
    "full": ({}, "e2e", "llama"),
}
TIMING = ("tokens_per_s", "seconds", "time", "memory")


def _config(where: dict[str, Path], out: Path, name: str, steps: int) -> dict:
    adapter, task, model = METHODS[name]
    return dict(model=str(where[model]), task=task, data=str(where[task]), method=name.split("-")[0],
                adapter=adapter, steps=steps, batch_size=4, lr=1e-2, eval_every=max(1, steps // 3), save_every=1,
                eval_limit=4, max_new_tokens=4, max_length=32, out=str(out))


def _tensors(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for folder in ("adapter", "best")
            for p in sorted((run / folder).glob("*.safetensors"))}


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not any(t in k for t in TIMING)} for r in rows]


def _round(config_file: Path, reference: Path, seconds: float, kills: int, rng: random.Random) -> dict:
    """One run killed ``kills`` times, alternately at a random ``os.replace`` among the process's
    first eight (those fall inside the next checkpoint or two: adapter files, optimizer state,
    manifest, ``config.json``, ``best/``) and at a random moment (30-70% of an uninterrupted run's
    wall time, start-up included), each kill resuming the run the last one left; then finished.
    A kill that the run outlives by finishing ends the round early (it is not counted)."""
    landed, t0 = [], time.perf_counter()
    for i in range(kills):
        if i % 2 == 0:
            n = rng.randint(1, 8)
            hit, what = kill_at_replace(config_file, n), f"replace #{n}"
        else:
            t = rng.uniform(0.3, 0.7) * seconds
            hit, what = kill_after(config_file, t), f"t={t:.1f}s"
        if not hit:
            break
        landed.append(what)
    run_to_end(config_file)
    run = Path(json.loads(config_file.read_text())["out"])
    return {"kills": landed, "identical": _tensors(run) == _tensors(reference),
            "same_metrics": _rows(run) == _rows(reference), "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--rounds", type=int, default=3, help="killed runs per method")
    ap.add_argument("--kills", type=int, default=6, help="kills per round")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the rounds here")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    results = {}
    with tempfile.TemporaryDirectory(prefix="kill-resume-") as tmp:
        tmp = Path(tmp)
        where = {"llama": save_tiny_llama(_mk(tmp / "llama")), "bert": save_tiny_bert(_mk(tmp / "bert")),
                 "e2e": write_e2e_mini(_mk(tmp / "e2e")), "sst2": write_sentiment(_mk(tmp / "sst2"))}
        for name in args.methods:
            ref = tmp / f"{name}-whole"
            ref_file = tmp / f"{name}-whole.json"
            ref_file.write_text(json.dumps(_config(where, ref, name, args.steps)))
            seconds = run_to_end(ref_file)
            rounds = []
            for r in range(args.rounds):
                cfg_file = tmp / f"{name}-killed-{r}.json"
                cfg_file.write_text(json.dumps(_config(where, tmp / f"{name}-killed-{r}", name, args.steps)))
                rounds.append(_round(cfg_file, ref, seconds, args.kills, rng))
                print(f"{name} round {r + 1}: {rounds[-1]}", file=sys.stderr, flush=True)
            results[name] = {"reference_seconds": seconds, "rounds": rounds}
    _report(results, args)


def _mk(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _report(results: dict, args: argparse.Namespace) -> None:
    print("| method | rounds | kills landed (at a replace / at a moment) | identical adapter + best | same metrics rows "
          "| reference run |\n|---|---|---|---|---|---|")
    for name, res in results.items():
        kills = [k for r in res["rounds"] for k in r["kills"]]
        at_replace = sum(k.startswith("replace") for k in kills)
        same = sum(r["identical"] for r in res["rounds"])
        rows = sum(r["same_metrics"] for r in res["rounds"])
        print(f"| {name} | {len(res['rounds'])} | {len(kills)} ({at_replace} / {len(kills) - at_replace}) "
              f"| {same}/{len(res['rounds'])} | {rows}/{len(res['rounds'])} | {res['reference_seconds']:.1f} s |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
