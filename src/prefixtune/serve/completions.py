"""``POST /v1/completions`` and ``POST /v1/chat/completions``, whole or streamed (server-sent events).

Tokenizing (and applying a chat template) runs in a thread, never on the event loop, so that a
long prompt does not stall other clients. ``max_tokens`` defaults to 16 for completions (OpenAI's
legacy default) and to the server's ``max_tokens`` limit for chats (OpenAI's: until EOS or the
limit). An error while streaming ends the stream with an ``{"error": ...}`` event and ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, AsyncIterator, Callable

from prefixtune.extras import require

require("fastapi", "serve", "server")  # before the imports below, so that a missing fastapi names the extra
from fastapi import FastAPI  # noqa: E402
from fastapi import Request as HTTPRequest  # noqa: E402
from fastapi.responses import StreamingResponse  # noqa: E402

from prefixtune.runtime.bank import UnknownAdapterError  # noqa: E402
from prefixtune.serve.request import ContextTooLong, Overloaded, Request, ShuttingDown  # noqa: E402
from prefixtune.serve.errors import ERROR_RESPONSES, RETRY_AFTER_S, APIError, error_body  # noqa: E402
from prefixtune.serve.protocol import ChatBody, ChatCompletion, Completion, CompletionBody, GenerationBody  # noqa: E402

#: the 200 of a completion route: JSON, or server-sent events when ``stream`` is true
_EVENT = {"type": "object", "required": ["data"],  # one event (OpenAPI < 3.2: `schema` is per event)
          "properties": {"data": {"type": "string", "description": "a JSON chunk, a JSON error or [DONE]"}}}
_OK = {200: {"content": {"text/event-stream": {"schema": _EVENT}},
             "description": "the completion (JSON), or server-sent events of chunks when stream is true"}}
RESPONSES = {**_OK, **{s: ERROR_RESPONSES[s] for s in (400, 401, 404, 413, 429, 500, 503)}}


def _chat_prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The token ids of a chat: the tokenizer's chat template, or ``role: content`` lines without one."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else list(ids)
    else:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        ids = tokenizer(text)["input_ids"]
    return list(ids)


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class Generation:
    """One request's path through the server: checked against the limits, queued, awaited.

    ``prompt_tokens`` is the prompt's real length (0 for an empty prompt, which generation starts
    from BOS instead).
    """

    def __init__(self, engine: Any, settings: Any, body: GenerationBody, prompt_ids: list[int],
                 max_tokens: int) -> None:
        self.engine, self.settings, self.body = engine, settings, body
        self.prompt_tokens = len(prompt_ids)
        adapter = settings.adapter_of(engine.bank, body.model)
        if len(prompt_ids) > settings.max_prompt_tokens:
            raise APIError(400, f"the prompt has {len(prompt_ids)} tokens; the limit is {settings.max_prompt_tokens}",
                           param="prompt", code="context_length_exceeded")
        if max_tokens > settings.max_tokens:
            raise APIError(400, f"max_tokens {max_tokens} exceeds the limit of {settings.max_tokens}",
                           param="max_tokens")
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        tok = engine.tokenizer
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        loop = asyncio.get_running_loop()
        self.req = Request(adapter, prompt_ids or [start], max_tokens, body.temperature, body.top_p, stops,
                           ignore_eos=body.ignore_eos, seed=body.seed, presence_penalty=body.presence_penalty,
                           frequency_penalty=body.frequency_penalty, logprobs=body.top_logprobs_count, loop=loop,
                           stream=asyncio.Queue() if body.stream else None, done=loop.create_future())
        try:
            engine.submit(self.req)
        except Overloaded as e:
            raise APIError(429, str(e), "rate_limit_error", "overloaded",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except ShuttingDown as e:
            raise APIError(503, str(e), "server_error", "shutting_down",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except ContextTooLong as e:
            raise APIError(400, str(e), param="max_tokens", code="context_length_exceeded") from None
        except UnknownAdapterError as e:
            raise APIError(404, str(e), code="model_not_found", param="model") from None

    def usage(self) -> dict[str, int]:
        n, m = self.prompt_tokens, len(self.req.tokens)
        return {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m}

    async def result(self, disconnected: Callable[[], Any] | None = None) -> Request:
        """The finished request; a 500 in OpenAI's shape if generation failed. ``disconnected``
        (an async predicate, polled every 0.5 s) cancels the request once the client is gone."""
        while disconnected is not None and not self.req.done.done():
            await asyncio.wait({self.req.done}, timeout=0.5)
            if not self.req.done.done() and await disconnected():
                self.engine.cancel(self.req)
                break
        try:
            return await self.req.done
        except Exception as e:
            raise APIError(500, f"generation failed ({type(e).__name__}: {e})", "server_error",
                           "generation_failed") from None

    async def events(self, chunk: Callable[[str, str | None], dict[str, Any]],
                     first: dict[str, Any] | None = None) -> AsyncIterator[str]:
        """Server-sent events: ``first`` (if any), ``chunk(delta, None)`` per piece of text,
        ``chunk('', finish_reason)``, ``[DONE]``; on a failure an ``{"error": ...}`` event, ``[DONE]``."""
        req = self.req
        if first is not None:
            yield _event(first)
        try:
            while True:
                delta = await req.stream.get()
                if delta is None:
                    break
                yield _event(chunk(delta, None))
        finally:  # the client went away mid-stream (the response task is cancelled): free the row now
            if req.finish_reason is None:
                self.engine.cancel(req)
        try:
            await self.result()
        except APIError as e:
            yield _event(error_body(e.message, e.kind, e.code, e.param))
        else:
            yield _event(chunk("", req.finish_reason))
            options = self.body.stream_options
            if options is not None and options.include_usage:  # as OpenAI: a last chunk without choices
                yield _event({**chunk("", None), "choices": [], "usage": self.usage()})
        yield "data: [DONE]\n\n"


def _pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    return [tokenizer.decode([i], skip_special_tokens=True) for i in ids]


def completion_logprobs(tokenizer: Any, req: Request) -> dict[str, Any]:
    """The legacy completions format of ``req``'s log-probs: ``tokens`` (each token's text),
    ``token_logprobs``, ``top_logprobs`` (text -> log-prob) and ``text_offset`` (where each token
    starts in the completion's text, from 0)."""
    steps = req.token_logprobs[:len(req.tokens)]
    offsets = [len(tokenizer.decode(req.tokens[:j], skip_special_tokens=True)) for j in range(len(steps))]
    return {"tokens": _pieces(tokenizer, req.tokens[:len(steps)]),
            "token_logprobs": [chosen for chosen, _ in steps],
            "top_logprobs": [dict(zip(_pieces(tokenizer, [t for t, _ in top]), [v for _, v in top]))
                             for _, top in steps],
            "text_offset": offsets}


def chat_logprobs(tokenizer: Any, req: Request) -> dict[str, Any]:
    """OpenAI's chat format of ``req``'s log-probs: ``{"content": [{"token", "logprob", "bytes",
    "top_logprobs": [{"token", "logprob", "bytes"}, ...]}, ...]}`` (bytes: the text's UTF-8)."""

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    content = []
    for piece, (chosen, top) in zip(_pieces(tokenizer, req.tokens), req.token_logprobs):
        tops = [entry(p, v) for p, (_, v) in zip(_pieces(tokenizer, [t for t, _ in top]), top)]
        content.append({**entry(piece, chosen), "top_logprobs": tops})
    return {"content": content}


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _streamed(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream")


def add_completion_routes(app: FastAPI, engine: Any, settings: Any) -> None:
    """The two completion routes on ``app`` (``settings``: a :class:`~prefixtune.serve.app.ServerSettings`)."""
    tokenizer = engine.tokenizer

    @app.post("/v1/completions", response_model=Completion, responses=RESPONSES)
    async def completions(body: CompletionBody, request: HTTPRequest) -> Any:
        body.checked()
        prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        ids = (await _in_thread(tokenizer, prompt))["input_ids"]
        gen = Generation(engine, settings, body, list(ids), body.max_tokens or settings.default_max_tokens)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text: str, reason: str | None) -> dict[str, Any]:
            return {"id": rid, "object": "text_completion", "created": created, "model": body.model,
                    "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}]}

        if body.stream:
            return _streamed(gen.events(chunk))
        req = await gen.result(request.is_disconnected)
        out = {**chunk(req.text, req.finish_reason), "usage": gen.usage()}
        if body.logprobs is not None:
            out["choices"][0]["logprobs"] = completion_logprobs(tokenizer, req)
        return out

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses=RESPONSES)
    async def chat(body: ChatBody, request: HTTPRequest) -> Any:
        body.checked()
        messages = [{"role": m.role, "content": m.content or ""} for m in body.messages]
        ids = await _in_thread(_chat_prompt_ids, tokenizer, messages)
        gen = Generation(engine, settings, body, ids, body.max_completion_tokens or body.max_tokens
                         or settings.max_tokens)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text: str, reason: str | None, delta: dict[str, Any] | None = None) -> dict[str, Any]:
            if delta is None:
                delta = {"content": text} if text or reason is None else {}
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": body.model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}

        if body.stream:
            return _streamed(gen.events(chunk, first=chunk("", None, {"role": "assistant", "content": ""})))
        req = await gen.result(request.is_disconnected)
        return {"id": rid, "object": "chat.completion", "created": created, "model": body.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": req.text},
                             "logprobs": chat_logprobs(tokenizer, req) if body.logprobs else None,
                             "finish_reason": req.finish_reason}],
                "usage": gen.usage()}
