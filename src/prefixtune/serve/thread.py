"""Run the server: :class:`DrainingServer` (uvicorn that answers 503 while shutting down) and
:class:`ServerThread`, a background thread on a free loopback port (tests, benchmarks, notebooks)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from prefixtune.extras import require

uvicorn = require("uvicorn", "serve", "server")


class DrainingServer(uvicorn.Server):
    """A uvicorn server that, once shutdown begins (SIGTERM, ``should_exit``), sets the app's
    ``state.drain`` so that requests still arriving on open connections get 503 with
    ``Retry-After`` while the running ones finish; the engine stops after them."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.config.app.state.drain.set()
        await super().shutdown(sockets)


class ServerThread:
    """``with ServerThread(app) as s:`` serves ``app`` on ``127.0.0.1:s.port`` until the block ends.

    Leaving the block stops accepting connections and lets running requests finish (as SIGTERM does).
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", start_timeout: float = 30.0) -> None:
        sock = socket.socket()
        sock.bind((host, 0))
        self.host, self.port = host, sock.getsockname()[1]
        sock.close()
        self.server = DrainingServer(uvicorn.Config(app, host=host, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.start_timeout = start_timeout

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(120)
