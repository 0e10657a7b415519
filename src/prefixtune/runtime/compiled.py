"""``--compile``: a model's forward under ``torch.compile``, with a fallback to eager; for training
(``prefixtune train --compile``) and the serving engine's decoding steps (``prefixtune serve --compile``).

The model the steps call is wrapped once (inductor, dynamic shapes: batches differ in length and
in the positions the LM head keeps, and one graph with symbolic sizes serves them all instead of a
recompile per shape; sizes of 0 and 1 are specialised by dynamo, so a decoding step of one new
column and a prefill chunk of several are two graphs). The first call compiles (tens of seconds on a CPU, more for large models);
the backward runs through the compiled graph too. A PrefixModel compiles as one graph: the prefix
joins attention through module hooks that dynamo traces, not through Python-side state.

Compiling can fail where eager works (a missing C++ compiler, an operator inductor does not
lower, an unsupported model). Any error of a compiled call is answered by running the same call
eagerly: if eager fails too, its error is the real one and is raised; if eager works, compiling is
given up for the rest of the run with one warning that names the error, and the work goes on. A call
with side effects (a decoding step appends to the KV cache) passes ``undo``: it is called before the
eager rerun, so a compiled call that failed halfway leaves nothing behind.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import nn

log = logging.getLogger(__name__)


class MaybeCompiled:
    """Calls ``module`` compiled while compiling works, eagerly after it failed once (or when
    ``enabled`` is False). ``compiled`` tells which one the next call uses; ``what`` names the
    work in the warning ("training", "decoding")."""

    def __init__(self, module: nn.Module, enabled: bool, what: str = "training") -> None:
        self.module, self.what = module, what
        self._compiled = torch.compile(module, dynamic=True) if enabled else None
        self.failure: str | None = None  # why compiling was given up

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.call(None, *args, **kwargs)

    def call(self, undo: Callable[[], None] | None, *args: Any, **kwargs: Any) -> Any:
        """``module(*args, **kwargs)``; ``undo`` (if given) reverts what a failed compiled call may
        have changed before the same call runs eagerly."""
        if self._compiled is None:
            return self.module(*args, **kwargs)
        try:
            return self._compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any failure of the compiled path is retried eagerly
            if undo is not None:
                undo()
            out = self.module(*args, **kwargs)  # raises the model's own error if eager fails too
            self._compiled = None
            self.failure = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
            log.warning(f"--compile: torch.compile failed ({self.failure}); {self.what} goes on without compiling")
            return out
