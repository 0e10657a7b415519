#!/usr/bin/env python
"""The machine's measured matmul peak, fp32 and bf16: the denominator of model FLOPs utilisation.

Times ``torch.matmul`` of the shapes SmolLM2-135M's training runs (a batch of 8 x 96 tokens through
its 576 -> 1536 MLP and 576 -> 576 projections, the 576 -> 49,152 LM head) plus two square shapes,
in fp32 and bf16, with the bench's thread count; each shape is warmed up, then timed over repeats
(median). The peak of a dtype is its fastest shape. Results: the ``matmul_peak`` section of
``docs/benchmarks.md`` and ``docs/bench_matmul.json``; ``bench/bench_train.py`` reads the JSON for
its utilisation column.

Usage::

    python bench/matmul_peak.py            # ~1 min
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, env_line, environment, log, median, replace_section  # noqa: E402

SHAPES = [(768, 576, 1536), (768, 1536, 576), (768, 576, 576), (768, 576, 49152), (1024, 1024, 1024),
          (2048, 2048, 2048)]


def time_matmul(m: int, k: int, n: int, dtype: Any, repeats: int) -> float:
    """Median seconds of one ``(m, k) @ (k, n)`` matmul (after warm-up; one call's time where a call
    takes over a second)."""
    import torch

    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    t0 = time.perf_counter()
    torch.matmul(a, b)
    first = time.perf_counter() - t0
    if first > 1.0:  # an emulated dtype (bf16 without bf16 units: ~100x slower): one call tells enough
        return first
    for _ in range(2):
        torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t0)
    return median(times)


def measure(threads: int, repeats: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    rows = []
    for m, k, n in SHAPES:
        row: dict[str, Any] = {"shape": [m, k, n]}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            s = time_matmul(m, k, n, dtype, repeats)
            row[name] = {"ms": s * 1e3, "gflops": 2 * m * k * n / s / 1e9}
        rows.append(row)
        log(f"{m}x{k} @ {k}x{n}: fp32 {row['fp32']['ms']:.2f} ms ({row['fp32']['gflops']:.0f} GFLOP/s), "
            f"bf16 {row['bf16']['ms']:.2f} ms ({row['bf16']['gflops']:.0f} GFLOP/s)")
    peak = {d: max(r[d]["gflops"] for r in rows) for d in ("fp32", "bf16")}
    return {"rows": rows, "peak_gflops": peak}


def render(r: dict[str, Any]) -> str:
    capability = f" — CPU kernels: {r['cpu_capability']}" if r.get("cpu_capability") else ""
    L = [f"## Matmul peak of this machine (the denominator of MFU){capability}", "",
         f"Command: `{r['command']}` · {env_line(r['env'])}.", "",
         "| shape (m x k @ k x n) | fp32 ms | fp32 GFLOP/s | bf16 ms | bf16 GFLOP/s | bf16 speed-up |",
         "|---|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        m, k, n = row["shape"]
        f, b = row["fp32"], row["bf16"]
        L.append(f"| {m}x{k} @ {k}x{n} | {f['ms']:.2f} | {f['gflops']:.0f} | {b['ms']:.2f} | {b['gflops']:.0f} "
                 f"| {f['ms'] / b['ms']:.2f}x |")
    p = r["peak_gflops"]
    L += ["", f"Peak: fp32 **{p['fp32']:.0f} GFLOP/s**, bf16 **{p['bf16']:.0f} GFLOP/s** "
              f"({r['threads']} threads; the fastest shape of each dtype)."]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default=str(ROOT / "docs"))
    p.add_argument("--section", default="matmul_peak",
                   help="the benchmarks.md section; its JSON is bench_matmul<what follows matmul_peak>.json "
                        "(matmul_peak-avx2: bench_matmul-avx2.json, for bench_train.py --section bench_train-avx2)")
    args = p.parse_args(argv)
    if not args.section.startswith("matmul_peak"):
        p.error(f"--section {args.section}: must start with matmul_peak (e.g. matmul_peak-avx2)")
    result = measure(args.threads, args.repeats)
    import torch

    result.update(command="python bench/matmul_peak.py" + "".join(f" {a}" for a in (argv or sys.argv[1:])),
                  env=environment(args.threads), threads=args.threads,
                  cpu_capability=torch.backends.cpu.get_cpu_capability())  # AVX2, AVX512, ... (what torch uses)
    out = Path(args.out)
    (out / f"bench_matmul{args.section.removeprefix('matmul_peak')}.json").write_text(json.dumps(result, indent=2) + "\n")
    replace_section(out / "benchmarks.md", args.section, render(result), "# Benchmarks")
    print(render(result))


if __name__ == "__main__":
    main()
