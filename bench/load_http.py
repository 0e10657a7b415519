"""Hostile load on a live server: a burst past the queue, oversized and unauthenticated bodies,
cut uploads, clients that vanish mid-stream and malformed JSON, all at once, while ``/health`` is
probed; then the server must still answer, and answer the same as before the load.

    PYTHONPATH=src:tests .venv/bin/python bench/load_http.py                 # 200-request burst
    PYTHONPATH=src:tests .venv/bin/python bench/load_http.py --burst 400 --hostile 40

The server is a tiny random Llama with SmolLM2's tokenizer and one prefix adapter on 127.0.0.1
(``--max-queue`` waiting requests, 8 new tokens at most, a 64 KiB body limit), in a process of
its own; the clients are threads of this one, the ``/health`` probe a third process. Prints one row per kind of request (how
many, the status codes they got, what was expected), the ``/health`` latencies during the load,
whether any response was a 5xx, and whether a greedy request after the load returned what it did
before. Exit status 1 if any expectation failed. Not a test: figures for docs/reliability.md.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import multiprocessing
import random
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import httpx  # noqa: E402
import transformers as T  # noqa: E402

import prefixtune as pt  # noqa: E402
from live_server import AUTH, make_server, tiny_llama  # noqa: E402
from prefixtune.bundled.models import resolve  # noqa: E402

GREEDY = {"model": "table", "prompt": "name[Aromi], food[Thai]\n", "max_tokens": 8, "temperature": 0}


def _status(fn) -> str:
    """Run one request; its status code as text, or the transport error's name."""
    try:
        return str(fn())
    except httpx.HTTPError as e:
        return type(e).__name__


def _kinds(http: httpx.Client, url: str, body_limit: int) -> dict[str, tuple[Callable[[], object], set[str]]]:
    """Each kind of request (sent with ``http``, one client shared by the threads: a client per
    request would spend more CPU building TLS contexts than the server spends answering): a
    function doing one and returning its status, and the statuses expected."""
    big = b'{"model": "table", "prompt": "' + b"x" * (5 * body_limit) + b'"}'

    def burst() -> int:
        r = http.post(f"{url}/v1/completions", json=GREEDY, headers=AUTH, timeout=300)
        if r.status_code == 429 and not r.headers.get("retry-after"):
            return -429  # a 429 without Retry-After fails the expectation
        return r.status_code

    def unauthenticated_big() -> int:
        return http.post(f"{url}/v1/completions", content=big, timeout=60,
                          headers={"Content-Type": "application/json"}).status_code

    def oversized() -> int:
        return http.post(f"{url}/v1/completions", content=big, timeout=60,
                          headers={**AUTH, "Content-Type": "application/json"}).status_code

    def chunked_oversized() -> int:
        def chunks():
            for _ in range(6):
                yield b"x" * body_limit
        return http.post(f"{url}/v1/completions", content=chunks(), timeout=60,
                          headers={**AUTH, "Content-Type": "application/json"}).status_code

    def cut_upload() -> str:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: " + AUTH["Authorization"].encode()
                         + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\": \"ta")
        return "cut"  # the client went away half-way through its body

    def vanishing_stream() -> int:
        with http.stream("POST", f"{url}/v1/completions", json={**GREEDY, "stream": True, "max_tokens": 8},
                          headers=AUTH, timeout=300) as r:
            for _ in r.iter_lines():
                break  # the first event, then the client is gone
            return r.status_code

    def malformed() -> int:
        return http.post(f"{url}/v1/completions", content=b'{"model": "table", "prompt": ', timeout=60,
                          headers={**AUTH, "Content-Type": "application/json"}).status_code

    return {"burst (completions, 8 tokens)": (burst, {"200", "429"}),
            "unauthenticated 5x-limit body": (unauthenticated_big, {"401"}),
            "authenticated 5x-limit body": (oversized, {"413"}),
            "chunked body past the limit": (chunked_oversized, {"413", "RemoteProtocolError", "WriteError",
                                                                 "ReadError"}),
            "upload cut half-way": (cut_upload, {"cut"}),
            "stream, client gone after 1 event": (vanishing_stream, {"200", "429"}),
            "malformed JSON": (malformed, {"400"})}


def _serve(tmp: str, body_limit: int, max_queue: int, ready, stop) -> None:
    """The server process: a tiny Llama with one prefix adapter, until ``stop`` is set (the
    clients run in another process, so that their threads do not share its interpreter lock)."""
    tok = T.AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    tok.pad_token = tok.pad_token or tok.eos_token
    pt.wrap(tiny_llama(tok), pt.PrefixConfig(prefix_length=4, hidden_size=16)).save_pretrained(tmp)
    server, _ = make_server(tok, {"table": tmp}, settings={"max_tokens": 8, "max_body_bytes": body_limit},
                            max_queue=max_queue)
    with server:
        ready.put(server.url)
        stop.wait()


def _probe(url: str, started, done, out) -> None:
    """``GET /health`` every 50 ms until ``done``, from a process of its own (the clients' threads
    would otherwise delay the probe itself); puts the ``(seconds, status)`` pairs on ``out``."""
    httpx.get(f"{url}/health", timeout=60)
    started.set()
    health, http = [], httpx.Client(timeout=60)
    while not done.is_set():
        t = time.perf_counter()
        code = http.get(f"{url}/health").status_code
        health.append((time.perf_counter() - t, code))
        time.sleep(0.05)
    out.put(health)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--burst", type=int, default=200, help="concurrent completions")
    ap.add_argument("--hostile", type=int, default=20, help="requests of each hostile kind")
    ap.add_argument("--max-queue", type=int, default=32)
    ap.add_argument("--workers", type=int, default=64, help="client threads")
    ap.add_argument("--only", default=None, help="only the kinds of request whose name contains this text")
    args = ap.parse_args()
    body_limit = 64 * 1024
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    with tempfile.TemporaryDirectory() as tmp:
        proc = ctx.Process(target=_serve, args=(tmp, body_limit, args.max_queue, ready, stop))
        proc.start()
        try:
            url = ready.get(timeout=300)
            before = httpx.post(f"{url}/v1/completions", json=GREEDY, headers=AUTH, timeout=60).json()
            http = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=args.workers + 8))
            kinds = {k: v for k, v in _kinds(http, url, body_limit).items() if not args.only or args.only in k}
            jobs = [name for name in kinds for _ in range(args.burst if name.startswith("burst") else args.hostile)]
            random.Random(0).shuffle(jobs)  # the kinds interleaved
            started, done, probes = ctx.Event(), ctx.Event(), ctx.Queue()
            prober = ctx.Process(target=_probe, args=(url, started, done, probes))
            prober.start()
            started.wait(120)
            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
                outcomes = list(pool.map(lambda n: (n, _status(kinds[n][0])), jobs))
            seconds = time.perf_counter() - t0
            done.set()
            health = probes.get(timeout=120)
            prober.join(60)
            after = httpx.post(f"{url}/v1/completions", json=GREEDY, headers=AUTH, timeout=60).json()
            alive = httpx.get(f"{url}/health", timeout=10).status_code == 200
        finally:
            stop.set()
            proc.join(120)
    return _report(outcomes, kinds, health, seconds, before, after, alive, args)


def _report(outcomes, kinds, health, seconds, before, after, alive, args) -> int:
    by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name, status in outcomes:
        by_kind[name][status] += 1
    ok = True
    print(f"{len(outcomes)} requests in {seconds:.1f} s ({args.workers} client threads, --max-queue {args.max_queue})\n")
    print("| requests | count | statuses | expected | as expected |\n|---|---|---|---|---|")
    for name, (_, expected) in kinds.items():
        seen = by_kind[name]
        good = set(seen) <= expected
        ok &= good
        shown = ", ".join(f"{s} x{n}" for s, n in sorted(seen.items()))
        print(f"| {name} | {sum(seen.values())} | {shown} | {' or '.join(sorted(expected))} | {'yes' if good else 'NO'} |")
    server_errors = sum(n for c in by_kind.values() for s, n in c.items() if s.startswith("5"))
    lat = sorted(t for t, _ in health) or [float("nan")]
    same = before["choices"][0]["text"] == after["choices"][0]["text"]
    ok &= server_errors == 0 and same and alive and all(code == 200 for _, code in health)
    print(f"\n/health during the load: {len(lat)} probes, all 200: {all(c == 200 for _, c in health)}, "
          f"p50 {1000 * lat[len(lat) // 2]:.0f} ms, max {1000 * lat[-1]:.0f} ms")
    print(f"5xx responses: {server_errors}; after the load: /health ok {alive}, the greedy request returns the same "
          f"text as before: {same} ({json.dumps(after['choices'][0]['text'])})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
