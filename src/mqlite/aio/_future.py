"""A future whose waiting task resumes inside the callback that resolves it.

An :class:`asyncio.Future` runs its done callbacks with ``call_soon``: a task
awaiting a future that a reader callback (the doorbell) or a worker thread's
hand-back resolves resumes one loop iteration later, ~20 µs on these machines
(D44: a callback at 35 µs, the task it resumes at 55 µs).  An
:class:`InlineFuture` keeps its first done callback (a waiting task's wake-up)
aside and, when it is resolved by code that runs *outside* any task (a
reader callback, a timer, a ``call_soon_threadsafe`` callback), calls it right
there, in the callback's context: the task runs its next step inside that
loop callback, as it would in the next iteration.  Resolved from inside a
running task, or cancelled, it schedules the callback with ``call_soon``, as
an asyncio future does (a task cannot run inside another task).

asyncio supports such objects: a task awaiting any future-compatible object
(``_asyncio_future_blocking``) registers its wake-up through that object's
``add_done_callback``, and the object decides when to call it.  Everything
else is :class:`asyncio.Future` (results, exceptions, cancellation,
``asyncio.wait``, ``shield``).  D48.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["InlineFuture"]

_T = TypeVar("_T")

def _pick_current_task() -> Callable[[asyncio.AbstractEventLoop], object]:
    """``asyncio.current_task`` for a loop that is known, as cheaply as this Python has it.

    On 3.11 ``asyncio.current_task`` is a Python function around the C module's dict
    of current tasks per loop (``asyncio.tasks._current_tasks``): its ``get`` is the
    same lookup without the frame (~50 ns less on every inline resume, D62).  Later
    Pythons implement ``current_task`` in C: use it.
    """
    fn = asyncio.current_task
    tasks = getattr(asyncio, "tasks", None)
    table = getattr(tasks, "_current_tasks", None)
    if getattr(fn, "__code__", None) is not None and isinstance(table, dict):
        get: Callable[[asyncio.AbstractEventLoop], object] = table.get
        return get
    return fn


_current_task = _pick_current_task()
_set_result = asyncio.Future.set_result


class InlineFuture(asyncio.Future[_T]):
    """An asyncio future that resumes its awaiting task inline (module docstring).

    Loop thread only, as any asyncio future.  ``loop`` is the running loop.
    """

    __slots__ = ("_on", "_wake", "_wake_ctx")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._wake: Callable[[Any], object] | None = None
        self._wake_ctx: contextvars.Context | None = None
        self._on = loop

    def add_done_callback(self, fn: Callable[[Any], object], *,
                          context: contextvars.Context | None = None) -> None:
        """As :meth:`asyncio.Future.add_done_callback`; the first one may run inline."""
        if self._wake is None and not self.done():
            self._wake = fn
            self._wake_ctx = context if context is not None else contextvars.copy_context()
        else:
            super().add_done_callback(fn, context=context)

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:
        """As :meth:`asyncio.Future.remove_done_callback`."""
        n = 0
        if self._wake is not None and self._wake == fn:
            self._wake = self._wake_ctx = None
            n = 1
        return n + super().remove_done_callback(fn)

    def set_result(self, result: _T) -> None:
        """As :meth:`asyncio.Future.set_result`; then the awaiting task resumes (inline
        when no task is running on this loop)."""
        _set_result(self, result)
        wake = self._wake
        if wake is None:
            return
        # _resume(True) written out: this runs on every wake-up's path, one frame less (D72)
        ctx = self._wake_ctx
        self._wake = self._wake_ctx = None
        if _current_task(self._on) is None:
            ctx.run(wake, self)  # type: ignore[union-attr]
        else:
            self._on.call_soon(wake, self, context=ctx)

    def set_exception(self, exception: type | BaseException) -> None:
        """As :meth:`asyncio.Future.set_exception`; then as :meth:`set_result`."""
        super().set_exception(exception)
        self._resume(True)

    def cancel(self, msg: Any | None = None) -> bool:
        """As :meth:`asyncio.Future.cancel` (the awaiting task resumes next iteration)."""
        if not super().cancel(msg):
            return False
        self._resume(False)
        return True

    def _resume(self, inline: bool) -> None:
        wake = self._wake
        if wake is None:
            return
        ctx = self._wake_ctx
        self._wake = self._wake_ctx = None
        if inline and _current_task(self._on) is None:
            ctx.run(wake, self)  # type: ignore[union-attr]
        else:
            self._on.call_soon(wake, self, context=ctx)
