"""D69: a queue receiver that was woken and leaves without a receive round passes the
wake-up on.

Writers wake *one* thread asleep on a queue's word (D67).  A receiver that takes that
wake-up and then returns without a round must not leave the message to the next
waiter's timeout (``WAIT_S`` here): it wakes one other waiter.  Each test makes the
woken receiver leave at the moment between its wait and its round (a hook on the
wait, or on the wait's worker thread; no sleeps) and checks that another receiver,
asleep with a long timeout, gets the message within ``WOKEN_S``.

Some leaves never lost anything and are kept as guards: ``wakeup()`` and ``close()``
bump the word waking every waiter, and an event loop's doorbell takes no wake-up from
anyone (every armed loop is rung).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from _polling import queue_word
from _queue_waits import every_doorbell_taken, until_asleep

import mqlite
import mqlite.aio
import mqlite.aio._bell
from mqlite.queue import receive as _receive

#: The topics the ``broker`` fixture creates (tests/unit/conftest.py).
BROKER_TOPICS = {"jobs": 2}
WAIT_S = 30.0
WOKEN_S = 10.0


class _Leave(BaseException):
    """Stands for an exception a signal handler raises just after a wait returned
    (``KeyboardInterrupt``, ``SystemExit`` from a SIGTERM handler)."""


class _WaitHook:
    """Wraps the blocking wait of ``Queue.receive``: reports which threads are about to
    sleep in a long wait, and runs ``leave`` in the first thread whose wait returns
    woken once ``armed`` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = _receive._wait
        self.armed = threading.Event()
        self.lock = threading.Lock()
        self.entered: dict[str, threading.Event] = {}
        self.left: list[str] = []
        self.leave: Callable[[], None] = lambda: None
        monkeypatch.setattr(_receive, "_wait", self.wait)

    def event(self, name: str) -> threading.Event:
        with self.lock:
            return self.entered.setdefault(name, threading.Event())

    def wait(self, n: Any, slot: int, seq: int, timeout: float) -> int:
        me = threading.current_thread().name
        if timeout > 1.0:  # the long receive, not a warm-up
            self.event(me).set()
        moved = self.real(n, slot, seq, timeout)
        if moved and self.armed.is_set():
            with self.lock:
                first = not self.left
                if first:
                    self.left.append(me)
            if first:
                self.leave()
        return moved


def _receive_in_thread(broker: Any, name: str, queues: dict[str, Any],
                       out: dict[str, tuple[Any, float]], ready: threading.Barrier) -> None:
    q = queues[name] = broker.queue("jobs", "w")
    q.receive(1, timeout=0.01)  # joined, and the queue looked idle once
    ready.wait()
    t0 = time.monotonic()
    try:
        ds = q.receive(1, timeout=WAIT_S)
        out[name] = ([d.value for d in ds], time.monotonic() - t0)
        for d in ds:
            d.ack()
    except _Leave:
        out[name] = ("raised", time.monotonic() - t0)
    # (closed by the test once both returned: a close wakes every waiter)


@pytest.mark.parametrize("how", ["exception", "wakeup", "close"])
def test_a_woken_receiver_that_leaves_passes_its_wake_up_on(broker: Any, tmp_broker_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            how: str) -> None:
    """Two workers asleep in ``receive(timeout=30)``; the one the message wakes leaves
    before its round (an exception, ``wakeup()``, ``close()``); the other gets it.

    Only the exception lost the message before D69 (the other worker slept 30 s):
    ``wakeup()`` and ``close()`` wake every waiter of the word anyway."""
    hook = _WaitHook(monkeypatch)
    queues: dict[str, Any] = {}
    out: dict[str, tuple[Any, float]] = {}
    ready = threading.Barrier(3, timeout=WAIT_S)

    def leave() -> None:
        me = threading.current_thread().name
        if how == "exception":
            raise _Leave
        if how == "wakeup":
            queues[me].wakeup()
        else:
            queues[me].close()  # from inside its receive: done when the receive returns

    hook.leave = leave
    ts = [threading.Thread(target=_receive_in_thread, args=(broker, name, queues, out, ready),
                           name=name) for name in ("a", "b")]
    for t in ts:
        t.start()
    ready.wait()
    for name in ("a", "b"):
        assert hook.event(name).wait(WAIT_S)
    until_asleep(tmp_broker_dir, [queue_word(broker, "jobs", "w")], 2)
    hook.armed.set()
    broker.send("jobs", b"m")
    for t in ts:
        t.join(WAIT_S + 10)
    for q in queues.values():
        q.close()
    assert len(hook.left) == 1, hook.left
    [leaver] = hook.left
    [other] = {"a", "b"} - {leaver}
    assert out[leaver][0] == ("raised" if how == "exception" else [])
    got, took = out[other]
    assert got == [b"m"], out
    assert took < WOKEN_S, f"the other worker got it after {took:.1f} s"


# -- a worker process killed between its wake-up and its round ----------------------------

def _killed_when_woken(path: str, ready: Any) -> None:
    """Receives with a long timeout; SIGKILLs itself when a wait returns woken while a
    message is ready (other wake-ups, such as an ack's, it sleeps through)."""
    real = _receive._wait
    broker: list[Any] = []

    def wait(n: Any, slot: int, seq: int, timeout: float) -> int:
        moved = real(n, slot, seq, timeout)
        if moved and timeout > 1.0:
            st = broker[0].queue_stats("one", "w")
            if st is not None and st.ready > 0:
                os.kill(os.getpid(), signal.SIGKILL)
        return moved

    _receive._wait = wait
    with mqlite.open(path, durability="none") as b:
        broker.append(b)
        q = b.queue("one", "w")
        q.receive(1, timeout=0.01)
        ready.set()
        q.receive(1, timeout=WAIT_S)
        os._exit(3)  # not reached: only a wake-up ends the wait in time


def test_a_receiver_killed_after_its_wake_up_does_not_strand_the_message(
        broker: Any, tmp_broker_dir: Path) -> None:
    """A worker process killed between its wake-up and its round took the wake-up with
    it; the liveness reap that removes it (at once: pidfd) wakes the next receiver.

    Messages are sent one at a time, each once both workers are asleep, until one wakes
    the doomed worker (the kernel wakes a futex's waiters in arrival order, and it went
    to sleep first: the first message); every message must reach the survivor (a thread
    here) within WOKEN_S (before D69 that one waited out the survivor's 30 s)."""
    broker.create_topic("one", partitions=1)  # one partition: no chained wake-ups (D67)
    # A message in flight with the earliest visibility deadline: the survivor's
    # deliveries (held, never acked here) then bump nothing, so only the sends wake
    # anyone and the doomed worker cannot be woken by anything else.
    holder = broker.queue("one", "w", visibility_timeout=25.0)
    broker.send("one", b"held")
    assert [d.value for d in holder.receive(1, timeout=WAIT_S)] == [b"held"]
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_killed_when_woken, args=(str(tmp_broker_dir), ready))
    child.start()
    q = broker.queue("one", "w")
    got: list[tuple[list[bytes], float]] = []

    def survive() -> None:
        t0 = time.monotonic()
        ds = q.receive(1, timeout=WAIT_S)  # held: an ack would wake a waiter
        got.append(([d.value for d in ds], time.monotonic() - t0))

    try:
        assert ready.wait(60)
        q.receive(1, timeout=0.01)
        slot = queue_word(broker, "one", "w")
        for i in range(1, 6):
            t = threading.Thread(target=survive, name="survivor")
            t.start()
            until_asleep(tmp_broker_dir, [slot], 2)
            broker.send("one", b"m%d" % i)
            t.join(WAIT_S + 10)
            values, took = got[-1]
            assert values == [b"m%d" % i], got
            assert took < WOKEN_S, f"message {i} reached the survivor after {took:.1f} s"
            # Dead before the reap that woke the survivor, if this message woke it.
            child.join(0)
            if child.exitcode is not None:
                break
        assert child.exitcode == -signal.SIGKILL
    finally:
        if child.is_alive():
            child.kill()
        child.join(10)
        q.close()
        holder.close()


# -- mqlite.aio ---------------------------------------------------------------------------

def test_a_cancelled_aio_receive_with_a_doorbell_takes_no_wake_up(tmp_broker_dir: Path) -> None:
    """Guard: a task cancelled as its message arrives leaves it to the other task at once
    (a doorbell takes no wake-up: every armed loop is rung; nothing to pass on)."""
    async def main() -> None:
        async with mqlite.aio.open(tmp_broker_dir, durability="none") as b:
            await b.create_topic("jobs")
            qa = await b.queue("jobs", "w").start()
            qb = await b.queue("jobs", "w").start()
            bell = b._bell()
            a = asyncio.create_task(qa.receive(1, timeout=WAIT_S))
            t0 = time.monotonic()
            bt = asyncio.create_task(qb.receive(1, timeout=WAIT_S))
            async with asyncio.timeout(WAIT_S):
                while bell.has_doorbell and bell.waiting() < 2:
                    await asyncio.sleep(0.001)  # until both are armed
            assert bell.has_doorbell
            a.cancel()
            await b.send("jobs", b"m")
            got = await bt
            took = time.monotonic() - t0
            assert [d.value for d in got] == [b"m"]
            assert took < WOKEN_S
            with pytest.raises(asyncio.CancelledError):
                await a
            await got[0].ack()

    asyncio.run(main())


class _SliceProbe:
    """Stands in for the notifier of a loop without a doorbell: reports when a worker
    thread starts a wait slice and what each slice returned."""

    def __init__(self, n: Any) -> None:
        self._n = n
        self.started = threading.Event()
        self.returned: list[bool] = []
        self.when_moved: Callable[[], None] = lambda: None  # run in the slice's thread

    def wait_any(self, slots: Any, seqs: Any, timeout: float) -> bool:
        self.started.set()
        moved = bool(self._n.wait_any(slots, seqs, timeout))
        self.returned.append(moved)
        if moved:
            self.when_moved()
        return moved

    def wait_woken(self, slot: int, seq: int, timeout: float) -> int:
        """The queue's slices (one-at-a-time word) wait with it (D76)."""
        self.started.set()
        how = int(self._n.wait_woken(slot, seq, timeout))
        self.returned.append(bool(how))
        if how:
            self.when_moved()
        return how

    def __getattr__(self, name: str) -> Any:
        return getattr(self._n, name)


_P = TypeVar("_P", bound=_SliceProbe)


def _probe_slices(b: Any, probe_type: type[_P]) -> _P:
    """Put a ``probe_type`` probe between aio broker ``b``'s doorbell-less bell and its
    notifier (the slices' waits go through it)."""
    bell = b._bell()
    assert not bell.has_doorbell
    probe = probe_type(bell._n)
    bell._n = probe
    return probe


@pytest.mark.parametrize("how", ["cancel", "wakeup"])
def test_an_aio_receive_without_a_doorbell_passes_the_wake_up_on(
        tmp_broker_dir: Path, broker: Any, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Without a free doorbell an aio receive waits in a worker thread, in slices
    (long ones here), and its slice takes the message's one wake-up before a sync worker
    that went to sleep after it.  ``cancel``: the task was cancelled before (the slice
    sleeps on in its thread); its outcome passes the wake-up on.  ``wakeup``: the queue's
    ``wakeup()`` comes as the slice returns; the receive passes it on as it leaves.
    Before D69 the sync worker slept its 30 s either way."""
    monkeypatch.setattr(mqlite.aio._bell, "_SLICE_S", WAIT_S * 2)
    hook = _WaitHook(monkeypatch)
    n = broker.notifier
    out: dict[str, tuple[Any, float]] = {}
    queues: dict[str, Any] = {}
    ready = threading.Barrier(2, timeout=WAIT_S)
    sync_worker = threading.Thread(target=_receive_in_thread,
                                   args=(broker, "sync", queues, out, ready), name="sync")
    probe: _SliceProbe | None = None

    async def main() -> None:
        nonlocal probe
        async with mqlite.aio.open(tmp_broker_dir, durability="none") as b:
            probe = _probe_slices(b, _SliceProbe)
            aq = await b.queue("jobs", "w").start()
            a = asyncio.create_task(aq.receive(1, timeout=WAIT_S))
            assert await asyncio.to_thread(probe.started.wait, WAIT_S)
            sync_worker.start()  # waits after the slice: the kernel wakes the slice first
            await asyncio.to_thread(ready.wait)
            assert await asyncio.to_thread(hook.event("sync").wait, WAIT_S)
            if how == "cancel":
                a.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await a
            else:
                probe.when_moved = aq.wakeup
            until_asleep(tmp_broker_dir, [queue_word(b.sync, "jobs", "w")], 2)
            await b.send("jobs", b"m")
            if how == "wakeup":
                assert await a == []
            await asyncio.to_thread(sync_worker.join, WAIT_S + 10)
            await aq.close()

    with every_doorbell_taken(n):
        try:
            asyncio.run(main())
        finally:
            n.bump(queue_word(broker, "jobs", "w"))  # free a slice left asleep
    assert probe is not None and probe.returned[:1] == [True], probe and probe.returned
    got, took = out["sync"]
    assert got == [b"m"], out
    assert took < WOKEN_S, f"the sync worker got it after {took:.1f} s"


# The D69 finding (receivers of every queue group of a topic shared one one-at-a-time
# word) is fixed by D70: tests/unit/test_queue_groups_wake.py.


class _LateSliceProbe(_SliceProbe):
    """A :class:`_SliceProbe` whose slice starts only once ``go`` is set (a worker thread
    scheduled late), and that records the wake-ups passed on through it."""

    def __init__(self, n: Any) -> None:
        super().__init__(n)
        self.go = threading.Event()
        self.codes: list[int] = []
        self.passed: list[int] = []

    def wait_woken(self, slot: int, seq: int, timeout: float) -> int:
        self.started.set()
        assert self.go.wait(WAIT_S)
        how = int(self._n.wait_woken(slot, seq, timeout))
        self.codes.append(how)
        if how:
            self.when_moved()
        return how

    def pass_on(self, slot: int) -> bool:
        self.passed.append(slot)
        return bool(self._n.pass_on(slot))


def test_an_aio_receive_that_only_saw_the_word_moved_passes_nothing_on(
        tmp_broker_dir: Path, broker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """D77: without a doorbell, a slice that starts after the send's bump sees the word
    moved before it sleeps (``wait_woken`` 1: no wake-up took it off the futex queue).
    A ``wakeup()`` then makes the receive leave without a round: it holds no wake-up,
    so it passes none on (before D77 any moved wait counted as woken)."""
    monkeypatch.setattr(mqlite.aio._bell, "_SLICE_S", WAIT_S * 2)
    probe: _LateSliceProbe | None = None

    async def main() -> None:
        nonlocal probe
        async with mqlite.aio.open(tmp_broker_dir, durability="none") as b:
            probe = _probe_slices(b, _LateSliceProbe)
            aq = await b.queue("jobs", "w").start()
            probe.when_moved = aq.wakeup
            a = asyncio.create_task(aq.receive(1, timeout=WAIT_S))
            assert await asyncio.to_thread(probe.started.wait, WAIT_S)
            b.sync.send("jobs", b"m")  # nobody asleep: the bump wakes nobody
            probe.go.set()
            async with asyncio.timeout(WOKEN_S):
                assert await a == []  # left without a round (wakeup)
            assert probe.codes == [1]
            assert probe.passed == []
            probe.when_moved = lambda: None
            async with asyncio.timeout(WOKEN_S):
                got = await aq.receive(1, timeout=WAIT_S)  # the message is still there
            assert [d.value for d in got] == [b"m"]
            await got[0].ack()
            await aq.close()

    with every_doorbell_taken(broker.notifier):
        asyncio.run(main())


def test_an_aio_receive_woken_through_a_doorbell_passes_nothing_on(
        tmp_broker_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guard (D77): a doorbell wait ended by the send's ring, with a ``wakeup()`` landing
    as the wait is torn down, leaves without a round and passes nothing on (every armed
    loop was rung: it took no wake-up from anyone)."""
    async def main() -> None:
        async with mqlite.aio.open(tmp_broker_dir, durability="none") as b:
            await b.create_topic("jobs")
            bell = b._bell()
            assert bell.has_doorbell
            aq = await b.queue("jobs", "w").start()
            passed: list[int] = []
            rings: list[bool] = []
            disarm = bell.disarm

            def disarm_then_wakeup(reg: Any) -> None:
                rings.append(reg[4].result())  # True: the ring ended the wait
                disarm(reg)
                aq.wakeup()  # as if from another thread, right now

            monkeypatch.setattr(bell, "disarm", disarm_then_wakeup)
            monkeypatch.setattr(bell, "pass_on", passed.append)
            a = asyncio.create_task(aq.receive(1, timeout=WAIT_S))
            async with asyncio.timeout(WAIT_S):
                while bell.waiting() < 1:
                    await asyncio.sleep(0.001)
            await b.send("jobs", b"m")
            async with asyncio.timeout(WOKEN_S):
                assert await a == []
            assert rings == [True]
            assert passed == []
            monkeypatch.setattr(bell, "disarm", disarm)
            got = await aq.receive(1, timeout=WAIT_S)
            assert [d.value for d in got] == [b"m"]
            await got[0].ack()
            await aq.close()

    asyncio.run(main())
