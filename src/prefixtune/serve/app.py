"""The OpenAI-compatible HTTP API (FastAPI): models, completions, chat completions, admin, health.

``model`` in a request names an adapter, or the base model for no adapter. Errors use OpenAI's
JSON shape ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

from prefixtune.extras import require

require("fastapi", "serve", "server")  # before the imports below, so that a missing fastapi names the extra
from fastapi import FastAPI, Request as HTTPRequest  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse, StreamingResponse  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

from prefixtune.runtime.bank import AdapterBank, UnknownAdapterError
from prefixtune.serve.engine import BatchingEngine, Overloaded, Request, ShuttingDown


@dataclass
class ServerSettings:
    """Fields: ``base_name`` (the model id for no adapter), ``api_key`` (None = open),
    ``admin_key`` (None = admin endpoints off), ``max_prompt_tokens``, ``max_tokens`` (per
    request), ``default_max_tokens``."""

    base_name: str = "base"
    api_key: str | None = None
    admin_key: str | None = None
    max_prompt_tokens: int = 2048
    max_tokens: int = 512
    default_max_tokens: int = 16


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param


def _error(status: int, message: str, kind: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stream: bool = False
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=1)
    ignore_eos: bool = False  # vLLM's extension: keep generating past EOS (benchmarks)


class CompletionBody(_Body):
    prompt: str | list[str]


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | None = ""


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class LoadBody(BaseModel):
    name: str = Field(min_length=1)
    path: str = Field(min_length=1)
    replace: bool = False


def create_app(engine: BatchingEngine, settings: ServerSettings) -> FastAPI:
    """The FastAPI application; starts the engine's worker with the app and drains it at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, engine.stop)

    app = FastAPI(title="prefixtune", lifespan=lifespan)
    _add_error_handlers(app)
    _add_info_routes(app, engine, settings)
    _add_completion_routes(app, engine, settings)
    _add_admin_routes(app, engine.bank, settings)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error, ours, a request that fails validation, or starlette's (404, 405), in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def _api_error(_: HTTPRequest, e: APIError) -> JSONResponse:
        return _error(e.status, e.message, e.kind, e.code, e.param)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: HTTPRequest, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return _error(400, f"invalid request: {where or 'body'}: {first.get('msg', 'malformed')}",
                      "invalid_request_error", param=where or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: HTTPRequest, e: StarletteHTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail), "invalid_request_error")


def _check_key(request: HTTPRequest, key: str | None, admin: bool = False) -> None:
    """Raises :class:`APIError` unless the request carries ``Authorization: Bearer <key>``; ``key``
    None means open, except for the admin endpoints (``admin``), which it turns off (403)."""
    if admin and key is None:
        raise APIError(403, "admin endpoints are disabled (start the server with --admin-key)", "permission_error")
    if key is None:
        return
    auth = request.headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else ""
    if not secrets.compare_digest(given.encode(), key.encode()):
        raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                       "authentication_error", "invalid_api_key")


def _add_info_routes(app: FastAPI, engine: BatchingEngine, settings: ServerSettings) -> None:
    """``GET /health`` (open) and ``GET /v1/models`` (the base model and every adapter)."""
    bank = engine.bank

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "adapters": len(bank.adapters), "queued": engine.queued}

    @app.get("/v1/models")
    async def models(request: HTTPRequest) -> dict[str, Any]:
        _check_key(request, settings.api_key)
        now = int(time.time())
        ids = [settings.base_name] + bank.names()
        return {"object": "list", "data": [{"id": i, "object": "model", "created": now, "owned_by": "prefixtune"}
                                           for i in ids]}


def _adapter_of(bank: AdapterBank, settings: ServerSettings, model: str) -> str | None:
    """The adapter a request's ``model`` names (None for the base model); 404 for an unknown one."""
    if model == settings.base_name:
        return None
    if model not in bank.adapters:
        raise APIError(404, f"the model {model!r} does not exist (known: {[settings.base_name] + bank.names()})",
                       "invalid_request_error", "model_not_found", "model")
    return model


async def _submit(engine: BatchingEngine, settings: ServerSettings, body: _Body, prompt_ids: list[int],
                  max_tokens: int | None) -> tuple[Request, str | None]:
    """Check a request against the limits and queue it on the engine: ``(request, adapter)``."""
    tokenizer = engine.tokenizer
    adapter = _adapter_of(engine.bank, settings, body.model)
    if len(prompt_ids) > settings.max_prompt_tokens:
        raise APIError(400, f"the prompt has {len(prompt_ids)} tokens; the limit is {settings.max_prompt_tokens}",
                       param="prompt", code="context_length_exceeded")
    limit = max_tokens or settings.default_max_tokens
    if limit > settings.max_tokens:
        raise APIError(400, f"max_tokens {limit} exceeds the limit of {settings.max_tokens}", param="max_tokens")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    loop = asyncio.get_running_loop()
    req = Request(adapter, prompt_ids or [tokenizer.bos_token_id or tokenizer.eos_token_id], limit,
                  body.temperature, body.top_p, stops, ignore_eos=body.ignore_eos, loop=loop,
                  stream=asyncio.Queue() if body.stream else None, done=loop.create_future())
    try:
        engine.submit(req)
    except Overloaded as e:
        raise APIError(429, str(e), "rate_limit_error", "overloaded") from None
    except ShuttingDown as e:
        raise APIError(503, str(e), "server_error", "shutting_down") from None
    return req, adapter


def _usage(req: Request) -> dict[str, int]:
    return {"prompt_tokens": len(req.input_ids), "completion_tokens": len(req.tokens),
            "total_tokens": len(req.input_ids) + len(req.tokens)}


async def _stream(req: Request, chunk: Any) -> AsyncIterator[str]:
    """Server-sent events: ``chunk(delta, None)`` per piece of text, ``chunk('', finish_reason)``, ``[DONE]``."""
    while True:
        delta = await req.stream.get()
        if delta is None:
            break
        yield f"data: {json.dumps(chunk(delta, None))}\n\n"
    await req.done
    yield f"data: {json.dumps(chunk('', req.finish_reason))}\n\n"
    yield "data: [DONE]\n\n"


def _chat_prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The token ids of a chat: the tokenizer's chat template, or ``role: content`` lines without one."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else list(ids)
    else:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        ids = tokenizer(text)["input_ids"]
    return list(ids)


def _add_completion_routes(app: FastAPI, engine: BatchingEngine, settings: ServerSettings) -> None:
    """``POST /v1/completions`` and ``POST /v1/chat/completions``, whole or streamed."""
    tokenizer = engine.tokenizer

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: HTTPRequest) -> Any:
        _check_key(request, settings.api_key)
        prompt = body.prompt if isinstance(body.prompt, str) else "".join(body.prompt[:1])
        if isinstance(body.prompt, list) and len(body.prompt) != 1:
            raise APIError(400, "only one prompt per request is supported", param="prompt")
        req, _ = await _submit(engine, settings, body, tokenizer(prompt)["input_ids"], body.max_tokens)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text: str, reason: str | None) -> dict[str, Any]:
            return {"id": rid, "object": "text_completion", "created": created, "model": body.model,
                    "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}]}

        if body.stream:
            return StreamingResponse(_stream(req, chunk), media_type="text/event-stream")
        await req.done
        out = chunk(req.text, req.finish_reason)
        out["usage"] = _usage(req)
        return out

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody, request: HTTPRequest) -> Any:
        _check_key(request, settings.api_key)
        ids = _chat_prompt_ids(tokenizer, [{"role": m.role, "content": m.content or ""} for m in body.messages])
        req, _ = await _submit(engine, settings, body, ids, body.max_completion_tokens or body.max_tokens)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text: str, reason: str | None) -> dict[str, Any]:
            delta: dict[str, Any] = {"content": text} if text or reason is None else {}
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": body.model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}

        if body.stream:
            return StreamingResponse(_stream(req, chunk), media_type="text/event-stream")
        await req.done
        return {"id": rid, "object": "chat.completion", "created": created, "model": body.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": req.text},
                             "logprobs": None, "finish_reason": req.finish_reason}],
                "usage": _usage(req)}


def _add_admin_routes(app: FastAPI, bank: AdapterBank, settings: ServerSettings) -> None:
    """``POST /admin/adapters`` (load) and ``DELETE /admin/adapters/{name}`` (unload), behind the admin key."""

    @app.post("/admin/adapters")
    async def load_adapter(body: LoadBody, request: HTTPRequest) -> dict[str, Any]:
        _check_key(request, settings.admin_key, admin=True)
        if body.name == settings.base_name:
            raise APIError(400, f"{body.name!r} is the base model's name", param="name")
        try:
            await asyncio.get_running_loop().run_in_executor(None, lambda: bank.add(body.name, body.path, body.replace))
        except ValueError as e:  # includes CheckpointError and ShapeMismatchError
            raise APIError(400, str(e), param="path") from None
        return {"loaded": body.name, "adapters": bank.names()}

    @app.delete("/admin/adapters/{name}")
    async def unload_adapter(name: str, request: HTTPRequest) -> dict[str, Any]:
        _check_key(request, settings.admin_key, admin=True)
        try:
            bank.remove(name)
        except UnknownAdapterError as e:
            raise APIError(404, str(e), code="model_not_found") from None
        return {"unloaded": name, "adapters": bank.names()}
