"""Serving benchmark on a realistic workload: Poisson arrivals of streaming clients, mixed lengths.

8 adapters on the bundled SmolLM2-135M, fp32: trained ones given with ``--adapter DIR`` (each
served under several names, 8 names in all), or else prefixes of 5/10/15/20 slots and prompts of
5/10/15/20 virtual tokens with random initialisation (no trained adapters ship with the repository);
prompts are E2E test inputs (``{mr}\\n``), greedy, stop at a newline with ``max_tokens`` 64, and
10% of the requests ask for 256 tokens with no stop and EOS ignored. Streaming ``openai`` clients
(threads of a second process) against a live server on 127.0.0.1, at most 32 in flight. Three servers run in one process, one
after the other at each rate: (a) continuous batching with the adapters, (b) the older
micro-batching (``--batching mixed``) with the adapters, (c) continuous batching on the bare base
model (every request for the base model: the limit). The bare model's own batch-16 ``generate``
(64 new tokens) is measured in the same run as the throughput reference.

    prefixtune train --config configs/e2e-smollm2.yaml --steps 120 --test-limit 0 --out runs/e2e-short
    python bench/bench_workload.py --adapter runs/e2e-short/best   # 1 request/s (48) and saturated (64 at once)
    python bench/bench_workload.py --quick          # smoke sizes
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import adapter_bank  # noqa: E402
from common import ROOT, environment, log, replace_section  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "e2e" / "test.csv"


def workload(n: int, names: list[str], rate: float | None, seed: int) -> list[dict]:
    """``n`` requests: arrival time, adapter, prompt, and whether it is a long (256-token) one."""
    with open(DATA, newline="") as f:
        mrs = sorted({row["mr"] for row in csv.DictReader(f)})
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append({"at": t, "model": rng.choice(names), "prompt": rng.choice(mrs) + "\n", "long": rng.random() < 0.1})
        if rate is not None:
            t += rng.expovariate(rate)
    return out


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def drive(url: str, requests: list[dict], in_flight: int = 32) -> dict:
    """Send ``requests`` at their arrival times (streaming); TTFT, latency, output tokens."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=1200)
    gate = threading.Semaphore(in_flight)
    results: list[dict] = []
    start = time.perf_counter()

    def one(item: dict) -> None:
        with gate:
            sent = time.perf_counter()
            extra = {"ignore_eos": True} if item["long"] else {}
            stream = client.completions.create(
                model=item["model"], prompt=item["prompt"], max_tokens=256 if item["long"] else 64, temperature=0,
                stop=None if item["long"] else ["\n"], stream=True, stream_options={"include_usage": True},
                extra_body=extra)
            first, tokens = None, 0
            for chunk in stream:
                if chunk.choices and chunk.choices[0].text and first is None:
                    first = time.perf_counter()
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            done = time.perf_counter()
            results.append({"ttft": (first or done) - sent, "latency": done - sent, "tokens": tokens, "end": done})

    threads = []
    for item in requests:
        delay = start + item["at"] - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        th = threading.Thread(target=one, args=(item,))
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    last_arrival = start + requests[-1]["at"]
    end = max(r["end"] for r in results)
    ttft, lat = [r["ttft"] for r in results], [r["latency"] for r in results]
    tokens = sum(r["tokens"] for r in results)
    return {"requests": len(results), "output_tokens": tokens, "wall_s": end - start,
            "tokens_per_s": tokens / (end - start), "after_last_arrival_s": end - last_arrival,
            "ttft_p50_s": statistics.median(ttft), "ttft_p95_s": percentile(ttft, 0.95),
            "latency_p50_s": statistics.median(lat), "latency_p95_s": percentile(lat, 0.95)}


def trained_bank(paths: list[Path], names: int = 8) -> tuple:
    """SmolLM2-135M with the adapters at ``paths``, each under several names (``names`` in all)."""
    from prefixtune.bundled.models import load_model
    from prefixtune.runtime.bank import AdapterBank

    model, tok = load_model("smollm2-135m")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    bank = AdapterBank(model)
    for i in range(names):
        bank.add(f"task{i}", paths[i % len(paths)])
    return bank, tok, [f"task{i}" for i in range(names)]


def direct(bank, tokenizer, requests: list[dict]) -> dict:
    """The saturated workload on the engine alone (no HTTP, no clients sharing the cores): all
    requests queued at once, the worker's loop run in this thread; output tokens/s."""
    from prefixtune.serve.continuous import ContinuousEngine
    from prefixtune.serve.engine import EngineSettings
    from prefixtune.serve.request import Request

    engine = ContinuousEngine(bank, tokenizer, EngineSettings(max_batch_size=32))
    reqs = [Request(w["model"] if w["model"] in bank.adapters else None, tokenizer(w["prompt"])["input_ids"],
                    256 if w["long"] else 64, stop=[] if w["long"] else ["\n"], ignore_eos=w["long"])
            for w in requests]
    start = time.perf_counter()
    for r in reqs:
        engine.submit(r)
    while not engine.idle:
        engine.turn()
    wall = time.perf_counter() - start
    tokens = sum(len(r.tokens) for r in reqs)
    return {"requests": len(reqs), "output_tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "mean_rows_per_step": statistics.mean(engine.steps)}


def serve(bank, tokenizer, policy: str) -> tuple:
    from prefixtune.serve.app import ServerSettings, create_app
    from prefixtune.serve.continuous import make_engine
    from prefixtune.serve.engine import EngineSettings
    from prefixtune.serve.thread import ServerThread

    engine = make_engine(bank, tokenizer, EngineSettings(policy=policy, max_batch_size=32, batch_wait_ms=5))
    app = create_app(engine, ServerSettings(base_name="smollm2-135m", max_tokens=256))
    return ServerThread(app), engine


def generate_reference(bank, tokenizer, prompts: list[str], rows: int = 16, new: int = 64) -> float:
    """The bare model's own ``generate``: output tokens/s at batch ``rows``, ``new`` tokens each."""
    enc = tokenizer([p for p in prompts[:rows]], return_tensors="pt", padding=True, padding_side="left")
    model = bank.base_model
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id)
        best = min(best, time.perf_counter() - t)
    return rows * new / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--adapter", action="append", default=[], type=Path, help="a trained adapter (repeatable)")
    p.add_argument("--markdown", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "bench_workload.json")
    args = p.parse_args()
    torch.set_num_threads(2)
    n_slow, n_fast = (6, 8) if args.quick else (48, 64)
    with tempfile.TemporaryDirectory() as tmp:
        if args.adapter:
            bank, tok, names = trained_bank(args.adapter)
        else:
            bank, tok, names = adapter_bank(Path(tmp))
        reference = generate_reference(bank, tok, [w["prompt"] for w in workload(16, names, None, 1)])
        log(f"bare generate batch 16: {reference:.1f} output tokens/s")
        results: dict = {}
        for rate_name, rate, n in (("1 req/s", 1.0, n_slow), ("saturated", None, n_fast)):
            for label, policy, bare in (("(a) continuous", "continuous", False), ("(b) micro-batching", "mixed", False),
                                        ("(c) bare model, continuous", "continuous", True)):
                reqs = workload(n, ["smollm2-135m"] if bare else names, rate, seed=7)
                server, engine = serve(bank, tok, policy)
                with server, multiprocessing.get_context("spawn").Pool(1) as clients:
                    res = clients.apply(drive, (server.url, reqs))  # clients in a process of their own
                results[f"{rate_name} {label}"] = res
                log(f"{rate_name} {label}: {json.dumps({k: round(v, 2) for k, v in res.items()})}")
        for label, bare in (("(a) continuous", False), ("(c) bare model, continuous", True)):
            res = direct(bank, tok, workload(n_fast, ["smollm2-135m"] if bare else names, None, seed=7))
            results[f"engine alone, saturated {label}"] = res
            log(f"engine alone {label}: {json.dumps({k: round(v, 2) for k, v in res.items()})}")
    write(args, reference, results)


def write(args, reference: float, results: dict) -> None:
    cmd = "python bench/bench_workload.py" + (" --quick" if args.quick else "") + "".join(
        f" --adapter {a}" for a in args.adapter)
    env = environment(2)
    args.json.write_text(json.dumps({"command": cmd, "env": env, "generate_batch16_tokens_per_s": reference,
                                     "results": results}, indent=2))
    rows = "\n".join(
        f"| {k} | {r['requests']} | {r['tokens_per_s']:.1f} | {r['ttft_p50_s']:.2f} / {r['ttft_p95_s']:.2f} | "
        f"{r['latency_p50_s']:.2f} / {r['latency_p95_s']:.2f} | {r['after_last_arrival_s']:.1f} |"
        if "ttft_p50_s" in r else f"| {k} | {r['requests']} | {r['tokens_per_s']:.1f} | — | — | — |"
        for k, r in results.items())
    def ratio(prefix: str) -> str:
        a, c = results.get(f"{prefix} (a) continuous"), results.get(f"{prefix} (c) bare model, continuous")
        if not a or not c:
            return ""
        return (f"{prefix}: (a) = **{a['tokens_per_s'] / reference:.2f}×** the bare model's batch-16 `generate` "
                f"(target ≥ 0.6) and **{a['tokens_per_s'] / c['tokens_per_s']:.2f}×** (c) (target ≥ 0.9)")

    ratios = "; ".join(r for r in (ratio("saturated"), ratio("engine alone, saturated")) if r)
    adapters = (f"8 adapter names over {len(args.adapter)} trained adapter(s) ({', '.join(map(str, args.adapter))})"
                if args.adapter else "8 adapters (prefixes of 5/10/15/20 slots, prompts of 5/10/15/20 virtual tokens; "
                "random initialisation, so outputs rarely stop at the newline and mostly run to `max_tokens`)")
    section = f"""## Serving a realistic workload: continuous batching (SmolLM2-135M, CPU, fp32)

Command: `{cmd}` · {env.get('date', '')} · 2 cores{' · **QUICK smoke sizes, not real numbers**' if args.quick else ''}

{adapters}, E2E test inputs as prompts, greedy, stop `"\\n"` with
`max_tokens` 64, 10% of requests 256 tokens with no stop and EOS ignored; streaming `openai`
clients on 127.0.0.1 (threads of a second process), Poisson arrivals (or all at once: saturated),
at most 32 in flight. Max batch
32 rows, 512 tokens per step. Bare model's own `generate`, batch 16 × 64 new tokens, same run:
**{reference:.1f} output tokens/s**.

| server, rate | requests | output tokens/s | TTFT p50 / p95 (s) | latency p50 / p95 (s) | done after last arrival (s) |
|---|---:|---:|---:|---:|---:|
{rows}

{ratios}. *Engine alone*: the same saturated requests run on the engine in this process, with no
HTTP server and no clients competing for the 2 cores. Raw numbers: `docs/bench_workload.json`.
"""
    replace_section(args.markdown, "bench_workload", section, "# Benchmarks")
    print(section)


if __name__ == "__main__":
    main()
