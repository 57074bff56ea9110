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

Each method of the guard is one atomic step: it runs compiled, with the GIL
held, and calls no Python code while it changes the guard's state, so no
other thread and no signal handler (they run between bytecodes) can run in
its middle; entering and leaving take no lock.  Only ``close()`` waits, on a
re-entrant lock's condition, so a signal handler that closes during that wait
never deadlocks on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

# The guard itself is compiled (src/mqlite/_guard.pxi, D53): every public call of a
# consumer enters and leaves it, and an event loop's poll rounds (``mqlite.aio``) enter
# it once per round.
from mqlite._core import UseGuard
from mqlite._core import guarded as _core_guarded
from mqlite._core import guarded_loop_step as _core_guarded_loop_step
from mqlite._core import guarded_one as _core_guarded_one

__all__ = ["UseGuard", "guarded", "guarded_loop_step", "guarded_one"]


_P = ParamSpec("_P")
_R = TypeVar("_R")


def guarded(method: Callable[Concatenate[Any, _P], _R]) -> Callable[Concatenate[Any, _P], _R]:
    """Run a public method of a guarded owner between ``enter`` and ``exit``.

    The owner has ``_life`` (a :class:`UseGuard`), ``_close_now()`` (the real
    close) and ``_engine``; a close deferred by ``request_close`` runs here,
    when the outermost call of the thread returns.  The wrapper is compiled
    (``mqlite._core.guarded``, D62): it costs no Python frame per call.
    """
    wrapper: Callable[Concatenate[Any, _P], _R] = _core_guarded(method)
    return wrapper


_A = TypeVar("_A")


def guarded_one(method: Callable[[Any, _A], _R]) -> Callable[[Any, _A], _R]:
    """:func:`guarded` for a method of one positional argument, which may be omitted
    (``None`` is passed then): no argument tuple or keyword dict per call (D72).

    For the round an event loop runs after every wake-up (``Consumer.loop_step``).
    """
    wrapper: Callable[[Any, _A], _R] = _core_guarded_one(method)
    return wrapper


def guarded_loop_step(step: Callable[[Any, int, bool, bool], _R],
                      checked: Callable[[Any, _A], _R]) -> Callable[[Any, _A], _R]:
    """``Consumer.loop_step``, compiled (D79): one guarded round with no Python frame of
    its own.

    The wrapper, called as ``(self, max_records=None)``, enters the guard as
    :func:`guarded_one` does and runs ``step(self, n, False, True)``, ``n`` being
    ``max_records`` or ``self._max_poll`` for ``None``; an argument that is not
    ``None`` or an ``int`` >= 1, or a closed owner or broker (``self._closed``,
    ``self._engine.closed``), runs ``checked(self, max_records)`` instead (the
    method that raises the usual errors), in the same entry.  The wrapper has
    ``checked``'s name and docstring.
    """
    wrapper: Callable[[Any, _A], _R] = _core_guarded_loop_step(step, checked)
    return wrapper
