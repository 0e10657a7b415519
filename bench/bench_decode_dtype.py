#!/usr/bin/env python
"""Decoding tokens/s of SmolLM2-135M with a folded prefix (l = 10), bf16 against fp32.

One process, interleaved rounds: the same adapter in two banks, one on the fp32 base, one on the
base stored in bf16 (``prefixtune serve --dtype bfloat16``), each decoded by the serving engine
(continuous batching) and by ``generate`` (``AdapterBank.generate``, as ``PrefixModel.generate``);
batch 1 and 16, 32-token prompts, 64 new tokens (EOS ignored), greedy. Reported: median tokens/s,
the bf16 speed-up, and how many of bf16's greedy tokens equal fp32's (bf16 rounds the logits, so
a near-tie can flip and the rest of the row follows). Results: the ``bench_decode_dtype`` section
of ``docs/benchmarks.md`` and ``docs/bench_decode_dtype.json``.

    python bench/bench_decode_dtype.py            # ~4 min
    python bench/bench_decode_dtype.py --quick
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
from bench_decode import engine_run, generate_run  # noqa: E402
from common import ROOT, env_line, environment, log, replace_section  # noqa: E402


def banks(adapter_dir: str) -> dict[str, object]:
    from prefixtune.bundled.models import load_model
    from prefixtune.runtime.bank import AdapterBank

    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model, tok = load_model("smollm2-135m", dtype=dtype)
        bank = AdapterBank(model)
        bank.add("p10", adapter_dir)
        out[name] = bank
    return out, tok


def greedy_tokens(bank, prompts, new: int) -> list[list[int]]:
    ids = torch.tensor(prompts)
    with torch.inference_mode():
        out = bank.generate("p10", input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                            min_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[:, ids.shape[1]:].tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    args = p.parse_args()
    torch.set_num_threads(2)
    import prefixtune as pt
    from prefixtune.bundled.models import load_model
    from prefixtune.serve.continuous import ContinuousEngine
    from prefixtune.serve.engine import EngineSettings

    with tempfile.TemporaryDirectory() as tmp:
        model, _ = load_model("smollm2-135m")
        torch.manual_seed(0)
        pt.wrap(model, pt.PrefixConfig(prefix_length=10, reparameterization="direct", init_std=0.5)).save_pretrained(tmp)
        del model
        by_dtype, tok = banks(tmp)
    engines = {d: ContinuousEngine(b, tok, EngineSettings(max_batch_size=16, max_batch_tokens=512))
               for d, b in by_dtype.items()}
    new = 8 if args.quick else args.new
    cases = [1, 16] if not args.quick else [1, 2]
    rounds = 1 if args.quick else args.rounds
    g = torch.Generator().manual_seed(0)
    prompts = {b: torch.randint(100, 40000, (b, 32), generator=g).tolist() for b in cases}
    times: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    for r in range(rounds):
        for batch in cases:
            for dtype in ("fp32", "bf16"):
                for path in ("engine", "generate"):
                    s = (engine_run(engines[dtype], "p10", prompts[batch], new) if path == "engine"
                         else generate_run(by_dtype[dtype], "p10", prompts[batch], new))
                    key = f"{path} b{batch} {dtype}"
                    times.setdefault(key, []).append(s)
                    log(f"round {r + 1} {key}: {s:.2f} s ({batch * new / s:.0f} tokens/s)")
    agree = {}
    for batch in cases:
        a, b = greedy_tokens(by_dtype["fp32"], prompts[batch], new), greedy_tokens(by_dtype["bf16"], prompts[batch], new)
        same = sum(x == y for ra, rb in zip(a, b) for x, y in zip(ra, rb))
        first = [next((i for i, (x, y) in enumerate(zip(ra, rb)) if x != y), new) for ra, rb in zip(a, b)]
        agree[batch] = {"same_tokens": same / (batch * new), "first_difference_median": statistics.median(first)}
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for batch in cases:
        for path in ("engine", "generate"):
            f, b = med[f"{path} b{batch} fp32"], med[f"{path} b{batch} bf16"]
            rows.append(f"| {path} | {batch} | {batch * new / f:.0f} | {batch * new / b:.0f} | **{f / b:.2f}x** |")
    cmd = "python bench/bench_decode_dtype.py" + (" --quick" if args.quick else "")
    env = environment(2)
    (args.out / "bench_decode_dtype.json").write_text(json.dumps({"command": cmd, "env": env, "seconds": times,
                                                                  "new_tokens": new, "agreement": agree}, indent=2))
    agreement = "; ".join(f"batch {b}: {100 * a['same_tokens']:.0f}% of tokens equal, the first difference at token "
                          f"{a['first_difference_median']:g} (median over rows)" for b, a in agree.items())
    section = f"""## Decoding tokens/s: bf16 against fp32 (SmolLM2-135M, folded prefix l = 10)

Command: `{cmd}` · {env_line(env)} · medians of {rounds} interleaved rounds · wall {(time.perf_counter() - t0) / 60:.1f} min{' · **QUICK smoke sizes**' if args.quick else ''}

Greedy, 32-token prompts, {new} new tokens (EOS ignored). *engine*: the serving engine (continuous
batching, the prefix in each row's KV cache); *generate*: `AdapterBank.generate` (as
`PrefixModel.generate`). bf16: the base stored in bf16 (`serve --dtype bfloat16`), the adapter cast
where it joins attention, softmax in fp32.

| path | batch | fp32 tokens/s | bf16 tokens/s | bf16 speed-up |
|---|---:|---:|---:|---:|
{chr(10).join(rows)}

Greedy agreement, bf16 vs fp32 (generate): {agreement}. (A random direct prefix with init std 0.5 on
random prompts: near-ties are common, so this is a lower bound of what a trained adapter sees; the
quality measure is the task score, in docs/results.md.)
"""
    replace_section(args.out / "benchmarks.md", "bench_decode_dtype", section, "# Benchmarks")
    print(section)


if __name__ == "__main__":
    main()
