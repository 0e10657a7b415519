"""What both serving engines share: a bounded queue of requests and one worker thread.

:class:`QueueWorker` owns the queue, its condition variable and the thread; an engine adds what it
does with the requests (its ``_run`` loop). ``stop`` refuses new requests, lets the worker finish
the queued and running ones, and joins it.
"""

from __future__ import annotations

import threading
from collections import deque

from prefixtune.serve.request import Overloaded, Request, ShuttingDown


class QueueWorker:
    """A queue of at most ``max_queue`` waiting requests and the thread that runs ``self._run``."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self._queue: deque[Request] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="prefixtune-engine", daemon=True)

    def _run(self) -> None:  # pragma: no cover - each engine has its own
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Refuse new requests, finish the queued and running ones, then end the worker."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called: new requests are refused."""
        return self._stopping

    @property
    def queued(self) -> int:
        return len(self._queue)

    def enqueue(self, req: Request) -> None:
        """Append ``req`` to the queue and wake the worker.

        Raises:
            ShuttingDown: :meth:`stop` was called.
            Overloaded: ``max_queue`` requests are waiting already (HTTP 429).
        """
        with self._cv:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise Overloaded(f"too many waiting requests ({self.max_queue}); retry later")
            self._queue.append(req)
            self._cv.notify()
