#!/usr/bin/env python
"""Decoding tokens/s of the serving engine, eager against ``serve --compile`` (SmolLM2-135M, bf16).

One process: the same bf16 bank (a folded direct prefix, l = 10) behind two continuous engines,
one eager, one whose forwards run under ``torch.compile`` (``EngineSettings(compile=True)``).
Batch 1 and 16, 32-token prompts, 32 new tokens (EOS ignored), greedy. The first compiled round of
each batch size is reported apart (it compiles: prefill and decoding shapes, batch 1 and > 1 are
graphs of their own); then interleaved rounds, medians. Also reported: how many of the compiled
engine's greedy tokens equal eager's. Results: the ``bench_decode_compile`` section of ``docs/benchmarks.md`` and
``docs/bench_decode_compile.json``.

    python bench/bench_decode_compile.py            # ~10 min on 2 CPU cores, most of it compiling
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import engine_decode  # noqa: E402
from common import ROOT, env_line, environment, log, replace_section  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--new", type=int, default=32)
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    args = p.parse_args()
    torch.set_num_threads(2)
    import prefixtune as pt
    from prefixtune.bundled.models import load_model
    from prefixtune.runtime.bank import AdapterBank
    from prefixtune.serve.continuous import ContinuousEngine
    from prefixtune.serve.engine import EngineSettings

    with tempfile.TemporaryDirectory() as tmp:
        model, tok = load_model("smollm2-135m", dtype=torch.bfloat16)
        torch.manual_seed(0)
        pt.wrap(model, pt.PrefixConfig(prefix_length=10, reparameterization="direct", init_std=0.5)).save_pretrained(tmp)
        model, tok = load_model("smollm2-135m", dtype=torch.bfloat16)
        bank = AdapterBank(model)
        bank.add("p10", tmp)
    engines = {mode: ContinuousEngine(bank, tok, EngineSettings(max_batch_size=16, max_batch_tokens=512,
                                                                compile=mode == "compiled"))
               for mode in ("eager", "compiled")}
    g = torch.Generator().manual_seed(0)
    cases = [1, 16]
    prompts = {b: torch.randint(100, 40000, (b, 32), generator=g).tolist() for b in cases}
    t0 = time.perf_counter()
    first, times, same = {}, {}, {}
    with torch.inference_mode():
        for batch in cases:
            first[batch], compiled_tokens = engine_decode(engines["compiled"], "p10", prompts[batch], args.new)
            log(f"batch {batch}: first compiled round {first[batch]:.1f} s")
            _, eager_tokens = engine_decode(engines["eager"], "p10", prompts[batch], args.new)
            pairs = list(zip(compiled_tokens, eager_tokens))
            diverge = [next((i for i, (x, y) in enumerate(zip(c, e)) if x != y), args.new) for c, e in pairs]
            same[batch] = {"same_tokens": sum(x == y for c, e in pairs for x, y in zip(c, e)) / (batch * args.new),
                           "first_difference_median": statistics.median(diverge)}
        for r in range(args.rounds):
            for batch in cases:
                for mode, engine in engines.items():
                    s, _ = engine_decode(engine, "p10", prompts[batch], args.new)
                    times.setdefault(f"{mode} b{batch}", []).append(s)
                    log(f"round {r + 1} {mode} batch {batch}: {s:.2f} s ({batch * args.new / s:.0f} tokens/s)")
    failure = engines["compiled"].model.call.failure
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [f"| {b} | {first[b]:.0f} | {b * args.new / med[f'eager b{b}']:.0f} | {b * args.new / med[f'compiled b{b}']:.0f} "
            f"| **{med[f'eager b{b}'] / med[f'compiled b{b}']:.2f}x** | {100 * same[b]['same_tokens']:.0f}% "
            f"(first difference at token {same[b]['first_difference_median']:g}) |" for b in cases]
    cmd = "python bench/bench_decode_compile.py"
    env = environment(2)
    (args.out / "bench_decode_compile.json").write_text(json.dumps(
        {"command": cmd, "env": env, "seconds": times, "first_compiled_round_s": first, "new_tokens": args.new,
         "greedy_tokens_equal": same, "compile_failure": failure}, indent=2))
    section = f"""## Decoding tokens/s: `serve --compile` against eager (SmolLM2-135M, bf16, folded prefix l = 10)

Command: `{cmd}` · {env_line(env)} · medians of {args.rounds} interleaved rounds after the first compiled round · wall {(time.perf_counter() - t0) / 60:.1f} min

The serving engine (continuous batching), greedy, 32-token prompts, {args.new} new tokens (EOS ignored).
The first compiled round includes compiling (the prefill and decoding shapes, batch 1 and batch > 1
are separate graphs). In bf16 the compiled kernels (fused operations) round differently from eager
ones, so a near-tie between two tokens can flip and the rest of that row follows; in fp32 the
compiled tokens equal eager's (SmolLM2, batch 16, a one-off check; and on the tiny models of the
tests). A random prefix on random prompts has many
near-ties. {'Compiling failed and the engine fell back to eager: ' + failure if failure else 'Compiling did not fail.'}

| batch | first compiled round (s) | eager tokens/s | compiled tokens/s | compiled speed-up | greedy tokens equal to eager's (median over rows) |
|---:|---:|---:|---:|---:|---|
{chr(10).join(rows)}
"""
    replace_section(args.out / "benchmarks.md", "bench_decode_compile", section, "# Benchmarks")
    print(section)


if __name__ == "__main__":
    main()
