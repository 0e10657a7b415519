"""Serving benchmark: mixed-adapter batching vs same-adapter batching vs one request at a time.

8 adapters (prefix and prompt methods, lengths 5-20) on the bundled SmolLM2-135M, 16 concurrent
clients, each sending greedy completion requests for random adapters, 64 new tokens each
(``ignore_eos``). The three policies run in alternating rounds in one process; results go to
``docs/benchmarks.md`` (section "Serving") and ``docs/bench_serve.json``.

    python bench/bench_serve.py            # full run
    python bench/bench_serve.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, replace_section  # noqa: E402


def make_adapters(model_name: str, where: Path, count: int) -> dict[str, Path]:
    import prefixtune as pt
    from prefixtune.bundled.models import load_model

    model, _ = load_model(model_name)
    out = {}
    for i in range(count):
        torch.manual_seed(i)
        if i % 2 == 0:
            cfg = pt.PrefixConfig(prefix_length=5 + 5 * (i // 2), reparameterization="direct", init_std=0.5)
        else:
            cfg = pt.PromptConfig(num_virtual_tokens=5 + 5 * (i // 2), init="vocab")
        pm = pt.wrap(model, cfg)
        pm.save_pretrained(where / f"task{i}")
        pm.unwrap()
        out[f"task{i}"] = where / f"task{i}"
    return out


def adapter_bank(where: Path, count: int = 8) -> tuple:
    """``(bank, tokenizer, adapter names)``: SmolLM2-135M with :func:`make_adapters`' adapters."""
    from prefixtune.bundled.models import load_model
    from prefixtune.runtime.bank import AdapterBank

    paths = make_adapters("smollm2-135m", where, count)
    model, tok = load_model("smollm2-135m")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    bank = AdapterBank(model)
    for name, path in paths.items():
        bank.add(name, path)
    return bank, tok, list(paths)


def run_policy(bank, tokenizer, policy: str, requests: list[tuple[str, str]], clients: int, new_tokens: int) -> dict:
    import openai

    from prefixtune.serve.app import ServerSettings, create_app
    from prefixtune.serve.continuous import make_engine
    from prefixtune.serve.engine import EngineSettings

    engine = make_engine(bank, tokenizer, EngineSettings(policy=policy, max_batch_size=16, batch_wait_ms=5))
    app = create_app(engine, ServerSettings(base_name="smollm2-135m", max_tokens=new_tokens))
    latencies: list[float] = []
    from prefixtune.serve.thread import ServerThread

    with ServerThread(app) as server:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="x", max_retries=0, timeout=600)

        def one(item: tuple[str, str]) -> None:
            start = time.perf_counter()
            r = client.completions.create(model=item[0], prompt=item[1], max_tokens=new_tokens, temperature=0,
                                          extra_body={"ignore_eos": True})
            assert r.usage.completion_tokens == new_tokens, r.usage
            latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, requests))
        wall = time.perf_counter() - start
    lat = sorted(latencies)
    return {"policy": policy, "requests": len(requests), "wall_s": wall, "rps": len(requests) / wall,
            "p50_s": statistics.median(lat), "p95_s": lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))],
            "mean_batch": statistics.mean(sizes(engine)), "batches": len(sizes(engine))}


def sizes(engine) -> list[int]:
    """Rows per batch: per decoding step (continuous) or per ``generate`` call (micro-batches)."""
    return engine.steps if hasattr(engine, "steps") else engine.batches


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--requests", type=int, default=32, help="requests per policy per round")
    p.add_argument("--markdown", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "bench_serve.json")
    args = p.parse_args()
    torch.set_num_threads(2)
    new_tokens, n_req, rounds = (8, 8, 1) if args.quick else (64, args.requests, args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        bank, tok, names = adapter_bank(Path(tmp))
        rng = random.Random(0)
        foods = ["Italian", "French", "Thai", "English", "Chinese", "Indian", "Japanese", "fast food"]
        results: dict[str, list[dict]] = {"continuous": [], "mixed": [], "same": [], "none": []}
        for r in range(rounds):
            for policy in ("continuous", "mixed", "same", "none"):
                reqs = [(rng.choice(names), f"name[Place {rng.randint(1, 99)}], food[{rng.choice(foods)}]\n")
                        for _ in range(n_req)]
                res = run_policy(bank, tok, policy, reqs, clients=16, new_tokens=new_tokens)
                results[policy].append(res)
                print(f"round {r + 1} {policy:5s}: {res['rps']:.3f} req/s, p50 {res['p50_s']:.1f} s, "
                      f"p95 {res['p95_s']:.1f} s, mean batch {res['mean_batch']:.1f}", flush=True)

    def agg(policy: str) -> dict:
        rs = results[policy]
        total = sum(x["requests"] for x in rs)
        wall = sum(x["wall_s"] for x in rs)
        return {"rps": total / wall, "p50_s": statistics.median([x["p50_s"] for x in rs]),
                "p95_s": max(x["p95_s"] for x in rs), "mean_batch": statistics.mean(x["mean_batch"] for x in rs)}

    summary = {k: agg(k) for k in results}
    cmd = "python bench/bench_serve.py" + (" --quick" if args.quick else "")
    meta = {"command": cmd, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "new_tokens": new_tokens, "clients": 16,
            "requests_per_round": n_req, "rounds": rounds}
    args.json.write_text(json.dumps({"meta": meta, "rounds": results, "summary": summary}, indent=2))
    c, m, s, n = summary["continuous"], summary["mixed"], summary["same"], summary["none"]
    section = f"""## Serving: mixed-adapter batching (SmolLM2-135M, CPU)

Command: `{cmd}` · {meta['date']} · torch {meta['torch']} · 2 cores{' · **QUICK smoke sizes, not real numbers**' if args.quick else ''}

8 adapters (4 prefixes of length 5/10/15/20, 4 prompts of 5/10/15/20 virtual tokens), 16 concurrent
`openai` clients against a live server on 127.0.0.1, each request for a random adapter, greedy,
{new_tokens} new tokens (`ignore_eos`); {n_req} requests per policy per round, {rounds} alternating rounds.
Policies: (0) `continuous` — the default engine: rows join and leave at every decoding step (its
mean batch size is rows per step); (a) `mixed` — one micro-batch holds requests for any adapters; (b) `same` — a batch holds one
adapter's requests; (c) `none` — one request at a time. Max batch 16, gathering window 5 ms.

| policy | requests/s | p50 latency (s) | p95 latency (s) | mean batch size |
|---|---:|---:|---:|---:|
| (0) continuous | {c['rps']:.3f} | {c['p50_s']:.1f} | {c['p95_s']:.1f} | {c['mean_batch']:.1f} |
| (a) mixed | {m['rps']:.3f} | {m['p50_s']:.1f} | {m['p95_s']:.1f} | {m['mean_batch']:.1f} |
| (b) same adapter | {s['rps']:.3f} | {s['p50_s']:.1f} | {s['p95_s']:.1f} | {s['mean_batch']:.1f} |
| (c) one at a time | {n['rps']:.3f} | {n['p50_s']:.1f} | {n['p95_s']:.1f} | {n['mean_batch']:.1f} |

Continuous / mixed micro-batching: **{c['rps'] / m['rps']:.2f}×** throughput. Throughput (a)/(c) **{m['rps'] / n['rps']:.2f}×** (target ≥ 3), (a)/(b) **{m['rps'] / s['rps']:.2f}×** (target ≥ 1.5);
p95 latency (a) {m['p95_s']:.1f} s vs (b) {s['p95_s']:.1f} s (target: no worse).
Raw numbers: `docs/bench_serve.json`.
"""
    replace_section(args.markdown, "bench_serve", section, "# Benchmarks")
    print(section)


if __name__ == "__main__":
    main()
