# _guard.pxi - included by _core.pyx: UseGuard, who is inside a consumer's methods
# (docs/decisions.md D53).
#
# The semantics are mqlite._lifecycle's (its module docstring); this is the
# compiled form of the guard every public method of a Consumer and a Queue
# enters and leaves, so that an event loop's repeated poll rounds (mqlite.aio)
# pay ~0.1 µs for it instead of ~0.7 µs.
#
# Atomicity.  Every method below except the waits of request_close runs with
# the GIL held from start to end and calls no Python code while it reads and
# changes the guard's state: dict operations on int keys (thread ids) and
# plain C fields.  (No allocation here is of a container the cyclic garbage
# collector tracks, so no collection, and no finalizer, can run in between.)
# So no other thread, and no signal handler, can run in the middle of one:
# each is one atomic step, and the enter/exit path needs no lock.  The lock
# and condition serve only close(): request_close waits on the condition for
# the callers to leave, and a caller leaving while a close waits notifies it
# (after its entry is gone, under the lock, so the notification cannot fall
# between the closer's check and its wait).
#
# The loop's entry.  An event loop's poll round (guarded_loop_step, D79) that
# finds nobody inside keeps its entry in three C fields (thread id, depth,
# generation) instead of the dicts: no thread-id object, no dict update on the
# wake-up's path.  Every method counts that entry as a caller inside.

from cpython.long cimport PyLong_AsUnsignedLong, PyLong_FromUnsignedLong
from cpython.pythread cimport PyThread_get_thread_ident
from posix.unistd cimport getpid

import functools as _functools
import threading as _threading

from mqlite.errors import ClosedError as _ClosedError
from mqlite.errors import ConcurrentAccessError as _ConcurrentAccessError

# this process's pid, kept current by the at-fork hook (no system call per enter)
cdef long _guard_pid = getpid()


def _guard_after_fork_in_child():
    global _guard_pid
    _guard_pid = getpid()


os.register_at_fork(after_in_child=_guard_after_fork_in_child)


def self_pid():
    """This process's pid without a system call (kept current by an at-fork hook; the
    commit ring's senders claim slots under it, D56)."""
    return _guard_pid


@cython.final
cdef class UseGuard:
    """Entry bookkeeping for one consumer object (``mqlite._lifecycle``).

    ``UseGuard(what, wake, exclusive=...)``: ``what`` names the owner in
    error messages; ``wake()`` makes a thread blocked in the owner's wait
    return (bumps its wake-up word); ``exclusive``: a second thread entering
    while another is inside gets :class:`~mqlite.ConcurrentAccessError`.
    """

    cdef readonly str what
    cdef readonly bint exclusive
    cdef object _wake
    cdef object _lock
    cdef object _cv
    cdef dict _depth  # thread id -> nesting depth of the calls it is inside
    cdef dict _gens  # thread id -> the wake-up generation when it entered
    cdef Py_ssize_t _beside  # read-only calls running beside the users (enter_beside)
    cdef object _gen  # wake-up generation (an int: compared with the entries')
    cdef bint _pending  # a wakeup() that found no caller inside
    cdef bint _closing  # close() from another thread waits for the callers to leave
    cdef object _deferred  # close() came from inside a call: that call's thread id (0: none)
    cdef long _pid
    # Every enter() so far, nested ones and refused ones too (never reset, not even in a
    # forked child): a consumer's positions change only inside its calls, so a count
    # that moved by exactly one call means no other call came in between (D79).
    cdef readonly Py_ssize_t calls
    # A thread inside through c_enter_loop (an event loop's round, D79), kept in these
    # C fields instead of the dicts: its thread id (0: none), nesting depth and the
    # wake-up generation when it entered.  Every method counts it as a caller inside.
    cdef unsigned long _loop_tid
    cdef Py_ssize_t _loop_depth
    cdef object _loop_gen

    def __init__(self, str what not None, wake, *, bint exclusive):
        if not callable(wake):
            raise TypeError(f"wake must be callable, not {type(wake).__name__}")
        self.what = what
        self.exclusive = exclusive
        self._wake = wake
        self._reset()

    cdef void _reset(self) except *:
        self._pid = _guard_pid
        self._lock = _threading.RLock()  # re-entrant: a signal handler may close in a wait
        self._cv = _threading.Condition(self._lock)
        self._depth = {}
        self._gens = {}
        self._beside = 0
        self._gen = 0
        self._pending = False
        self._closing = False
        self._deferred = 0
        self._loop_tid = 0
        self._loop_depth = 0
        self._loop_gen = None

    cdef inline void _after_fork(self) except *:
        # The parent's threads do not exist here (and one may have held the lock).
        if self._pid != _guard_pid:
            self._reset()

    @property
    def closing(self):
        """A ``close()`` from another thread is waiting for the callers to leave."""
        return self._closing

    @property
    def close_deferred(self):
        """The thread id whose outermost exit must close (0: no deferred close)."""
        return self._deferred

    @property
    def close_requested(self):
        """A close is waiting for the calls inside to return."""
        return self._closing or self._deferred != 0

    @property
    def _users(self):
        """Thread id -> nesting depth of the calls inside (a copy; for tests)."""
        users = dict(self._depth)
        if self._loop_tid != 0:
            users[PyLong_FromUnsignedLong(self._loop_tid)] = self._loop_depth
        return users

    def enter(self):
        """Register the current thread as inside a call.

        Raises
        ------
        ClosedError
            A close is under way.
        ConcurrentAccessError
            ``exclusive`` and another thread is inside.
        """
        self.c_enter()

    cdef int c_enter(self) except -1:
        """:meth:`enter` for compiled callers (``guarded``)."""
        cdef unsigned long tid = PyThread_get_thread_ident()
        self.calls += 1
        self._after_fork()
        if tid == self._loop_tid:  # nested in a loop entry
            self._loop_depth += 1
            return 0
        return self._enter_dict(PyLong_FromUnsignedLong(tid))

    cdef int c_enter_loop(self, unsigned long tid) except -1:
        """:meth:`c_enter` for an event loop's round on thread ``tid`` (the current one;
        ``guarded_loop_step``, D79).  With nobody inside, the entry is kept in C fields
        (no thread-id object, no dict update); else as :meth:`c_enter`."""
        self.calls += 1
        self._after_fork()
        if tid == self._loop_tid:
            self._loop_depth += 1
            return 0
        if self._loop_tid == 0 and not self._depth:
            if self._closing or self._deferred != 0:
                raise _ClosedError(f"this {self.what} is being closed")
            self._loop_tid = tid
            self._loop_depth = 1
            self._loop_gen = self._gen
            return 0
        return self._enter_dict(PyLong_FromUnsignedLong(tid))

    cdef int _enter_dict(self, object me) except -1:
        d = self._depth.get(me)
        if d is not None:
            self._depth[me] = <Py_ssize_t>d + 1
            return 0
        if self._closing or self._deferred != 0:
            raise _ClosedError(f"this {self.what} is being closed")
        if self.exclusive and (self._depth or self._loop_tid != 0):
            raise _ConcurrentAccessError(
                f"this {self.what} is in use by another thread; a {self.what} is not "
                f"thread-safe: create one {self.what} per thread (wakeup() and close() "
                "may be called from any thread)")
        self._depth[me] = 1
        self._gens[me] = self._gen
        return 0

    def exit(self):
        """Unregister one level; True when the caller must now run a deferred close."""
        return self.c_exit()

    cdef bint c_exit(self) except -1:
        """:meth:`exit` for compiled callers (``guarded``)."""
        return self.c_exit_loop(PyThread_get_thread_ident())

    cdef bint c_exit_loop(self, unsigned long tid) except -1:
        """:meth:`c_exit` for thread ``tid`` (the current one): the exit of
        :meth:`c_enter_loop` and of :meth:`c_enter`."""
        cdef bint deferred
        if self._pid != _guard_pid:  # forked inside a call: the child starts afresh
            self._reset()
            return False
        if tid == self._loop_tid:
            if self._loop_depth > 1:
                self._loop_depth -= 1
                return False
            self._loop_tid = 0
            self._loop_depth = 0
            self._loop_gen = None
            deferred = (self._deferred != 0 and not self._closing
                        and PyLong_AsUnsignedLong(self._deferred) == tid)
        else:
            me = PyLong_FromUnsignedLong(tid)
            d = self._depth.get(me)
            if d is None:
                return False
            if <Py_ssize_t>d > 1:
                self._depth[me] = <Py_ssize_t>d - 1
                return False
            del self._depth[me]
            del self._gens[me]
            # the thread that asked for a deferred close performs it (other threads of a
            # Queue just leave; the close waits for them)
            deferred = self._deferred == me and not self._closing
        if self._closing:
            self._notify()
        return deferred

    cdef void _notify(self) except *:
        with self._cv:
            self._cv.notify_all()

    def enter_beside(self):
        """Register a read-only call that may run beside a thread inside a call.

        For a helper that only reads the owner's state and storage (never
        writes either) while another thread is inside, e.g. ``mqlite.aio``'s
        read-ahead on the loop thread while a worker thread commits.  It does
        not count for ``exclusive``; :meth:`request_close` waits for it.

        Returns ``False`` (nothing registered) when a close is under way:
        skip the call.
        """
        self._after_fork()
        if self._closing or self._deferred != 0:
            return False
        self._beside += 1
        return True

    def exit_beside(self):
        """End a call registered by :meth:`enter_beside` (which returned True)."""
        self._beside -= 1
        if self._closing:
            self._notify()

    def inside(self):
        """Whether the current thread is inside a call of the owner."""
        cdef unsigned long tid = PyThread_get_thread_ident()
        return tid == self._loop_tid or PyLong_FromUnsignedLong(tid) in self._depth

    def woken(self):
        """Whether the current call should stop waiting (wakeup or close requested).

        Consumes a pending wake-up that arrived while no call was inside.
        """
        if self._closing or self._deferred != 0:
            return True
        cdef unsigned long tid = PyThread_get_thread_ident()
        g = self._loop_gen if tid == self._loop_tid else self._gens.get(
            PyLong_FromUnsignedLong(tid))
        if g is not None and g != self._gen:
            return True
        if self._pending:
            self._pending = False
            return True
        return False

    def wakeup(self):
        """Make the calls inside stop waiting, or the next call when none is inside."""
        self._gen = self._gen + 1
        if not self._depth and self._loop_tid == 0:
            self._pending = True
        self._wake()

    def request_close(self):
        """Prepare ``close()``: True when the caller should close now, False when deferred.

        Deferred: the current thread is inside a call; the call's outermost
        :meth:`exit` returns True and the owner closes there.  Otherwise the
        other callers are woken and this waits until they have left; the
        owner must call :meth:`closed_done` when its close finished.
        """
        self._after_fork()
        cdef unsigned long tid = PyThread_get_thread_ident()
        me = PyLong_FromUnsignedLong(tid)
        cdef bint deferred = tid == self._loop_tid or me in self._depth
        if deferred:
            self._deferred = me
        else:
            self._closing = True
        self._gen = self._gen + 1
        self._wake()
        if deferred:
            return False
        with self._cv:
            while self._depth or self._beside or self._loop_tid != 0:
                self._cv.wait(0.5)
                if self._depth or self._loop_tid != 0:
                    self._wake()  # a caller that was between its check and its wait
        return True

    def closed_done(self):
        """The owner finished closing (its own checks refuse later calls)."""
        self._closing = False
        self._deferred = 0


def guarded(method):
    """Run a public method of a guarded owner between ``enter`` and ``exit`` (compiled).

    The semantics of ``mqlite._lifecycle.guarded`` (which returns this): the owner has
    ``_life`` (a :class:`UseGuard`), ``close()`` and ``_engine``; a close deferred by
    ``request_close`` runs when the outermost call of the thread returns.  Compiled,
    so that entering and leaving cost no Python frame (~0.1 µs instead of ~0.5 µs per
    call, D62): an event loop's poll rounds (``mqlite.aio``) pay it on every wake-up.
    Between ``enter`` and the ``try`` no Python code runs, so no signal handler can
    leave the guard entered.
    """
    if not callable(method):
        raise TypeError(f"guarded() takes a function, not {type(method).__name__}")

    def wrapper(self, *args, **kwargs):
        cdef UseGuard life = self._life
        life.c_enter()
        try:
            if kwargs:
                return method(self, *args, **kwargs)
            return method(self, *args)
        finally:
            if life.c_exit():
                # the deferred close: now outside every call on this thread, so close()
                # waits for other callers and closes for real
                try:
                    self.close()
                finally:
                    self._engine.release_if_done()

    _functools.update_wrapper(wrapper, method)
    return wrapper


def guarded_one(method):
    """:func:`guarded` for a method of one optional positional argument (D72).

    The same enter, exit and deferred close; the argument is passed on as it
    is, with no argument tuple or keyword dict built per call.  For the round
    an event loop runs after every wake-up (``Consumer.loop_step``).
    """
    if not callable(method):
        raise TypeError(f"guarded_one() takes a function, not {type(method).__name__}")

    def wrapper(self, arg=None):
        cdef UseGuard life = self._life
        life.c_enter()
        try:
            return method(self, arg)
        finally:
            if life.c_exit():
                try:
                    self.close()
                finally:
                    self._engine.release_if_done()

    _functools.update_wrapper(wrapper, method)
    return wrapper


def guarded_loop_step(step, checked):
    """``Consumer.loop_step`` compiled: :func:`guarded_one` with the round's checks in
    the wrapper, so the round an event loop runs after every wake-up has no Python
    frame of its own (D79).

    The wrapper takes ``(self, max_records=None)``, enters the guard as
    :func:`guarded_one` does, and runs ``step(self, n, False, True)``
    (``Consumer._step``: a round without writes, noting a drained read late), where
    ``n`` is ``max_records``, or ``self._max_poll`` for ``None``.  When
    ``max_records`` is neither ``None`` nor an ``int`` >= 1, or the owner or its
    broker is closed (``self._closed``, ``self._engine.closed``), it runs
    ``checked(self, max_records)`` instead, inside the same entry: the Python
    method that makes the checks (raising their errors) and then the same round.
    """
    if not callable(step) or not callable(checked):
        raise TypeError("guarded_loop_step() takes two functions")

    def wrapper(self, max_records=None):
        cdef UseGuard life = self._life
        cdef unsigned long tid = PyThread_get_thread_ident()
        life.c_enter_loop(tid)
        try:
            if max_records is None:
                n = self._max_poll
            elif type(max_records) is int and max_records >= 1:
                n = max_records
            else:
                return checked(self, max_records)
            if self._closed or self._engine.closed:
                return checked(self, max_records)
            return step(self, n, False, True)
        finally:
            if life.c_exit_loop(tid):
                try:
                    self.close()
                finally:
                    self._engine.release_if_done()

    _functools.update_wrapper(wrapper, checked)
    return wrapper
