"""Train one run in this process, to be killed (tests/train/killing.py).

Usage: ``train_worker.py CONFIG.json``. With ``KILL_AT_REPLACE=N`` in the environment the process
SIGKILLs itself at its N-th ``os.replace`` (1-based), i.e. with a file fully written to its
temporary name but not yet in place: the moment an atomic write is most exposed.
"""

from __future__ import annotations

import os
import signal
import sys

from prefixtune.train.config import TrainConfig
from prefixtune.train.loop import train

if os.environ.get("KILL_AT_REPLACE"):
    at, calls, replace = int(os.environ["KILL_AT_REPLACE"]), [], os.replace

    def dying_replace(src, dst, *args, **kwargs):
        calls.append(dst)
        if len(calls) == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return replace(src, dst, *args, **kwargs)

    os.replace = dying_replace

train(TrainConfig.load(sys.argv[1]))
