"""Waiting on the broker's wake-up words from an event loop, through a doorbell.

The broker's blocking waits futex-wait on shared-memory words
(``notify.shm``, csrc/notify.h); parking a thread per waiting task would cost
a thread per wait.  Instead each :class:`LoopBell` claims a *doorbell*
(csrc/doorbell.h): an entry in ``bells.shm`` with a bitmap of the words its
tasks wait on and one ring word.  Every process that bumps an armed word
increments the ring word and FUTEX_WAKEs it.  Where the kernel can wait on a
futex through io_uring (Linux >= 6.7), the loop watches the ring word itself:
an io_uring ``FUTEX_WAIT`` on it completes on a ring and the io_uring
descriptor (``loop.add_reader``) becomes readable (csrc/uring_bell.h, D41).
Elsewhere one thread per loop (``mqlite-aio-bell``) sleeps on the ring word in
C and, without ever taking the GIL, writes each ring into a pipe the loop
watches.  Either way the loop then re-reads the armed words and resolves the
futures of the waits whose word moved.  However many tasks wait, that is at
most one thread; a cancelled wait unregisters synchronously (nothing to give
back) and an idle waiter costs only its registration.

Contract (as the blocking waits): a ring is a hint.  Callers load the word
before they read state, wait, and re-read state after every wake-up; each
wait has a finite timeout, so a lost ring costs at most that timeout.

When no doorbell can be claimed (all :data:`MAX_BELLS` are taken) waits fall
back to a blocking ``Notifier.wait`` in the broker's worker threads (then a
wait holds a thread).  docs/decisions.md D26 has the measurements behind the
choice.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mqlite.aio._runner import Runner

__all__ = ["LoopBell"]

#: Longest wait slice of a worker thread when a loop has no doorbell (seconds).
_SLICE_S = 0.25

#: Doorbells per broker directory (csrc/doorbell.h, MQ_BELLS_ENTRIES).
MAX_BELLS = 256


class LoopBell:
    """The doorbell of one broker handle on one event loop (loop thread only)."""

    def __init__(self, notifier: Any, loop: asyncio.AbstractEventLoop,
                 runner: Runner) -> None:
        self._n = notifier
        self.loop = loop
        self._runner = runner
        self._index = -1
        self._closed = False
        self._thread: threading.Thread | None = None
        # slot -> {future: expected seq}: the waits registered now
        self._waits: dict[int, dict[asyncio.Future[bool], int]] = {}
        self._rfd = self._wfd = -1
        # deadlines of the registered waits: [when, order, future or None when stale]
        self._heap: list[list[Any]] = []
        self._stale = 0
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._uring: Any = None  # _core.UringBell while the loop watches the ring word itself
        self._rearm: asyncio.TimerHandle | None = None
        self._rearm_soon = False  # io_uring: a _submit_soon callback is scheduled
        try:
            self._index = notifier.bell_claim()
        except (OSError, ValueError):
            return  # fall back to blocking waits in the executor
        try:
            if _use_uring() and self._watch_uring():
                return
            # A pipe rather than an eventfd: a pipe write wakes the loop thread with the
            # scheduler's sync hint, onto the bell thread's CPU, which sleeps again at
            # once (measured faster here than the eventfd's plain wake-up, D26).
            self._rfd, self._wfd = os.pipe()  # close-on-exec by default (PEP 446)
            os.set_blocking(self._rfd, False)
            os.set_blocking(self._wfd, False)
            loop.add_reader(self._rfd, self._on_ring)
            self._thread = threading.Thread(target=notifier.bell_listen,
                                            args=(self._index, self._wfd),
                                            name="mqlite-aio-bell", daemon=True)
            self._thread.start()
        except BaseException:
            self._close_fds()
            notifier.bell_release(self._index)
            self._index = -1
            raise

    def _watch_uring(self) -> bool:
        """Watch the ring word through io_uring; False (nothing held) where it cannot."""
        try:
            self._uring = self._n.bell_uring(self._index)
        except (OSError, AttributeError):
            return False
        try:
            # The loop's selector watches the ring word: a ring makes the loop thread
            # runnable directly, with no bell thread (D41).
            # The reader callback is compiled (UringBell.on_readable, D44): it reaps the
            # completion and resolves the futures of self._waits whose word moved, with
            # no Python frame on the wake-up's path.
            self._rfd = self._uring.fileno()
            self._uring.dispatch(self._waits, self._after_ring)
            self.loop.add_reader(self._rfd, self._uring.on_readable)
            self._uring.arm()
        except (OSError, ValueError):
            self._close_fds()
            self._uring = None
            return False
        return True

    def _close_fds(self) -> None:
        if self._rfd >= 0:
            with contextlib.suppress(Exception):  # the loop may be closed already
                self.loop.remove_reader(self._rfd)
            if self._uring is None:
                os.close(self._rfd)
                if self._wfd != self._rfd:
                    os.close(self._wfd)
        if self._uring is not None:
            self._uring.close()  # closes its descriptor; a pending wait is cancelled
        if self._rearm is not None:
            self._rearm.cancel()
            self._rearm = None
        self._rfd = self._wfd = -1

    @property
    def via_uring(self) -> bool:
        """Whether the loop watches the ring word through io_uring (no bell thread)."""
        return self._uring is not None

    @property
    def has_doorbell(self) -> bool:
        """Whether waits use a doorbell (else they block a worker thread)."""
        return self._index >= 0

    def waiting(self) -> int:
        """Number of waits registered now."""
        return sum(len(w) for w in self._waits.values())

    @property
    def armable(self) -> bool:
        """Whether :meth:`arm` may be used now (a doorbell is held and the bell is open)."""
        return self._index >= 0 and not self._closed

    async def wait(self, slot: int, seq: int, timeout: float,
                   fut: asyncio.Future[bool] | None = None, *, one: bool = False) -> bool:
        """Wait until word ``slot`` differs from ``seq``, ``timeout`` s pass, or ``fut`` is set.

        Returns ``True`` when woken (a hint), ``False`` on timeout.  A caller
        may pass its own ``fut`` and resolve it (with ``False``) to end the
        wait early (``wakeup()``).  Cancelling the awaiting task unregisters
        the wait at once.  (:meth:`arm` / :meth:`disarm` are the same wait
        without this coroutine's frame, for the hot paths.)

        ``one``: the word wakes one thread per bump (a queue's receivers, D67).
        Only a wait without a doorbell (:attr:`has_doorbell` false) sleeps in a
        thread and can take such a wake-up; when its task was cancelled, the
        wake-up it took is passed on (:meth:`pass_on`, D69).  A doorbell takes
        none: every armed event loop is rung.
        """
        return await self.wait_any((slot,), (seq,), timeout, fut, one=one)

    async def wait_woken(self, slot: int, seq: int, timeout: float,
                         fut: asyncio.Future[bool] | None = None, *, one: bool = False) -> int:
        """:meth:`wait`, telling how it ended: 0 timed out or ended by ``fut``, 1 the word
        was seen moved, 2 woken (D77).

        2 only for a wait without a doorbell on a one-at-a-time word (``one``) whose
        last slice was taken off the futex queue by a wake-up
        (``Notifier.wait_woken``, D76): only then may it hold the one wake-up of a
        bump, which a caller that leaves without a receive round passes on
        (:meth:`pass_on`).  A wait through a doorbell takes no wake-up from anyone
        (every armed loop is rung) and returns 0 or 1; so does a closed bell.
        Cancellation as :meth:`wait` (a cancelled slice passes its wake-up on itself).
        """
        if fut is None:
            fut = self.loop.create_future()
        if self._index < 0 and not self._closed and timeout > 0 and not fut.done():
            return await self._thread_slices((slot,), (seq,), timeout, fut, one)
        return 1 if await self.wait_any((slot,), (seq,), timeout, fut) else 0

    def pass_on(self, slot: int) -> None:
        """Wake one thread waiting on one-at-a-time word ``slot``, if one waits (D69).

        For a queue receive whose wait had no doorbell (it slept in a thread, so
        it may have taken the one wake-up of a bump) and that leaves without a
        receive round.  Nothing once the broker is closed.
        """
        try:
            self._n.pass_on(slot)
        except ValueError:  # the notifier closed: nobody waits on it any more
            pass

    def arm(self, slot: int, seq: int, timeout: float, fut: asyncio.Future[bool]) -> list[Any]:
        """Register a wait: ``fut`` is resolved ``True`` when word ``slot`` moves from ``seq``
        (at once if it has already), ``False`` after ``timeout`` seconds (> 0).

        Only while :attr:`armable`.  The caller awaits ``fut`` itself and must
        pass the returned registration to :meth:`disarm` once the wait ends in
        any way (woken, timed out, cancelled): in a ``finally``.  Both calls
        are O(1) and allocate one list; cancelling the waiting task costs
        asyncio's own unwinding plus :meth:`disarm`.
        """
        n = self._n
        waits = self._waits.get(slot)
        if waits is None:
            waits = self._waits[slot] = {}
            n.bell_arm(self._index, slot)
        waits[fut] = seq
        if self._uring is not None and not self._uring.armed and self._rearm is None:
            # The ring word's wait was not submitted again since the last ring (D44):
            # submit it now, before the word is checked below, so that a bump after
            # that check completes it.
            self._submit()
        # [when, order, future while in the deadline heap (else None), slot, future]
        if n.load(slot) != seq:  # moved before the bell was armed
            if not fut.done():
                fut.set_result(True)
            return [0.0, 0, None, slot, fut]
        return self._deadline(timeout, fut, slot)

    def arm_any(self, slots: tuple[int, ...], seqs: tuple[int, ...], timeout: float,
                fut: asyncio.Future[bool]) -> list[list[Any]]:
        """:meth:`arm` on several words (D64): ``fut`` is resolved when any of them moves.

        Pass each returned registration to :meth:`disarm` once the wait ends.
        """
        return [self.arm(s, q, timeout, fut) for s, q in zip(slots, seqs, strict=True)]

    async def wait_any(self, slots: tuple[int, ...], seqs: tuple[int, ...], timeout: float,
                       fut: asyncio.Future[bool] | None = None, *, one: bool = False) -> bool:
        """:meth:`wait` on several words: until any of them moves (see :meth:`arm_any`)."""
        n = self._n
        if fut is None:
            fut = self.loop.create_future()
        if self._closed:
            return True  # the broker is closing: callers re-check state (and see it)
        if timeout <= 0 or fut.done():
            return any(n.load(s) != q for s, q in zip(slots, seqs, strict=True))
        if self._index < 0:
            return bool(await self._thread_slices(slots, seqs, timeout, fut, one))
        regs = self.arm_any(slots, seqs, timeout, fut)
        try:
            return await fut
        finally:
            for reg in regs:
                self.disarm(reg)

    async def _thread_slices(self, slots: tuple[int, ...], seqs: tuple[int, ...],
                             timeout: float, fut: asyncio.Future[bool], one: bool) -> int:
        """A wait without a doorbell: a worker thread waits, in slices of at most
        ``_SLICE_S`` that bound how long a cancelled or woken wait keeps its thread.
        0 timed out or ended by ``fut``, else the last slice's code (:meth:`_thread_wait`).
        """
        deadline = self.loop.time() + timeout
        while not fut.done():
            left = deadline - self.loop.time()
            if left <= 0:
                return 0
            how = await self._thread_wait(slots, seqs, min(left, _SLICE_S), one)
            if how:
                return how
        return 0

    async def _thread_wait(self, slots: tuple[int, ...], seqs: tuple[int, ...],
                           timeout: float, one: bool) -> int:
        """One slice of a wait without a doorbell, in a worker thread: 0 timed out, 1
        moved, 2 woken (``one`` on a single word only, ``Notifier.wait_woken``).

        A cancelled slice that already started finishes in its thread (it cannot be
        interrupted); with ``one``, a wake-up it took then is passed on (D69).
        """
        n = self._n
        if not one or len(slots) != 1:
            return 1 if await self._runner.run(n.wait_any, slots, seqs, timeout) else 0
        # wait_woken: a slice that only saw the word moved took no wake-up (D76)
        job = self._runner.call(n.wait_woken, slots[0], seqs[0], timeout)
        try:
            return int(await job)
        except asyncio.CancelledError:
            # (a slice cancelled before it started never runs: its outcome never comes)
            job.outcome_later().add_done_callback(
                lambda done: self._pass_if_moved(done, slots))
            raise

    def _pass_if_moved(self, done: asyncio.Future[Any], slots: tuple[int, ...]) -> None:
        """A slice whose task was cancelled returned: pass on the wake-up it took (only
        when a wake-up took its thread off the futex queue: ``wait_woken`` 2, D76)."""
        if done.cancelled() or done.exception() is not None or done.result() != 2:
            return
        for slot in slots:
            self.pass_on(slot)

    def disarm(self, reg: list[Any]) -> None:
        """End the wait :meth:`arm` registered (idempotent per registration)."""
        if reg[2] is not None:
            reg[2] = None  # still in the heap: now a stale entry
            self._stale += 1
        slot, fut = reg[3], reg[4]
        waits = self._waits.get(slot)
        # (a wait the io_uring reader callback resolved has left the dict already, and
        # its slot was disarmed there when it was the last one: nothing to do here)
        if waits is None or waits.pop(fut, None) is None or waits:
            return
        del self._waits[slot]
        try:  # (not contextlib.suppress: this runs on every wake-up's path)
            self._n.bell_disarm(self._index, slot)
        except ValueError:  # the broker closed meanwhile
            pass

    def _deadline(self, timeout: float, fut: asyncio.Future[bool], slot: int) -> list[Any]:
        """Register ``fut`` to be resolved with False in ``timeout`` seconds.

        All waits of the loop share one timer (the earliest deadline) instead of a
        ``call_later`` handle each: a wait costs a heap entry, and one that ends
        early (woken, cancelled) only marks its entry stale, which is O(1) and
        allocates nothing; stale entries are dropped when they reach the top or
        when they are more than half of the heap.
        """
        when = self.loop.time() + timeout
        entry = [when, next(self._order), fut, slot, fut]
        heapq.heappush(self._heap, entry)
        if self._timer is None or when < self._timer.when():
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(when, self._expire)
        if self._stale > 64 and self._stale * 2 > len(self._heap):
            self._heap = [e for e in self._heap if e[2] is not None]
            heapq.heapify(self._heap)
            self._stale = 0
        return entry

    def _expire(self) -> None:
        """The shared timer: resolve every wait whose deadline passed; re-arm."""
        self._timer = None
        heap = self._heap
        now = self.loop.time() + 1e-6  # asyncio may run a timer up to its clock's resolution early
        due = []
        while heap and (heap[0][2] is None or heap[0][0] <= now):
            entry = heapq.heappop(heap)
            fut = entry[2]
            if fut is None:
                self._stale -= 1
                continue
            entry[2] = None  # left the heap: its wait must not count it stale
            due.append(fut)
        if heap and not self._closed:
            self._timer = self.loop.call_at(heap[0][0], self._expire)
        # Resolved last: an InlineFuture resumes its task right here, and that task
        # may arm or disarm waits (the heap, the timer) before this returns.
        for fut in due:
            if not fut.done():
                fut.set_result(False)

    def _after_ring(self, flags: int) -> None:
        """Called by ``UringBell.on_readable`` after a ring that left something to do.

        The reader callback (compiled: ``UringBell.on_readable``) reaps the
        completion and resolves the waits whose word moved; it submits no new
        ``FUTEX_WAIT`` (a system call on the path of every wake-up; the task just
        resumed usually arms a wait of its own next, and :meth:`arm` submits it
        then).  While other waits stay registered, the wait is submitted by a
        callback run after the resumed tasks (:meth:`_submit_soon`, which re-reads
        every armed word after submitting, so a ring in between is not lost).
        """
        if self._closed or self._uring is None:
            return
        if flags & 4:  # the notifier closed: every wait was ended; callers re-check state
            return
        if self._rearm is not None:
            return
        if flags & 2:
            # The kernel refused the wait (e.g. bells.shm truncated under us: EFAULT):
            # retry in 10 ms rather than spin; meanwhile waits end at their timeouts.
            self._rearm = self.loop.call_later(0.01, self._arm_again)
        elif not self._rearm_soon:
            self._rearm_soon = True
            self.loop.call_soon(self._submit_soon)

    def _submit_soon(self) -> None:
        self._rearm_soon = False
        u = self._uring
        if u is not None and not u.armed and self._waits and self._rearm is None:
            self._submit()
            if u.armed:
                self._resume()  # a ring between the reap and the submission is not lost

    def _submit(self) -> None:
        """Submit the ring word's ``FUTEX_WAIT`` (io_uring only, loop thread)."""
        if self._uring is None or self._closed:
            return
        try:
            self._uring.arm()
        except ValueError:  # the notifier closed: end every wait, callers re-check state
            self.wake_all()
        except OSError:  # could not submit: retry (waits meanwhile end at their timeouts)
            if not self._closed:
                self._rearm = self.loop.call_later(0.01, self._arm_again)

    def _arm_again(self) -> None:
        self._rearm = None
        if self._uring is None or self._closed:
            return
        self._submit()
        if self._uring.armed:
            self._resume()

    def _on_ring(self) -> None:
        try:
            os.read(self._rfd, 65536)  # what is there; more keeps it readable: read next time
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return
        self._resume()

    def _resume(self) -> None:
        """Resolve the futures of the waits whose word moved."""
        moved: list[asyncio.Future[bool]] = []
        try:
            load = self._n.load
            for slot, waits in self._waits.items():
                cur = load(slot)
                moved.extend(fut for fut, seq in waits.items() if cur != seq)
        except ValueError:  # notifier closed: end every wait, callers re-check state
            self.wake_all()
            return
        # Resolved after the walk: a resumed task (InlineFuture) may arm or disarm waits.
        for fut in moved:
            if not fut.done():
                fut.set_result(True)

    def wake_all(self) -> None:
        """End every registered wait now (each returns ``True``; callers re-read state)."""
        for fut in [fut for waits in self._waits.values() for fut in waits]:
            if not fut.done():  # (a resumed task may change the waits: a copy is walked)
                fut.set_result(True)

    def close(self) -> None:
        """End every wait, stop the bell thread and give the doorbell back.  Idempotent."""
        self.wake_all()
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            with contextlib.suppress(Exception):  # the loop may be closed already
                self._timer.cancel()
            self._timer = None
        self._heap.clear()
        if self._index >= 0:
            if self._thread is not None:
                self._n.bell_unlisten(self._index)  # kicks the ring word: the listener returns
                if self._thread is not threading.current_thread():
                    self._thread.join(1.0)
            self._close_fds()
            self._n.bell_release(self._index)


def _use_uring() -> bool:
    """io_uring unless ``MQLITE_AIO_URING=0`` (then every loop has a bell thread)."""
    return os.environ.get("MQLITE_AIO_URING", "1") != "0"


def _set(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


def threadsafe_setter(loop: asyncio.AbstractEventLoop,
                      fut: asyncio.Future[bool]) -> Callable[[], None]:
    """A callable any thread may call to end a wait on ``fut`` (``wakeup()``)."""

    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # loop closed: nothing waits any more
            loop.call_soon_threadsafe(_set, fut, False)

    return wake
