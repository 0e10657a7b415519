"""Per-process memory of a prefix run on two CPU processes: DDP (each holds the base) vs FSDP (sharded).

    .venv/bin/python scripts/fsdp_memory.py                      # a random 137M-parameter Llama, in /tmp
    .venv/bin/python scripts/fsdp_memory.py --layers 4 --hidden 512   # smaller

The parent writes a random Llama (SmolLM2's tokenizer and vocabulary) once, then launches
``torch.distributed.run`` twice with this file as the worker, ``ddp`` then ``fsdp``. Each worker
loads the model and wraps it as training does (:func:`prefixtune.train.distributed.prepare`), then
reports: the bytes of base-model parameters it holds (for FSDP, its local shards), its resident set
after wrapping (freed memory handed back with ``malloc_trim``), and its peak resident set over two
training steps (forward, backward, gradient averaging, AdamW) on batches of 4 rows of 64 tokens,
measured from a reset of ``VmHWM`` after wrapping. Not a test: numbers for docs/training.md.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

MIB = 2 ** 20


def write_model(where: Path, layers: int, hidden: int) -> None:
    import transformers as T

    from prefixtune.bundled.models import resolve

    tok = T.AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
    torch.manual_seed(0)
    heads = hidden // 64
    cfg = T.LlamaConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                        num_key_value_heads=max(1, heads // 4), intermediate_size=hidden * 8 // 3,
                        vocab_size=len(tok), tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                        bos_token_id=tok.bos_token_id)
    T.LlamaForCausalLM(cfg).save_pretrained(where)
    tok.save_pretrained(where)


def held_bytes(module: torch.nn.Module) -> int:
    """Bytes of the parameters this process stores (a DTensor's local shard only)."""
    local = (p.to_local() if hasattr(p, "to_local") else p for p in module.parameters())
    return sum(t.numel() * t.element_size() for t in local)


def rss_mib(field: str = "VmRSS") -> float:
    from prefixtune.train.memory import status_kib

    return status_kib(field) / 1024


def worker(model_dir: str, mode: str, out: str) -> None:
    from accelerate import Accelerator

    from prefixtune.bundled.models import load_model
    from prefixtune.evaluation.loss import batch_loss
    from prefixtune.methods.prefix import PrefixConfig
    from prefixtune.runtime.model import wrap
    from prefixtune.train import distributed
    from prefixtune.train.memory import reset_peak_rss

    torch.set_num_threads(1)
    acc = Accelerator(cpu=True)
    base, tok = load_model(model_dir)
    full = held_bytes(base)
    torch.manual_seed(0)
    model = wrap(base, PrefixConfig(prefix_length=10), tokenizer=tok)
    run = SimpleNamespace(cfg=SimpleNamespace(distributed=mode), acc=acc, model=model)
    step_model = distributed.prepare(run)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    row = {"rank": acc.process_index, "base_full_mib": full / MIB, "base_held_mib": held_bytes(base) / MIB,
           "rss_after_wrap_mib": rss_mib()}
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    reset_peak_rss()
    model.train()
    ids = torch.randint(0, base.config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(acc.process_index))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        loss, count, _ = batch_loss(step_model, batch, "generation")
        (loss / count).backward()
        distributed.average_gradients(run)
        optimizer.step()
    row["peak_rss_steps_mib"] = rss_mib("VmHWM")
    Path(out, f"{mode}-{acc.process_index}.json").write_text(json.dumps(row))


def launch(mode: str, model_dir: Path, out: Path) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # large blocks straight from mmap and back to the system when freed, so that the resident set
    # follows the live tensors rather than what glibc's heap keeps after FSDP frees a gathered unit
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    str(port), __file__, "--worker", mode, str(model_dir), str(out)], check=True, env=env)
    return [json.loads((out / f"{mode}-{r}.json").read_text()) for r in (0, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--model-dir", default=None, help="where the random model is (written if absent)")
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "MODEL_DIR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[1], args.worker[0], args.worker[2])
        return
    model_dir = Path(args.model_dir or f"/tmp/prefixtune-fsdp-memory-{args.layers}x{args.hidden}")
    if not (model_dir / "config.json").exists():
        write_model(model_dir, args.layers, args.hidden)
    with tempfile.TemporaryDirectory() as out:
        rows = [r | {"mode": mode} for mode in ("ddp", "fsdp") for r in launch(mode, model_dir, Path(out))]
    print(f"| mode | rank | base weights (MiB) | held by the process (MiB) | RSS after wrapping (MiB) | peak RSS, 2 steps (MiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['rank']} | {r['base_full_mib']:.0f} | {r['base_held_mib']:.0f} | "
              f"{r['rss_after_wrap_mib']:.0f} | {r['peak_rss_steps_mib']:.0f} |")


if __name__ == "__main__":
    main()
