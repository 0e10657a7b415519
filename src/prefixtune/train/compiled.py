"""``--compile``: the training forward under ``torch.compile``, with a fallback to eager.

The model the steps call is wrapped once (inductor, dynamic shapes: batches differ in length and
in the positions the LM head keeps, and one graph with symbolic sizes serves them all instead of a
recompile per shape). The first call compiles (tens of seconds on a CPU, more for large models);
the backward runs through the compiled graph too. A PrefixModel compiles as one graph: the prefix
joins attention through module hooks that dynamo traces, not through Python-side state.

Compiling can fail where eager works (a missing C++ compiler, an operator inductor does not
lower, an unsupported model). Any error of a compiled call is answered by running the same call
eagerly: if eager fails too, its error is the real one and is raised; if eager works, compiling is
given up for the rest of the run with one warning that names the error, and training goes on.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


class MaybeCompiled:
    """Calls ``module`` compiled while compiling works, eagerly after it failed once (or when
    ``enabled`` is False). ``compiled`` tells which one the next call uses."""

    def __init__(self, module: nn.Module, enabled: bool) -> None:
        self.module = module
        self._compiled = torch.compile(module, dynamic=True) if enabled else None
        self.failure: str | None = None  # why compiling was given up

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._compiled is None:
            return self.module(*args, **kwargs)
        try:
            return self._compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any failure of the compiled path is retried eagerly
            out = self.module(*args, **kwargs)  # raises the model's own error if eager fails too
            self._compiled = None
            self.failure = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
            log.warning(f"--compile: torch.compile failed ({self.failure}); training goes on without compiling")
            return out
