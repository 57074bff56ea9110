"""A light, thread-safe future for producer sends.

:class:`concurrent.futures.Future` builds a :class:`threading.Condition`
(an RLock plus Python-level bookkeeping) for every instance and wakes its
waiter through a second, per-wait lock.  A producer creates one future per
record, so that cost is paid on the hot path of every concurrent durable
send.  :class:`SendFuture` keeps one pre-acquired ``_thread`` lock as its
completion gate: ``result()`` blocks on it with the GIL released and the
flusher releases it once — one futex wake per waiting thread, nothing else
(docs/decisions.md D15).  The gate is made by the first thread that has to
wait: a future resolved before anyone waits (a thread that commits its own
record, D49) never allocates a lock (D78).

It offers the :class:`concurrent.futures.Future` methods callers use —
``result``, ``exception``, ``done``, ``cancel``, ``cancelled``, ``running``,
``add_done_callback`` — but it is not a ``concurrent.futures.Future``:
``concurrent.futures.wait()`` / ``as_completed()`` do not accept it.  To wait
for many sends call ``producer.flush()`` or ``result()`` on each in turn.
"""

from __future__ import annotations

import _thread
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from mqlite.errors import CancelledError
from mqlite.errors import TimeoutError as _Timeout

__all__ = ["HELP_MIN_TIMEOUT", "SendFuture"]

T = TypeVar("T")

_PENDING, _CANCELLED, _FINISHED = 0, 1, 2
#: Seconds: a wait with a shorter timeout never commits in the waiting thread (a commit
#: could outlast it); ``None`` or a longer one may (D49).
HELP_MIN_TIMEOUT = 1.0
# guards every future's resolution against callback registration and the making of its gate
_callbacks_lock = _thread.allocate_lock()


class SendFuture(Generic[T]):
    """The outcome of one queued record: its metadata once committed, or the error it hit.

    Thread-safe: any number of threads may wait on it; it is resolved
    exactly once.
    """

    __slots__ = ("_callbacks", "_exc", "_gate", "_helper", "_result", "_state")

    def __init__(self, helper: Callable[[], object] | None = None) -> None:
        # made (acquired) by the first thread that waits while this is pending, released
        # by _finish; both under _callbacks_lock, so a waiter never misses the release
        self._gate: _thread.LockType | None = None
        self._state = _PENDING
        self._result: Any = None
        self._exc: BaseException | None = None
        self._callbacks: list[Callable[[SendFuture[T]], object]] | None = None
        # Called (once) by the first thread that waits (with no timeout, or one of at
        # least HELP_MIN_TIMEOUT) while this is pending, before it blocks: the producer
        # lets that thread commit what is queued itself when its flusher is idle
        # (D49).  It may resolve this future.
        self._helper = helper

    # -- completion (producer side) -----------------------------------------------------------

    def _finish(self, state: int, result: Any = None, exc: BaseException | None = None) -> bool:
        with _callbacks_lock:
            if self._state != _PENDING:
                return False
            self._result = result
            self._exc = exc
            self._state = state
            callbacks, self._callbacks = self._callbacks, None
            gate = self._gate
        if gate is not None:
            gate.release()  # wake the waiters
        if callbacks:
            for fn in callbacks:
                _run_callback(fn, self)
        return True

    def set_result(self, result: T) -> None:
        """Resolve with ``result`` (no effect if already resolved or cancelled)."""
        self._finish(_FINISHED, result)

    def set_exception(self, exc: BaseException) -> None:
        """Resolve with ``exc`` (no effect if already resolved or cancelled)."""
        self._finish(_FINISHED, None, exc)

    def cancel(self) -> bool:
        """Cancel a pending future; ``True`` if it was pending and is now cancelled.

        A producer does not withdraw a queued record when its future is
        cancelled; cancelling only stops callers from waiting on it.
        """
        return self._finish(_CANCELLED)

    # -- inspection (caller side) -------------------------------------------------------------

    def done(self) -> bool:
        """Whether the future is resolved or cancelled."""
        return self._state != _PENDING

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def running(self) -> bool:
        """Always ``False``: a queued record is never in a cancellable running state."""
        return False

    def _wait(self, timeout: float | None) -> None:
        if self._state != _PENDING:
            return
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, (int, float))):
            raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
        helper = self._helper
        if helper is not None and (timeout is None or timeout >= HELP_MIN_TIMEOUT):
            self._helper = None
            helper()  # may commit (and resolve) this record in this thread (D49)
            if self._state != _PENDING:
                return  # resolved here: no gate to make or wait on
        with _callbacks_lock:
            if self._state != _PENDING:
                return
            gate = self._gate
            if gate is None:
                gate = self._gate = _thread.allocate_lock()
                gate.acquire()  # _finish releases it
        if timeout is None:
            got = gate.acquire()
        else:
            got = gate.acquire(True, max(float(timeout), 0.0))
        if not got:
            raise _Timeout("the record was not committed within the timeout")
        gate.release()  # let any other waiter through

    def result(self, timeout: float | None = None) -> T:
        """Wait for the commit and return the record's metadata.

        ``timeout`` is in seconds (``None``: no limit).  When the producer's
        flusher is idle and this thread is the only one sending, the wait
        commits the queued records in this thread instead of handing them to
        the flusher and back (D49); a ``timeout`` under
        :data:`HELP_MIN_TIMEOUT` (1 s) never does, so it is never outlasted
        by a commit.

        Raises
        ------
        TimeoutError
            Not resolved within ``timeout`` seconds (the record may still commit).
        CancelledError
            The future was cancelled.
        Exception
            Whatever error the record hit (encoding or storage); nothing of it was stored.
        """
        self._wait(timeout)
        if self._state == _CANCELLED:
            raise CancelledError("the send's future was cancelled")
        if self._exc is not None:
            raise self._exc
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait like :meth:`result`; return the error instead of raising it (``None`` if none)."""
        self._wait(timeout)
        if self._state == _CANCELLED:
            raise CancelledError("the send's future was cancelled")
        return self._exc

    def add_done_callback(self, fn: Callable[[SendFuture[T]], object]) -> None:
        """Call ``fn(future)`` once resolved — at once if it already is.

        Callbacks run on the thread that resolves the future (the producer's
        flusher); an exception in one is logged and ignored.
        """
        if not callable(fn):
            raise TypeError(f"callback must be callable, not {type(fn).__name__}")
        with _callbacks_lock:
            if self._state == _PENDING:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        _run_callback(fn, self)

    def __repr__(self) -> str:
        state = ("pending", "cancelled", "finished")[self._state]
        if self._state == _FINISHED:
            state += f" raised {type(self._exc).__name__}" if self._exc else f" {self._result!r}"
        return f"<SendFuture {state}>"


def _run_callback(fn: Callable[[Any], object], fut: SendFuture[Any]) -> None:
    try:
        fn(fut)
    except Exception:
        import logging

        logging.getLogger("mqlite.producer").exception("exception in a send future callback")
