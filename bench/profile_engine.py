"""Where the continuous engine's time goes on the saturated workload of ``bench_workload.py``:
turns grouped by how many rows were decoding, their time and output tokens/s (no HTTP).

    python bench/profile_engine.py --adapter runs/e2e-short/best
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_workload import trained_bank, workload  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adapter", action="append", type=Path, required=True)
    p.add_argument("--requests", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(2)
    from prefixtune.serve.continuous import ContinuousEngine
    from prefixtune.serve.engine import EngineSettings
    from prefixtune.serve.request import Request

    bank, tok, names = trained_bank(args.adapter)
    engine = ContinuousEngine(bank, tok, EngineSettings(max_batch_size=32, max_batch_tokens=512))
    reqs = [Request(w["model"], tok(w["prompt"])["input_ids"], 256 if w["long"] else 64,
                    stop=[] if w["long"] else ["\n"], ignore_eos=w["long"])
            for w in workload(args.requests, names, None, seed=7)]
    for r in reqs:
        engine.submit(r)
    groups: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0])
    start = time.perf_counter()
    while not engine.idle:
        before, admitting = len(engine.running), engine.queued > 0 or engine._prefilling is not None
        t = time.perf_counter()
        engine.turn()
        rows = len(engine.running) if not before else before
        key = ("32" if rows >= 32 else "16-31" if rows >= 16 else "8-15" if rows >= 8 else "1-7") + \
              (" (admitting)" if admitting else "")
        g = groups[key]
        g[0], g[1], g[2] = g[0] + 1, g[1] + time.perf_counter() - t, g[2] + before
    wall = time.perf_counter() - start
    tokens = sum(len(r.tokens) for r in reqs)
    print(f"{len(reqs)} requests, {tokens} output tokens in {wall:.1f} s: {tokens / wall:.1f} tokens/s")
    print("| rows decoding | turns | seconds | tokens decoded | tokens/s |\n|---|---:|---:|---:|---:|")
    for key, (n, s, t) in sorted(groups.items()):
        print(f"| {key} | {n} | {s:.1f} | {t} | {t / s:.1f} |")
    long = [r for r in reqs if r.max_new_tokens == 256]
    print(f"{len(long)} requests of 256 tokens hold {sum(len(r.tokens) for r in long)} of the {tokens} tokens")


if __name__ == "__main__":
    main()
