"""Who is inside a consumer's methods, and how ``wakeup()`` / ``close()`` reach them.

A :class:`UseGuard` belongs to one :class:`~mqlite.Consumer` or
:class:`~mqlite.Queue`.  Every public method of its owner runs between
:meth:`UseGuard.enter` and :meth:`UseGuard.exit`; the guard records which
threads are inside (with their nesting depth, so callbacks such as
``on_revoke`` may call back into the owner on the same thread).

* ``exclusive=True`` (``Consumer``): a second thread entering while another
  is inside gets :class:`~mqlite.ConcurrentAccessError` (docs/decisions.md D18).
* :meth:`wakeup` makes every call running at that moment stop waiting (the
  owner checks :meth:`woken` before each wait), or, when none runs, the next
  call.  The owner's ``wake`` callback bumps the shared-memory word the
  waiters sleep on, so a thread already inside ``futex_wait`` returns at once;
  a thread about to wait sees the flag or a changed word (it loads the word
  before checking the flag), so no wake-up is lost.
* :meth:`enter_beside` / :meth:`exit_beside` bracket a read-only call that
  runs beside the thread inside (``mqlite.aio`` reads the next batch on the
  loop while a worker commits): it never counts for ``exclusive``, and
  ``close()`` waits for it as for a caller.
* :meth:`request_close` decides how ``close()`` runs.  From a thread that is
  inside a call of the owner (a signal handler that interrupted ``poll``, or a
  callback) the real close is deferred to that call's outermost exit, which
  :meth:`exit` reports: closing there would start a write transaction while
  the interrupted call may hold one on the same thread.  From any other thread
  it wakes the callers and waits until they left, so when ``close()`` returns
  the owner really is closed.

Signal handlers run between bytecodes of the main thread, possibly inside
these methods; the lock is re-entrant so a handler never deadlocks on it.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from threading import get_ident
from typing import Any, Concatenate, ParamSpec, TypeVar

from mqlite.errors import ClosedError, ConcurrentAccessError

__all__ = ["UseGuard", "guarded"]

_pid = os.getpid()  # this process's pid, kept current by the at-fork hook (no syscall per call)


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


class UseGuard:
    """Entry bookkeeping for one consumer object (see the module docstring)."""

    __slots__ = (
        "_beside",
        "_cv",
        "_gen",
        "_lock",
        "_pending",
        "_pid",
        "_users",
        "_wake",
        "close_deferred",
        "closing",
        "exclusive",
        "what",
    )

    def __init__(self, what: str, wake: Callable[[], None], *, exclusive: bool) -> None:
        self._pid = _pid
        self._lock = threading.RLock()
        self._cv = threading.Condition(self._lock)  # close() waits here for callers to leave
        self._users: dict[int, list[int]] = {}  # thread id -> [depth, wake-up generation]
        self._beside = 0  # read-only calls running beside the users (enter_beside)
        self._gen = 0
        self._pending = False  # a wakeup() that found no caller inside
        self._wake = wake
        self.exclusive = exclusive
        self.what = what
        self.closing = False  # close() from another thread is waiting for callers to leave
        # close() came from inside a call: the id of that call's thread (0: none)
        self.close_deferred = 0

    def _after_fork(self) -> None:
        # The parent's threads do not exist here (and one may have held the lock).
        if self._pid != _pid:
            self._pid = _pid
            self._lock = threading.RLock()
            self._cv = threading.Condition(self._lock)
            self._users = {}
            self._beside = 0
            self.closing = self._pending = False
            self.close_deferred = 0

    def enter(self) -> None:
        """Register the current thread as inside a call.

        Raises
        ------
        ClosedError
            A close is under way.
        ConcurrentAccessError
            ``exclusive`` and another thread is inside.
        """
        self._after_fork()
        me = get_ident()
        with self._lock:
            u = self._users.get(me)
            if u is not None:
                u[0] += 1
                return
            if self.closing or self.close_deferred:
                raise ClosedError(f"this {self.what} is being closed")
            if self.exclusive and self._users:
                raise ConcurrentAccessError(
                    f"this {self.what} is in use by another thread; a {self.what} is not "
                    f"thread-safe: create one {self.what} per thread (wakeup() and close() "
                    "may be called from any thread)")
            self._users[me] = [1, self._gen]

    def exit(self) -> bool:
        """Unregister one level; True when the caller must now run a deferred close."""
        if self._pid != _pid:  # forked inside a call: the child starts afresh
            self._after_fork()
            return False
        me = get_ident()
        with self._lock:
            u = self._users.get(me)
            if u is None:
                return False
            u[0] -= 1
            if u[0] > 0:
                return False
            del self._users[me]
            if self.closing:
                self._cv.notify_all()
            # the thread that asked for a deferred close performs it (other
            # threads of a Queue just leave; the close waits for them)
            return self.close_deferred == me and not self.closing

    def enter_beside(self) -> bool:
        """Register a read-only call that may run beside a thread inside a call.

        For a helper that only reads the owner's state and storage (never
        writes either) while another thread is inside, e.g. ``mqlite.aio``'s
        read-ahead on the loop thread while a worker thread commits.  It does
        not count for ``exclusive``; :meth:`request_close` waits for it.

        Returns
        -------
        bool
            False (nothing registered) when a close is under way: skip the call.
        """
        self._after_fork()
        with self._lock:
            if self.closing or self.close_deferred:
                return False
            self._beside += 1
            return True

    def exit_beside(self) -> None:
        """End a call registered by :meth:`enter_beside` (which returned True)."""
        with self._lock:
            self._beside -= 1
            if self.closing:
                self._cv.notify_all()

    def inside(self) -> bool:
        """Whether the current thread is inside a call of the owner."""
        return get_ident() in self._users

    def woken(self) -> bool:
        """Whether the current call should stop waiting (wakeup or close requested).

        Consumes a pending wake-up that arrived while no call was inside.
        """
        with self._lock:
            if self.closing or self.close_deferred:
                return True
            u = self._users.get(get_ident())
            if u is not None and u[1] != self._gen:
                return True
            if self._pending:
                self._pending = False
                return True
            return False

    def wakeup(self) -> None:
        """Make the calls inside stop waiting, or the next call when none is inside."""
        with self._lock:
            self._gen += 1
            if not self._users:
                self._pending = True
        self._wake()

    def request_close(self) -> bool:
        """Prepare ``close()``: True when the caller should close now, False when deferred.

        Deferred: the current thread is inside a call; the call's outermost
        :meth:`exit` returns True and the owner closes there.  Otherwise the
        other callers are woken and this waits until they have left; the
        owner must call :meth:`closed_done` when its close finished.
        """
        self._after_fork()
        with self._cv:
            if get_ident() in self._users:
                self.close_deferred = get_ident()
                self._gen += 1
                deferred = True
            else:
                self.closing = True
                self._gen += 1
                deferred = False
        self._wake()
        if deferred:
            return False
        with self._cv:
            while self._users or self._beside:
                self._cv.wait(0.5)
                if self._users:
                    self._wake()  # a caller that was between its check and its wait
        return True

    def closed_done(self) -> None:
        """The owner finished closing (its own checks refuse later calls)."""
        with self._cv:
            self.closing = False
            self.close_deferred = 0

    @property
    def close_requested(self) -> bool:
        """A close is waiting for the calls inside to return."""
        return self.closing or self.close_deferred != 0


_P = ParamSpec("_P")
_R = TypeVar("_R")


def guarded(method: Callable[Concatenate[Any, _P], _R]) -> Callable[Concatenate[Any, _P], _R]:
    """Run a public method of a guarded owner between ``enter`` and ``exit``.

    The owner has ``_life`` (a :class:`UseGuard`), ``_close_now()`` (the real
    close) and ``_engine``; a close deferred by ``request_close`` runs here,
    when the outermost call of the thread returns.
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        life: UseGuard = self._life
        life.enter()
        try:
            return method(self, *args, **kwargs)
        finally:
            if life.exit():
                # the deferred close: now outside every call on this thread, so
                # close() waits for other callers and closes for real
                try:
                    self.close()
                finally:
                    self._engine.release_if_done()

    return wrapper
