"""The OpenAI-compatible HTTP API (FastAPI): models, completions, chat completions, admin, health.

``model`` in a request names an adapter, or the base model (``ServerSettings.base_name``) for no
adapter. Every route but ``/health`` takes the API key (``/docs`` and ``/openapi.json`` too; the
admin routes the admin key), checked before the body is read (:mod:`prefixtune.serve.guard`).
Errors use OpenAI's JSON shape ``{"error": {"message", "type", "param", "code"}}``
(:mod:`prefixtune.serve.errors`); the bodies are in :mod:`prefixtune.serve.protocol`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

from prefixtune.extras import require

require("fastapi", "serve", "server")  # before the imports below, so that a missing fastapi names the extra
from fastapi import FastAPI  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

from prefixtune.core.config import check_count  # noqa: E402
from prefixtune.runtime.bank import AdapterBank, UnknownAdapterError  # noqa: E402
from prefixtune.serve.completions import add_completion_routes  # noqa: E402
from prefixtune.serve.errors import ERROR_RESPONSES, RETRY_AFTER_S, APIError, add_error_handlers  # noqa: E402
from prefixtune.serve.guard import Guard  # noqa: E402
from prefixtune.serve.protocol import Health, LoadBody, Loaded, Model, ModelList, Unloaded  # noqa: E402


@dataclass
class ServerSettings:
    """What the HTTP layer enforces.

    Fields: ``base_name`` (the model id for no adapter), ``api_key`` (None = open), ``admin_key``
    (None = admin endpoints off), ``max_prompt_tokens``, ``max_tokens`` (the most a request may
    ask for, and a chat's default), ``default_max_tokens`` (a completion's default, 16 as OpenAI's),
    ``max_body_bytes`` (the largest request body read; 1 MiB, far above what ``max_prompt_tokens``
    of text take). Counts must be >= 1 (a ConfigError, a ValueError, naming the field).
    """

    base_name: str = "base"
    api_key: str | None = None
    admin_key: str | None = None
    max_prompt_tokens: int = 2048
    max_tokens: int = 512
    default_max_tokens: int = 16
    max_body_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        for name in ("max_prompt_tokens", "max_tokens", "default_max_tokens", "max_body_bytes"):
            check_count(f"ServerSettings.{name}", getattr(self, name))
        if not self.base_name:
            raise ValueError("ServerSettings.base_name must not be empty")

    def adapter_of(self, bank: AdapterBank, model: str) -> str | None:
        """The adapter a request's ``model`` names (None for the base model); 404 for an unknown one."""
        if model == self.base_name:
            return None
        if model not in bank.adapters:
            raise APIError(404, f"the model {model!r} does not exist (known: {[self.base_name] + bank.names()})",
                           "invalid_request_error", "model_not_found", "model")
        return model


def create_app(engine: Any, settings: ServerSettings) -> FastAPI:
    """The FastAPI application; starts the engine's worker with the app and drains it at shutdown.

    ``app.state.drain`` (a :class:`threading.Event`) set means shutting down: new requests get 503
    (:class:`~prefixtune.serve.thread.DrainingServer` sets it when uvicorn starts to shut down),
    as they do once the engine stops.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, engine.stop)

    app = FastAPI(title="prefixtune", lifespan=lifespan)
    app.state.drain = drain = threading.Event()

    def draining() -> bool:
        return drain.is_set() or engine.stopping

    app.add_middleware(Guard, api_key=settings.api_key, admin_key=settings.admin_key,
                       max_body_bytes=settings.max_body_bytes, draining=draining)
    add_error_handlers(app)
    _add_info_routes(app, engine, settings, draining)
    add_completion_routes(app, engine, settings)
    _add_admin_routes(app, engine.bank, settings)
    return app


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: ERROR_RESPONSES[s] for s in statuses}


def _add_info_routes(app: FastAPI, engine: Any, settings: ServerSettings, draining: Any) -> None:
    """``GET /health`` (open; 503 while draining), ``GET /v1/models`` and ``GET /v1/models/{id}``."""
    bank = engine.bank

    @app.get("/health", response_model=Health, responses={503: {"model": Health, "description": "draining"}})
    async def health() -> Any:
        body = {"status": "draining" if draining() else "ok", "adapters": len(bank.adapters), "queued": engine.queued}
        if body["status"] == "draining":
            return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
        return body

    def model(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": int(time.time()), "owned_by": "prefixtune"}

    @app.get("/v1/models", response_model=ModelList, responses=_responses(401, 413, 500, 503))
    async def models() -> Any:
        return {"object": "list", "data": [model(i) for i in [settings.base_name] + bank.names()]}

    @app.get("/v1/models/{model_id:path}", response_model=Model, responses=_responses(401, 404, 413, 500, 503))
    async def get_model(model_id: str) -> Any:
        settings.adapter_of(bank, model_id)  # 404 for an unknown one
        return model(model_id)


def _add_admin_routes(app: FastAPI, bank: AdapterBank, settings: ServerSettings) -> None:
    """``POST /admin/adapters`` (load) and ``DELETE /admin/adapters/{name}`` (unload), behind the admin key."""

    @app.post("/admin/adapters", response_model=Loaded, responses=_responses(400, 401, 403, 413, 500, 503))
    async def load_adapter(body: LoadBody) -> Any:
        if body.name == settings.base_name:
            raise APIError(400, f"{body.name!r} is the base model's name", param="name")
        try:
            await asyncio.get_running_loop().run_in_executor(None, lambda: bank.add(body.name, body.path, body.replace))
        except (ValueError, OSError) as e:  # ValueError includes CheckpointError and ShapeMismatchError
            raise APIError(400, f"cannot load {body.path!r}: {e}", param="path") from None
        return {"loaded": body.name, "adapters": bank.names()}

    @app.delete("/admin/adapters/{name}", response_model=Unloaded, responses=_responses(401, 403, 404, 413, 500, 503))
    async def unload_adapter(name: str) -> Any:
        try:
            bank.remove(name)
        except UnknownAdapterError as e:
            raise APIError(404, str(e), code="model_not_found") from None
        return {"unloaded": name, "adapters": bank.names()}
