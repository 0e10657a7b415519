"""Errors in OpenAI's JSON shape ``{"error": {"message", "type", "param", "code"}}``, for every
failure: ours (:class:`APIError`), a body that fails validation, starlette's (404, 405) and any
unexpected exception (a catch-all 500), so that no client ever gets a plain-text error page.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from prefixtune.extras import require

require("fastapi", "serve", "server")  # before the imports below, so that a missing fastapi names the extra
from fastapi import FastAPI, Request as HTTPRequest  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

log = logging.getLogger(__name__)

#: seconds a client is told to wait (``Retry-After``) after a 429 or a 503
RETRY_AFTER_S = 1


class APIError(Exception):
    """An error answered as ``status`` with OpenAI's error body (and extra ``headers``)."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param
        self.headers = headers or {}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


#: ``responses=`` for the OpenAPI schema: what each error status means, all with :class:`ErrorResponse`
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text} for status, text in {
        400: "invalid request (the message and param say what)",
        401: "invalid or missing API key",
        403: "admin endpoints disabled",
        404: "unknown model, adapter or path",
        413: "request body too large",
        429: "too many waiting requests; retry after Retry-After seconds",
        500: "unexpected server error",
        503: "the server is shutting down; retry after Retry-After seconds",
    }.items()}


class ASCIIJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: an error message may quote client text holding lone surrogates,
    which UTF-8 cannot encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                   param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return ASCIIJSONResponse(error_body(message, kind, code, param), status_code=status, headers=headers)


def _field_path(body: Any, error: dict[str, Any]) -> list[str]:
    """The field a validation ``error`` is about, as the client wrote it (``messages.0.content``):
    its location with pydantic's union-member tags (``function-after[...]``, ``str``) left out."""
    loc, path, here = list(error.get("loc", ()))[1:], [], body  # loc[0] is "body"
    for i, step in enumerate(loc):
        if isinstance(here, dict) and step in here:
            here = here[step]
        elif isinstance(here, list) and isinstance(step, int) and 0 <= step < len(here):
            here = here[step]
        elif error.get("type") == "missing" and i == len(loc) - 1:
            pass  # the missing field itself
        else:
            continue
        path.append(str(step))
    return path


def add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape (see the module docstring)."""

    @app.exception_handler(APIError)
    async def _api_error(_: HTTPRequest, e: APIError) -> JSONResponse:
        return error_response(e.status, e.message, e.kind, e.code, e.param, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: HTTPRequest, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(_field_path(e.body, first))
        return error_response(400, f"invalid request: {where or 'body'}: {first.get('msg', 'malformed')}",
                              param=where or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: HTTPRequest, e: StarletteHTTPException) -> JSONResponse:
        return error_response(e.status_code, str(e.detail), headers=e.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: HTTPRequest, e: Exception) -> JSONResponse:
        log.error("unexpected error: %s: %s", type(e).__name__, e, exc_info=e)
        return error_response(500, f"internal error ({type(e).__name__})", "server_error", "internal_error")
