"""Dynamic micro-batching of generation requests across adapters (the engine before continuous
batching, kept as ``--batching mixed|same|none`` and as the serving benchmark's baseline).

A worker thread takes the oldest waiting request, waits up to ``batch_wait_ms`` for more, and
runs one ``generate()`` over up to ``max_batch_size`` requests — each row with its own adapter
(policy ``"mixed"``), only requests of the first one's adapter (``"same"``), or one request at a
time (``"none"``). Rows stop individually (EOS, their own token limit, a stop string); new tokens
are pushed to streaming clients as they are produced.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from prefixtune.core.config import check_count, check_range
from prefixtune.serve.request import Outputs, Overloaded, Request, ShuttingDown  # noqa: F401  (re-exported)
from prefixtune.serve.sampling import Logprobs, Penalties, seeded
from prefixtune.serve.worker import QueueWorker

POLICIES = ("continuous", "mixed", "same", "none")


@dataclass
class EngineSettings:
    """Fields: batching ``policy`` (``"continuous"``: :class:`~prefixtune.serve.continuous.ContinuousEngine`,
    the default; ``"mixed"``, ``"same"``, ``"none"``: this module's micro-batching),
    ``max_batch_size`` rows at once, ``max_batch_tokens`` tokens per step of the continuous
    engine (decoding rows plus a chunk of new prompts), ``batch_wait_ms`` to gather a
    micro-batch, ``max_queue`` waiting requests before refusing with 429; ``compile``: the
    continuous engine's forwards under ``torch.compile`` (the other policies decode with
    ``generate`` and refuse it). Counts must be >= 1 and the wait >= 0 (a ConfigError, a
    ValueError, naming the field: a batch size of 0 would never run)."""

    policy: str = "continuous"
    max_batch_size: int = 32
    batch_wait_ms: float = 5.0
    max_queue: int = 256
    max_batch_tokens: int = 512
    compile: bool = False

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"batching policy must be one of {POLICIES}, got {self.policy!r}")
        if self.compile and self.policy != "continuous":
            raise ValueError(f"compile applies to the continuous engine only, not --batching {self.policy}: "
                             f"use --batching continuous or leave out --compile")
        for name in ("max_batch_size", "max_queue", "max_batch_tokens"):
            check_count(f"EngineSettings.{name}", getattr(self, name))
        check_range("EngineSettings.batch_wait_ms", self.batch_wait_ms, low=0.0)


class _RowState(StoppingCriteria):
    """Called after every decoding step: publishes each row's newest tokens and stops finished rows.

    ``start`` is where the new tokens begin in ``generate``'s running ``input_ids`` (the padded
    input length: the bank shows stopping criteria the input ids also with soft prompts).
    """

    def __init__(self, engine: "BatchingEngine", requests: list[Request], start: int,
                 logprobs: Logprobs | None = None) -> None:
        self.engine, self.requests, self.start, self.logprobs = engine, requests, start, logprobs

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if self.logprobs is not None:  # the step's tokens are chosen: their log-probs, before a row finishes
            self.logprobs.finish(input_ids[:, -1])
        new = input_ids[:, self.start:].tolist()
        for i, req in enumerate(self.requests):
            if req.finish_reason is None and req.cancelled:
                self.engine._finish(req, "cancelled")
            elif req.finish_reason is None:
                self.engine._advance(req, new[i])
        return torch.tensor([r.finish_reason is not None for r in self.requests], device=input_ids.device)


class BatchingEngine(QueueWorker):
    """Runs :class:`Request` objects on an :class:`~prefixtune.bank.AdapterBank` in micro-batches.

    Args:
        bank: the adapter bank (decoder-only model).
        tokenizer: its tokenizer (EOS, padding, decoding for stop strings).
        settings: :class:`EngineSettings`.
    """

    def __init__(self, bank: Any, tokenizer: Any, settings: EngineSettings | None = None) -> None:
        self.bank, self.tokenizer = bank, tokenizer
        self.settings = settings or EngineSettings()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.outputs = Outputs(tokenizer, self.eos_id)
        super().__init__(self.settings.max_queue)
        self._busy = 0
        self.batches: list[int] = []  # sizes of the batches run (for tests and benchmarks)

    @property
    def busy(self) -> bool:
        """A batch is running."""
        return self._busy > 0

    @property
    def taken(self) -> int:
        """Requests taken from the queue so far."""
        return sum(self.batches)

    def submit(self, req: Request) -> None:
        """Queue ``req``. Raises ShuttingDown or Overloaded (see :meth:`QueueWorker.enqueue`)."""
        self.enqueue(req)

    def cancel(self, req: Request) -> None:
        """The client is gone: drop ``req`` if it waits; a running row stops at its next step."""
        req.cancel()
        with self._cv:
            if any(r is req for r in self._queue):
                self._queue = deque(r for r in self._queue if r is not req)
                self._finish(req, "cancelled")

    # ------------------------------------------------------------------ worker

    def _take(self) -> list[Request] | None:
        s = self.settings
        with self._cv:
            while not self._queue:
                if self._stopping:
                    return None
                self._cv.wait(0.1)
            deadline = time.monotonic() + s.batch_wait_ms / 1000.0
            while s.policy != "none" and len(self._queue) < s.max_batch_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            first = self._queue[0]
            limit = 1 if s.policy == "none" else s.max_batch_size
            chosen = [first] if first.seed is not None else [  # a seeded request runs alone
                r for r in self._queue if r.seed is None and r.sampling == first.sampling
                and (s.policy != "same" or r.adapter == first.adapter)][:limit]
            for r in chosen:
                self._queue.remove(r)
            self._busy += 1
            return chosen

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._generate(batch)
            except Exception as e:  # report to the clients, keep serving
                for r in batch:
                    if r.finish_reason is None:
                        self._finish(r, "error", error=e)
            finally:
                with self._cv:
                    self._busy -= 1

    def _generate(self, batch: list[Request]) -> None:
        self.batches.append(len(batch))
        n = max(len(r.input_ids) for r in batch)
        ids = torch.full((len(batch), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(batch), n, dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, n - len(r.input_ids):] = torch.tensor(r.input_ids)
            mask[i, n - len(r.input_ids):] = 1
        device = self.bank.device
        do_sample, temperature, top_p = batch[0].sampling
        processors = LogitsProcessorList()
        if any(r.presence_penalty or r.frequency_penalty for r in batch):
            processors.append(Penalties([r.presence_penalty for r in batch], [r.frequency_penalty for r in batch]))
        recorder = None
        if any(r.logprobs is not None for r in batch):  # after the penalties: the log-probs sampled from
            recorder = Logprobs([r.logprobs for r in batch], [r.token_logprobs for r in batch])
            processors.append(recorder)
        state = _RowState(self, batch, n, recorder)  # stopping criteria see input ids + new tokens, prompts or not
        kwargs = dict(max_new_tokens=max(r.max_new_tokens for r in batch), do_sample=do_sample,
                      pad_token_id=self.pad_id, eos_token_id=None,  # EOS is handled per request in _advance
                      stopping_criteria=StoppingCriteriaList([state]), logits_processor=processors)
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        with seeded(batch[0].seed, device):
            out = self.bank.generate([r.adapter for r in batch], input_ids=ids.to(device),
                                     attention_mask=mask.to(device), **kwargs)
        new = out[:, n:].tolist()  # the bank returns input ids + new tokens in both cases
        for i, r in enumerate(batch):
            if r.finish_reason is None:
                self._advance(r, new[i])
            if r.finish_reason is None:
                self._finish(r, "length")

    # ------------------------------------------------------------------ per-request bookkeeping

    def _advance(self, req: Request, row: list[int]) -> None:
        """Take the row's tokens generated so far; publish what is new; decide if it is done."""
        self.outputs.advance(req, row)

    def _finish(self, req: Request, reason: str, error: Exception | None = None) -> None:
        self.outputs.finish(req, reason, error)
