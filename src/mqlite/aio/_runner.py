"""Where the asyncio front end runs storage work: a small worker pool per broker handle.

Anything that can block on the disk (a write transaction, which fsyncs under
``durability="sync"``; opening the broker; reads of many records) runs in the
handle's :class:`Runner` threads, never on the event loop thread.  The pool is
small (:data:`WORKERS` threads, started on demand) because waiting never holds
a worker: waits go through doorbells (:mod:`mqlite.aio._bell`).

A call is a :class:`Job`: an :class:`~mqlite.aio._future.InlineFuture` that
carries the function and its arguments through a :class:`queue.SimpleQueue`
to an idle worker, which hands the outcome back with one
``call_soon_threadsafe``; the awaiting task then resumes inside that callback.
Against ``loop.run_in_executor`` this saves a ``concurrent.futures.Future``,
the chaining of two futures and one loop iteration per call: an empty call's
round trip went from 110-139 µs to 51-72 µs at p50 here (D48).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from mqlite.aio._future import InlineFuture
from mqlite.errors import ClosedError

__all__ = ["WORKERS", "Job", "Runner"]

#: Worker threads per broker handle (started on demand, kept until close).
WORKERS = 4

_P = ParamSpec("_P")
_R = TypeVar("_R")


class Job(InlineFuture[Any]):
    """One call for a worker thread, and the future of its outcome (loop thread only).

    Cancelling the job (or the task awaiting it) does not stop a call that
    already started (a thread cannot be interrupted): it finishes in the
    background.  :meth:`outcome_later` gives a future of that outcome.
    """

    __slots__ = ("_later", "_outcome", "args", "fn", "skip")

    def __init__(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any],
                 args: tuple[Any, ...], skip: bool) -> None:
        super().__init__(loop)
        self.fn = fn
        self.args = args
        self.skip = skip  # not started yet when cancelled: do not run it at all
        self._later: asyncio.Future[Any] | None = None
        self._outcome: tuple[bool, Any] | None = None  # kept once cancelled

    def outcome_later(self) -> asyncio.Future[Any]:
        """After this job was cancelled: a future of the call's outcome.

        Resolved on the loop thread when the worker finishes the call (it
        always runs; see :meth:`Runner.submit`), or at once if it already
        has.  On a job that is not cancelled, the job itself.
        """
        if not self.cancelled():
            return self
        if self._later is None:
            self._later = self._on.create_future()
            if self._outcome is not None:
                _settle(self._later, *self._outcome)
        return self._later

    def hand_back(self, ok: bool, value: Any) -> None:
        """Called by the worker thread: deliver the outcome on the loop thread."""
        try:
            self._on.call_soon_threadsafe(self._finish, ok, value)
        except RuntimeError:  # the loop is closed: nobody awaits the outcome any more
            pass

    def _finish(self, ok: bool, value: Any) -> None:
        """The worker's outcome, on the loop thread."""
        if not self.done():
            _settle(self, ok, value)
            return
        # Cancelled before the outcome arrived (perhaps with the outcome already on
        # its way): kept for outcome_later(), whenever that is asked.
        self._outcome = (ok, value)
        if self._later is not None and not self._later.done():
            _settle(self._later, ok, value)


def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class Runner:
    """Runs blocking calls of one broker handle in its worker threads."""

    def __init__(self) -> None:
        self.closed = False
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # workers waiting for a job and not yet promised one
        self._threads: list[threading.Thread] = []

    async def run(self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """``await fn(*args, **kwargs)`` in a worker thread.

        Cancelling the awaiting task before the call started means it never
        runs; once started, it finishes in the background, as a blocking
        call interrupted by a signal would.

        Raises
        ------
        ClosedError
            The handle is closed.
        """
        if kwargs:
            call: Callable[..., _R] = lambda: fn(*args, **kwargs)
            return await self._put(call, (), True)
        return await self._put(fn, args, True)

    def call(self, fn: Callable[..., Any], *args: Any) -> Job:
        """As :meth:`run`, but returns the job at once (await it), so the loop can do
        other work while the call runs.

        Raises
        ------
        ClosedError
            The handle is closed.
        """
        return self._put(fn, args, True)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Job:
        """Start ``fn(*args)`` in a worker thread; the job (a future of its outcome).

        The call runs even when the job is cancelled first (a round whose
        outcome must be undone: see :meth:`Job.outcome_later`).

        Raises
        ------
        ClosedError
            The handle is closed.
        """
        return self._put(fn, args, False)

    def _put(self, fn: Callable[..., Any], args: tuple[Any, ...], skip: bool) -> Job:
        if self.closed:
            raise _closed()
        job = Job(asyncio.get_running_loop(), fn, args, skip)
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                start = False
            else:
                start = len(self._threads) < WORKERS
        self._jobs.put(job)
        if start:
            t = threading.Thread(target=self._work, name="mqlite-aio", daemon=True)
            self._threads.append(t)
            t.start()
        return job

    def _work(self) -> None:
        get = self._jobs.get
        lock = self._lock
        while True:
            job = get()
            if job is None:
                return
            if not (job.skip and job.cancelled()):
                try:
                    value = job.fn(*job.args)
                except BaseException as exc:  # noqa: BLE001  (handed to the awaiting task)
                    job.hand_back(False, exc)
                else:
                    job.hand_back(True, value)
            job = None  # drop the reference while idle
            with lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Stop the workers once the calls queued before return (does not wait)."""
        if self.closed:
            return
        self.closed = True
        for _ in self._threads:
            self._jobs.put(None)


def _closed() -> ClosedError:
    return ClosedError("this broker handle is closed; call mqlite.aio.open() again")
