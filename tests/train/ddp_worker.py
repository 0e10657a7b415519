"""One process of a two-process run (launched by tests/train/test_train.py with torch.distributed.run).

Usage: ``ddp_worker.py CONFIG.json SCORES.json SEEN_DIR DEADLINE [STOP_AFTER]``. Rank 0's evaluations
return the scripted BLEU scores in order (only rank 0 evaluates; with FSDP every process does, each
reading the same script); every process counts its optimizer steps and writes
``SEEN_DIR/rank-<rank>.json`` with that count and what ``train`` returned. ``STOP_AFTER`` ends the
work after that many steps, like a kill (``train(stop_after=...)``). A process still running after
DEADLINE seconds (a hang) prints its stack and exits with an error. ``PREFIXTUNE_TEST_BF16_SPEEDUPS``
(a JSON list, one per rank) makes each rank's CPU probe measure that bf16 speed-up; the dtypes of
the base models a rank loads are written beside its step count.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
from pathlib import Path

import torch

import prefixtune.evaluation.evaluate as ev
import prefixtune.train.loop as loop
from prefixtune.runtime import hardware
from prefixtune.train.config import TrainConfig
from prefixtune.train.loop import train

config, scores, seen = Path(sys.argv[1]), iter(json.loads(Path(sys.argv[2]).read_text())), Path(sys.argv[3])
faulthandler.dump_traceback_later(float(sys.argv[4]), exit=True)
ev.evaluate = lambda *a, **k: ({"loss": 1.0, "bleu": next(scores)}, [])
steps: list[int] = []
plain_step = torch.optim.AdamW.step


def counting_step(self, *args, **kwargs):
    steps.append(1)
    return plain_step(self, *args, **kwargs)


torch.optim.AdamW.step = counting_step
speedups = json.loads(os.environ.get("PREFIXTUNE_TEST_BF16_SPEEDUPS", "null"))
if speedups:
    hardware.bf16_speedup = lambda: speedups[int(os.environ["RANK"])]
dtypes: list[str] = []
plain_load = loop.load_model


def recording_load(*args, **kwargs):
    base, tok = plain_load(*args, **kwargs)
    dtypes.append(str(next(base.parameters()).dtype))
    return base, tok


loop.load_model = recording_load
stop_after = int(sys.argv[5]) if len(sys.argv) > 5 else None
result = train(TrainConfig(**json.loads(config.read_text())), stop_after=stop_after)
rank = int(os.environ["RANK"])
(seen / f"rank-{rank}.json").write_text(json.dumps({"optimizer_steps": len(steps), "result": result,
                                                   "dtypes": dtypes}))
