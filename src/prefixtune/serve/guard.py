"""The gate every request passes before routing or body parsing (an ASGI middleware).

In order: ``/health`` passes (it is open and reports draining itself); the API key is checked
(the admin key for ``/admin/...``; everything else, ``/docs`` and ``/openapi.json`` included,
takes the API key), so an unauthenticated client gets 401 without its body being read; a
draining server answers 503 with ``Retry-After``; then the body is read, at most
``max_body_bytes`` of it — a larger ``Content-Length`` is refused (413) before reading, and a
body without one (chunked) is refused as soon as it grows past the limit. Each refusal closes
the connection (``Connection: close``), so the rest of an unread body is never taken in.
"""

from __future__ import annotations

import secrets
from typing import Any, Awaitable, Callable

from prefixtune.serve.errors import RETRY_AFTER_S, APIError, error_response

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

OPEN_PATHS = ("/health",)


def check_key(headers: dict[str, str], key: str | None, admin: bool = False) -> None:
    """Raises :class:`APIError` unless ``headers`` carry ``Authorization: Bearer <key>``; ``key``
    None means open, except for the admin endpoints (``admin``), which it turns off (403)."""
    if admin and key is None:
        raise APIError(403, "admin endpoints are disabled (start the server with --admin-key)", "permission_error")
    if key is None:
        return
    auth = headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else ""
    if not secrets.compare_digest(given.encode(errors="replace"), key.encode()):
        raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                       "authentication_error", "invalid_api_key")


class Guard:
    """ASGI middleware: authentication, draining and the body-size limit (see the module docstring).

    Args:
        app: the ASGI app behind it.
        api_key, admin_key: as in :class:`~prefixtune.serve.app.ServerSettings`.
        max_body_bytes: the largest request body read.
        draining: says whether the server is shutting down.
    """

    def __init__(self, app: Any, api_key: str | None, admin_key: str | None, max_body_bytes: int,
                 draining: Callable[[], bool]) -> None:
        self.app, self.api_key, self.admin_key = app, api_key, admin_key
        self.max_body_bytes, self.draining = max_body_bytes, draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            admin = scope["path"] == "/admin" or scope["path"].startswith("/admin/")
            check_key(headers, self.admin_key if admin else self.api_key, admin=admin)
            if self.draining():
                raise APIError(503, "the server is shutting down; retry on another replica or later",
                               "server_error", "shutting_down", headers={"Retry-After": str(RETRY_AFTER_S)})
            body = await self._read_body(headers, receive)
        except APIError as e:  # the body may be unread: close the connection rather than drain it
            headers = {**e.headers, "Connection": "close"}
            await error_response(e.status, e.message, e.kind, e.code, e.param, headers)(scope, receive, send)
            return
        if body is None:  # the client went away
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes | None:
        """The whole body (None if the client disconnected); a 413 past ``max_body_bytes``."""
        limit = self.max_body_bytes
        too_large = APIError(413, f"the request body is larger than the limit of {limit} bytes",
                             code="request_too_large")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise too_large
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the app the body already read, then what the client sends next
    (a disconnect)."""
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
