"""Continuous batching across adapters: the server's default engine.

A worker thread runs one loop. Each turn it (1) drops requests whose client is gone, (2) admits
waiting requests into a prefill group while there is room (``max_batch_size`` rows), (3) runs the
next chunk of that group's prompts (at most ``max_batch_tokens`` tokens with the decoding rows, so
a long prompt never stalls the running requests for more than one chunk), and when the group's
prompts are done moves its rows into the running batch with their first tokens, and (4) runs
one decoding step for every running row. A row leaves the moment it finishes (EOS, a stop string,
its token limit, a fault of its own, its client gone); its cache columns go with it.

Every row keeps its own adapter: a prefix is stored once per adapter (folded, in the bank) and
copied into the row's cache columns when the row joins; prompts enter as input embeddings. With
greedy decoding each row's output is the one it has alone (``tests/serve/test_continuous.py``).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch

from prefixtune.runtime.bank import UnknownAdapterError
from prefixtune.serve.batch import LOCATION, Model, Prefill, Row, Running
from prefixtune.serve.engine import EngineSettings
from prefixtune.serve.request import ContextTooLong, Outputs, Request
from prefixtune.serve.sampling import choose
from prefixtune.serve.worker import QueueWorker


class UnsupportedByEngine(ValueError):
    """The model cannot run in the continuous engine (encoder-decoder, no position ids)."""


class NonFiniteLogits(RuntimeError):
    """The request's next-token scores were NaN or infinite (a broken adapter, or overflow)."""


def _context_limit(model: Any, injection: Any) -> int | None:
    """Positions the model can take: a learned table's size, else ``max_position_embeddings``."""
    if injection.absolute_positions is not None:
        return int(injection.absolute_positions)
    limit = getattr(model.config, "max_position_embeddings", None)
    return int(limit) if limit else None


class ContinuousEngine(QueueWorker):
    """Runs :class:`~prefixtune.serve.request.Request` objects on an
    :class:`~prefixtune.runtime.bank.AdapterBank` with continuous batching.

    Args:
        bank: the adapter bank (decoder-only model).
        tokenizer: its tokenizer (EOS, padding, decoding).
        settings: :class:`~prefixtune.serve.engine.EngineSettings` (``max_batch_size`` running
            rows, ``max_batch_tokens`` per step, ``max_queue`` waiting requests).

    Raises:
        UnsupportedByEngine: an encoder-decoder model, or one that takes no position ids.
    """

    def __init__(self, bank: Any, tokenizer: Any, settings: EngineSettings | None = None) -> None:
        self.bank, self.tokenizer = bank, tokenizer
        self.settings = settings or EngineSettings(policy="continuous")
        injection = bank.injection
        if injection.is_encoder_decoder or not injection.takes_position_ids:
            raise UnsupportedByEngine(f"the continuous engine serves decoder-only models; "
                                      f"{injection.layout.model_type} needs --batching mixed")
        shape = next(s for s in injection.layout.locations if s.location == LOCATION)
        model = bank.base_model
        param = next(model.parameters())
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.model = Model(model, {layer: injection.modules[(LOCATION, layer)] for layer in range(shape.num_layers)},
                           shape.num_kv_heads, shape.head_dim, param.dtype, param.device, self.pad_id,
                           injection.position_base, compile=self.settings.compile)
        self.limit = _context_limit(model, injection)
        self.outputs = Outputs(tokenizer, self.eos_id)
        super().__init__(self.settings.max_queue)
        self.running = Running(self.model)
        self._prefilling: Prefill | None = None
        self.steps: list[int] = []  # rows per decoding step (for tests and benchmarks)
        self.prefills: list[int] = []  # rows per prefill group
        self.taken = 0  # requests taken from the queue so far

    # ------------------------------------------------------------------ the server's side

    @property
    def busy(self) -> bool:
        """Requests are being prefilled or decoded."""
        return bool(self.running.rows) or self._prefilling is not None

    @property
    def idle(self) -> bool:
        """Nothing waits, prefills or runs."""
        return not self._queue and not self.running.rows and self._prefilling is None

    def check(self, req: Request) -> Any:
        """The request's adapter, resolved (None for the bare model); a request that does not fit
        the model's context with it is refused.

        Raises:
            UnknownAdapterError: no adapter of that name.
            ContextTooLong: prompt + the adapter's virtual tokens + ``max_new_tokens`` > the limit.
        """
        adapter = self.bank._resolve(req.adapter, 1)
        if self.limit is None:
            return adapter
        shift = adapter.shift if adapter is not None else 0
        virtual = adapter.prompt.shape[0] if adapter is not None and adapter.prompt is not None else 0
        need = self.model.position_base + shift + virtual + len(req.input_ids) + req.max_new_tokens
        if need > self.limit:
            raise ContextTooLong(
                f"this request needs {need} positions (a {len(req.input_ids)}-token prompt, {shift + virtual} for "
                f"the adapter's prefix or prompt, max_tokens {req.max_new_tokens}); the model has {self.limit}: "
                "shorten the prompt or lower max_tokens")
        return adapter

    def submit(self, req: Request) -> None:
        """Queue ``req`` (checked first: see :meth:`check`).

        Raises:
            ShuttingDown, Overloaded, ContextTooLong, UnknownAdapterError.
        """
        self.check(req)
        self.enqueue(req)

    def cancel(self, req: Request) -> None:
        """The client is gone: drop ``req`` now if it waits, at the next step if it runs."""
        req.cancel()
        with self._cv:
            self._cv.notify()

    # ------------------------------------------------------------------ the worker

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cv:
                    while self.idle:
                        if self._stopping:
                            return
                        self._cv.wait(0.1)
                self.turn()

    def turn(self) -> None:
        """One turn of the loop: drop cancelled requests, admit waiting ones, run a prefill chunk,
        run a decoding step (what the worker repeats; tests call it directly)."""
        with torch.inference_mode():
            self._drop_cancelled(self.running)
            if self._prefilling is None:
                self._prefilling = self._admit(len(self.running))
            if self._prefilling is not None:
                self._prefilling = self._prefill(self.running, self._prefilling)
            if self.running.rows:
                self._decode(self.running)

    def _admit(self, running: int) -> Prefill | None:
        """A prefill group of waiting requests that fit beside ``running`` rows, adapters resolved
        now (one unloaded meanwhile fails its own request)."""
        with self._cv:
            room = self.settings.max_batch_size - running
            taken = []
            while self._queue and len(taken) < room:
                taken.append(self._queue.popleft())
            self.taken += len(taken)
        rows = []
        with torch.inference_mode():
            for req in taken:
                if req.cancelled:
                    self.outputs.finish(req, "cancelled")
                    continue
                try:
                    adapter = self.check(req)
                except (UnknownAdapterError, ContextTooLong) as e:
                    self.outputs.finish(req, "error", error=e)
                    continue
                rows.append(Row(req, adapter, generator=self._generator(req)))
            if not rows:
                return None
            self.prefills.append(len(rows))
            return Prefill(self.model, rows, self.bank.base_model.get_input_embeddings())

    def _generator(self, req: Request) -> torch.Generator | None:
        if req.seed is None or not req.sampling[0]:
            return None
        gen = torch.Generator(device=self.model.device)
        gen.manual_seed(req.seed & 0xFFFF_FFFF_FFFF_FFFF)
        return gen

    def _prefill(self, running: Running, prefill: Prefill) -> Prefill | None:
        """Run one chunk of ``prefill``; once it is done, move its unfinished rows into ``running``."""
        budget = max(1, self.settings.max_batch_tokens - len(running))
        try:
            with torch.inference_mode():
                logits = prefill.step(max(1, budget // len(prefill.rows)))
        except Exception as e:  # a fault of the group's own: its requests fail, the running ones go on
            for row in prefill.rows:
                self.outputs.finish(row.req, "error", error=e)
            return None
        if logits is None:
            return prefill
        first = self._take(prefill.rows, logits)
        base = len(running)
        running.join(prefill, first)
        running.keep([i for i in range(base)] + [base + i for i, r in enumerate(prefill.rows)
                                                 if r.req.finish_reason is None])
        return None

    def _decode(self, running: Running) -> None:
        self.steps.append(len(running))
        try:
            with torch.inference_mode():
                logits = running.step()
        except Exception as e:  # the model failed for the whole batch: every running request gets the error
            for row in running.rows:
                self.outputs.finish(row.req, "error", error=e)
            running.keep([])
            return
        running.last = torch.tensor(self._take(running.rows, logits), dtype=torch.long, device=running.last.device)
        running.keep([i for i, r in enumerate(running.rows) if r.req.finish_reason is None])

    def _take(self, rows: list[Row], logits: torch.Tensor) -> list[int]:
        """Choose each row's next token and hand it to its request; a row whose logits are not
        finite fails alone."""
        with torch.inference_mode():
            chosen, bad = choose(logits, rows)
        for row, tok, broken in zip(rows, chosen, bad):
            if broken:
                self.outputs.finish(row.req, "error", error=NonFiniteLogits(
                    "the next-token scores were not finite (NaN or infinite): the adapter or the input is broken"))
            elif not row.req.cancelled:
                self.outputs.take(row.req, tok)
        return chosen

    def _drop_cancelled(self, running: Running) -> None:
        gone = [i for i, r in enumerate(running.rows) if r.req.cancelled]
        if gone:
            for i in gone:
                self.outputs.finish(running.rows[i].req, "cancelled")
            running.keep([i for i, r in enumerate(running.rows) if not r.req.cancelled])
        with self._cv:
            gone = [r for r in self._queue if r.cancelled]
            if gone:
                self._queue = deque(r for r in self._queue if not r.cancelled)
            for req in gone:
                self.outputs.finish(req, "cancelled")


def make_engine(bank: Any, tokenizer: Any, settings: EngineSettings) -> Any:
    """The engine ``settings.policy`` names: continuous batching, or micro-batching
    (:class:`~prefixtune.serve.engine.BatchingEngine`) for ``mixed``/``same``/``none``.

    Raises:
        UnsupportedByEngine: continuous batching asked for a model it cannot run.
    """
    from prefixtune.serve.engine import BatchingEngine

    if settings.policy == "continuous":
        return ContinuousEngine(bank, tokenizer, settings)
    return BatchingEngine(bank, tokenizer, settings)
