"""Schemathesis fuzzing of the HTTP API at a larger scale than CI, with a summary.

Starts a live server (a tiny random Llama with SmolLM2's tokenizer, one adapter, 8 new tokens
at most), fuzzes every operation of its ``/openapi.json`` with valid and schema-violating data
(``--max-examples`` each, derandomized), checks each response (no 5xx; status code, content
type, headers and body as declared), and prints per operation: examples tried, status codes
seen, failures. Exit status 1 if anything failed.

    PYTHONPATH=src:tests .venv/bin/python bench/fuzz_http.py --max-examples 300
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import transformers as T  # noqa: E402

import prefixtune as pt  # noqa: E402
from live_server import AUTH, KEY, make_server, tiny_llama  # noqa: E402
from prefixtune.bundled.models import resolve  # noqa: E402
from schema_fuzz import OPERATIONS, Tally, fuzz_operation, load_schema  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=300, help="per operation and mode (valid, invalid)")
    args = parser.parse_args()
    tokenizer = T.AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    with tempfile.TemporaryDirectory() as tmp:
        pt.wrap(tiny_llama(tokenizer), pt.PrefixConfig(prefix_length=4, hidden_size=16)).save_pretrained(tmp)
        server, _ = make_server(tokenizer, {"table": tmp},
                                settings={"admin_key": KEY, "max_tokens": 8, "max_prompt_tokens": 64})
        tally, start = Tally(), time.monotonic()
        with server:
            schema = load_schema(server.url, AUTH)
            for method, path in OPERATIONS:
                fuzz_operation(schema, method, path, AUTH, args.max_examples, tally, ["tiny", "table"], 8,
                               raise_first=False)
        seconds = time.monotonic() - start
    print(f"schemathesis fuzz: {len(OPERATIONS)} operations, {sum(tally.examples.values())} examples, "
          f"{sum(len(f) for f in tally.failures.values())} failures, {seconds:.0f} s "
          f"(--max-examples {args.max_examples} per operation and mode)")
    for method, path in OPERATIONS:
        label = f"{method} {path}"
        codes = ", ".join(f"{c}: {n}" for c, n in sorted(tally.statuses.get(label, {}).items()))
        print(f"  {label:32} {tally.examples.get(label, 0):6} examples  statuses {{{codes}}}  "
              f"failures {len(tally.failures.get(label, []))}")
        for failure in tally.failures.get(label, [])[:3]:
            print("      " + failure.replace("\n", "\n      ")[:1500])
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
