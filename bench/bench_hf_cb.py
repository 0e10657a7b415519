"""transformers' own continuous batching (``generate_batch``, paged cache) against prefixtune's
engine on the bare SmolLM2-135M: the measurement behind choosing our own engine (docs/design.md).

Both get the same prompts (E2E test inputs) at once, greedy, 64 new tokens each with EOS never
reached (transformers: no EOS id; ours: ``ignore_eos``), fp32, 2 threads, alternating rounds in one
process. transformers' engine cannot carry per-row prefixes at all, so it runs the bare model only;
ours runs the bare model too (and, for reference, every row with a folded prefix of 10).

    python bench/bench_hf_cb.py            # 32 prompts, 2 rounds
    python bench/bench_hf_cb.py --quick
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, environment, log, replace_section  # noqa: E402
from bench_decode import engine_run  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "e2e" / "test.csv"


ours = engine_run  # the same measurement as bench_decode's engine rows


def theirs(model, prompts: list[list[int]], new: int) -> float:
    from transformers import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
    t = time.perf_counter()
    out = model.generate_batch(prompts, generation_config=cfg, warmup=False)
    took = time.perf_counter() - t
    assert all(len(o.generated_tokens) == new for o in out.values()), [len(o.generated_tokens) for o in out.values()]
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--markdown", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "bench_hf_cb.json")
    args = p.parse_args()
    torch.set_num_threads(2)
    import prefixtune as pt
    from prefixtune.bundled.models import load_model
    from prefixtune.runtime.bank import AdapterBank
    from prefixtune.serve.continuous import ContinuousEngine
    from prefixtune.serve.engine import EngineSettings

    n, new, rounds = (4, 8, 1) if args.quick else (32, 64, args.rounds)
    hf_model, tok = load_model("smollm2-135m")
    hf_model.set_attn_implementation("paged|sdpa")
    model, _ = load_model("smollm2-135m")
    with open(DATA, newline="") as f:
        mrs = sorted({row["mr"] for row in csv.DictReader(f)})[:n]
    prompts = [tok(m + "\n")["input_ids"] for m in mrs]
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        pm = pt.wrap(model, pt.PrefixConfig(prefix_length=10, reparameterization="direct", init_std=0.5))
        pm.save_pretrained(tmp)
        pm.unwrap()
        bank = AdapterBank(model)
        bank.add("p10", tmp)
    engine = ContinuousEngine(bank, tok, EngineSettings(max_batch_size=n, max_batch_tokens=4096))
    times: dict[str, list[float]] = {"transformers generate_batch, bare": [], "prefixtune engine, bare": [],
                                     "prefixtune engine, prefix l=10": []}
    for r in range(rounds):
        with torch.inference_mode():
            times["transformers generate_batch, bare"].append(theirs(hf_model, prompts, new))
        times["prefixtune engine, bare"].append(ours(engine, None, prompts, new))
        times["prefixtune engine, prefix l=10"].append(ours(engine, "p10", prompts, new))
        log(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()))
    med = {k: statistics.median(v) for k, v in times.items()}
    cmd = "python bench/bench_hf_cb.py" + (" --quick" if args.quick else "")
    env = environment(2)
    args.json.write_text(json.dumps({"command": cmd, "env": env, "prompts": n, "new_tokens": new, "seconds": times},
                                    indent=2))
    rows = "\n".join(f"| {k} | {v:.1f} | {n * new / v:.1f} |" for k, v in med.items())
    section = f"""## transformers' continuous batching vs prefixtune's engine (bare SmolLM2-135M, CPU, fp32)

Command: `{cmd}` · {env.get('date', '')} · 2 cores · medians of {rounds} alternating rounds{' · **QUICK smoke sizes**' if args.quick else ''}

{n} E2E test prompts submitted at once, greedy, {new} new tokens each (EOS never ends a row).
transformers 5.24's `generate_batch` (paged cache, `paged|sdpa` attention) runs the bare model only:
it has no way to give a row a prefix. The measurement behind our own engine (docs/design.md).

| engine | seconds | output tokens/s |
|---|---:|---:|
{rows}

Raw timings: `docs/bench_hf_cb.json`.
"""
    replace_section(args.markdown, "bench_hf_cb", section, "# Benchmarks")
    print(section)


if __name__ == "__main__":
    main()
