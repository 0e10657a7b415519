"""One completion request, and the bookkeeping every engine shares: taking a row's new tokens,
publishing text to a streaming client, finishing with a reason or an error.

The engines run in a worker thread; a request's ``loop`` is the server's event loop, so results
reach the client through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from prefixtune.evaluation.evaluate import GREEDY_BELOW
from prefixtune.serve.detok import TextStream


class Overloaded(RuntimeError):
    """The queue is full; the client should retry later (HTTP 429)."""


class ShuttingDown(RuntimeError):
    """The server is draining; no new work is accepted (HTTP 503)."""


class ContextTooLong(ValueError):
    """The prompt, the adapter's virtual tokens and ``max_tokens`` do not fit the model's context (HTTP 400)."""


@dataclass
class Request:
    """One completion: inputs, decoding settings, and where its tokens go. A ``temperature``
    below :data:`~prefixtune.evaluation.evaluate.GREEDY_BELOW` (1e-5) decodes greedily (dividing
    logits by 1e-300 would overflow). A ``seed`` makes the sampled tokens depend on nothing but the
    request; ``presence_penalty`` and ``frequency_penalty`` are OpenAI's; ``logprobs`` (the number
    of top tokens, 0 for the chosen one only, None for none) fills ``token_logprobs``: per token
    ``(logprob, [(id, logprob)...])``, complete before the request finishes (it may hold steps past
    ``tokens``: cut it to them). ``cancelled`` is set (by :meth:`cancel`) when the client is gone.
    """

    adapter: str | None
    input_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    loop: asyncio.AbstractEventLoop | None = None
    stream: asyncio.Queue | None = None
    done: asyncio.Future | None = None
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    token_logprobs: list[tuple[float, list[tuple[int, float]]]] = field(default_factory=list)
    cancelled: bool = False
    error: Exception | None = None
    _text: TextStream | None = field(default=None, repr=False)

    @property
    def sampling(self) -> tuple[bool, float, float]:
        greedy = self.temperature < GREEDY_BELOW
        return (not greedy, 1.0 if greedy else self.temperature, 1.0 if greedy else self.top_p)

    def cancel(self) -> None:
        """Mark the request as abandoned: the engine drops it at its next step."""
        self.cancelled = True


class Outputs:
    """Per-request bookkeeping: EOS, token limits, stop strings, streaming, settling the future.

    Args:
        tokenizer: decodes tokens (incrementally, see :class:`~prefixtune.serve.detok.TextStream`).
        eos_id: the end-of-sequence token, or None.
    """

    def __init__(self, tokenizer: Any, eos_id: int | None) -> None:
        self.tokenizer, self.eos_id = tokenizer, eos_id

    def _stream_of(self, req: Request) -> TextStream:
        if req._text is None:
            req._text = TextStream(self.tokenizer, req.stop)
        return req._text

    def advance(self, req: Request, row: list[int]) -> None:
        """Take the row's tokens generated so far (``row[len(req.tokens):]`` are new); publish
        the new text; finish the request at EOS, a stop string or its token limit."""
        for tok in row[len(req.tokens):]:
            if req.finish_reason is not None:
                return
            self.take(req, tok)

    def take(self, req: Request, tok: int) -> bool:
        """Take one new token; True once the request is finished."""
        if tok == self.eos_id and not req.ignore_eos:
            self.finish(req, "stop")
            return True
        req.tokens.append(tok)
        text = self._stream_of(req)
        text.push(tok)
        self._emit(req, text.publishable())
        if text.stopped:
            self.finish(req, "stop")
        elif len(req.tokens) >= req.max_new_tokens:
            self.finish(req, "length")
        return req.finish_reason is not None

    def _emit(self, req: Request, text: str) -> None:
        if len(text) > len(req.text) and text.startswith(req.text):
            delta, req.text = text[len(req.text):], text
            if req.stream is not None and req.loop is not None:
                req.loop.call_soon_threadsafe(req.stream.put_nowait, delta)

    def finish(self, req: Request, reason: str, error: Exception | None = None) -> None:
        """End ``req``: flush its remaining text, end its stream, settle its future (with
        ``error`` if given)."""
        if req.finish_reason is not None:
            return
        req.finish_reason, req.error = reason, error
        if error is None:
            self._emit(req, self._stream_of(req).final())
        if req.loop is not None:
            if req.stream is not None:
                req.loop.call_soon_threadsafe(req.stream.put_nowait, None)
            if req.done is not None:
                def settle(fut: asyncio.Future = req.done) -> None:
                    if fut.done():
                        return
                    if error is not None:
                        fut.set_exception(error)
                    else:
                        fut.set_result(req)
                req.loop.call_soon_threadsafe(settle)
