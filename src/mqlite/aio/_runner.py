"""Where the asyncio front end runs storage work: a small worker pool per broker handle.

Anything that can block on the disk (a write transaction, which fsyncs under
``durability="sync"``; opening the broker; reads of many records) runs in the
handle's :class:`Runner` pool, never on the event loop thread.  The pool is
small (:data:`WORKERS` threads, started on demand) because waiting never holds
a worker: waits go through doorbells (:mod:`mqlite.aio._bell`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from mqlite.errors import ClosedError

__all__ = ["WORKERS", "Runner"]

#: Worker threads per broker handle (started on demand, kept until close).
WORKERS = 4

_P = ParamSpec("_P")
_R = TypeVar("_R")


class Runner:
    """Runs blocking calls of one broker handle in its worker threads."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="mqlite-aio")
        self.closed = False

    async def run(self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """``await fn(*args, **kwargs)`` in a worker thread.

        Cancelling the awaiting task does not stop a call already running
        (a thread cannot be interrupted): it finishes in the background, as
        a blocking call interrupted by a signal would.
        """
        loop = asyncio.get_running_loop()
        call: Callable[[], _R] = functools.partial(fn, *args, **kwargs) if kwargs else (
            functools.partial(fn, *args))
        if self.closed:
            raise _closed()
        return await loop.run_in_executor(self.pool, call)

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Start ``fn(*args)`` in a worker thread; the asyncio future of its outcome."""
        loop = asyncio.get_running_loop()
        if self.closed:
            raise _closed()
        return loop.run_in_executor(self.pool, fn, *args)

    def shutdown(self) -> None:
        """Stop the workers once their current calls return (does not wait)."""
        self.closed = True
        self.pool.shutdown(wait=False)


def _closed() -> ClosedError:
    return ClosedError("this broker handle is closed; call mqlite.aio.open() again")
