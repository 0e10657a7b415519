"""Decode cost of a folded prefix (l = 10) against the bare SmolLM2-135M, greedy, fp32.

Interleaved in rounds in one process: the serving engine (continuous batching: the prefix is
written into each row's KV cache) and ``generate`` (``AdapterBank.generate``, as
``PrefixModel.generate``: the prefix written once into generate's ``DynamicCache``), each with the
prefix and with the bare model, and ``generate`` with the prefix merged into attention at every
step (the path before, forced by making no cache eligible). Cases: batch 1 and 8, 32 and 256 new
tokens (EOS ignored), 32-token prompts. Reported: median seconds and prefix / bare ratios.

    python bench/bench_decode.py              # 3 rounds
    python bench/bench_decode.py --quick
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
from common import ROOT, environment, log, replace_section  # noqa: E402


def engine_decode(engine, adapter, prompts, new: int) -> tuple[float, list[list[int]]]:
    """Seconds for the serving engine to decode ``prompts`` to ``new`` tokens each, and the tokens."""
    from prefixtune.serve.request import Request

    reqs = [Request(adapter, p, new, ignore_eos=True) for p in prompts]
    t = time.perf_counter()
    for r in reqs:
        engine.submit(r)
    while not engine.idle:
        engine.turn()
    seconds = time.perf_counter() - t
    assert all(len(r.tokens) == new for r in reqs)
    return seconds, [r.tokens for r in reqs]


def engine_run(engine, adapter, prompts, new: int) -> float:
    return engine_decode(engine, adapter, prompts, new)[0]


def generate_run(bank, adapter, prompts, new: int, merged: bool = False) -> float:
    from unittest import mock

    from prefixtune.hf import cache as kv_cache

    if merged:
        with mock.patch.object(kv_cache, "fresh_dynamic", lambda cache: False):
            return generate_run(bank, adapter, prompts, new)
    ids = torch.tensor(prompts)
    t = time.perf_counter()
    with torch.inference_mode():
        out = bank.generate(adapter, input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                            min_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert out.shape[1] == ids.shape[1] + new
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--markdown", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "bench_decode.json")
    args = p.parse_args()
    torch.set_num_threads(2)
    import prefixtune as pt
    from prefixtune.bundled.models import load_model
    from prefixtune.runtime.bank import AdapterBank
    from prefixtune.serve.continuous import ContinuousEngine
    from prefixtune.serve.engine import EngineSettings

    model, tok = load_model("smollm2-135m")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        pm = pt.wrap(model, pt.PrefixConfig(prefix_length=10, reparameterization="direct", init_std=0.5))
        pm.save_pretrained(tmp)
        pm.unwrap()
        bank = AdapterBank(model)
        bank.add("p10", tmp)
    engine = ContinuousEngine(bank, tok, EngineSettings(max_batch_size=8, max_batch_tokens=512))
    cases = [(1, 32), (8, 32), (1, 256), (8, 256)] if not args.quick else [(1, 8), (2, 8)]
    rounds = 1 if args.quick else args.rounds
    g = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {}
    for r in range(rounds):
        for batch, new in cases:
            prompts = torch.randint(100, 40000, (batch, 32), generator=g).tolist()
            for path, adapter in (("engine", None), ("engine", "p10"), ("generate", None), ("generate", "p10"),
                                  ("merged", "p10")):
                if path == "engine":
                    s = engine_run(engine, adapter, prompts, new)
                else:
                    s = generate_run(bank, adapter, prompts, new, merged=path == "merged")
                key = f"{path} b{batch} n{new} {'prefix' if adapter else 'bare'}"
                times.setdefault(key, []).append(s)
                log(f"round {r + 1} {key}: {s:.2f} s")
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for batch, new in cases:
        e = med[f"engine b{batch} n{new} prefix"] / med[f"engine b{batch} n{new} bare"]
        gen = med[f"generate b{batch} n{new} prefix"] / med[f"generate b{batch} n{new} bare"]
        old = med[f"merged b{batch} n{new} prefix"] / med[f"generate b{batch} n{new} bare"]
        rows.append(f"| {batch} | {new} | {med[f'engine b{batch} n{new} bare']:.2f} | "
                    f"{med[f'engine b{batch} n{new} prefix']:.2f} | **{e:.3f}×** | "
                    f"{med[f'generate b{batch} n{new} bare']:.2f} | {med[f'generate b{batch} n{new} prefix']:.2f} | "
                    f"**{gen:.3f}×** | {med[f'merged b{batch} n{new} prefix']:.2f} | {old:.3f}× |")
    cmd = "python bench/bench_decode.py" + (" --quick" if args.quick else "")
    env = environment(2)
    args.json.write_text(json.dumps({"command": cmd, "env": env, "seconds": times}, indent=2))
    section = f"""## Decode cost of a folded prefix: in the cache vs merged at every step (SmolLM2-135M, CPU, fp32)

Command: `{cmd}` · {env.get('date', '')} · 2 cores · medians of {rounds} interleaved rounds{' · **QUICK smoke sizes**' if args.quick else ''}

Greedy, 32-token prompts, EOS ignored, prefix l = 10 (folded). *Engine*: the serving engine
(`serve/continuous.py`), the prefix written into each row's KV cache; *generate*:
`AdapterBank.generate` (the same path as `PrefixModel.generate`), the prefix written once into
generate's `DynamicCache`; *merged*: the same `generate` with the prefix merged into attention at
every step and layer (the path before; still taken where the cache cannot hold the prefix).
Target: prefix / bare ≤ 1.03×.

| batch | new tokens | engine bare (s) | engine prefix (s) | engine ratio | generate bare (s) | generate prefix (s) | generate ratio | merged prefix (s) | merged / bare |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

Raw timings: `docs/bench_decode.json`.
"""
    replace_section(args.markdown, "bench_decode", section, "# Benchmarks")
    print(section)


if __name__ == "__main__":
    main()
