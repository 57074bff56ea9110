"""The steps of an ``await poll()`` between a ring and the poll's return (D72).

* The io_uring reader callback disarms a slot left without waits only after the
  woken tasks resumed, and not at all when one of them armed it again inline.
* A woken poll runs its next round through ``Consumer.loop_step``: the round,
  result and errors of ``poll_step(writes=False)``, with no Python frame of its own
  (D79).
* That round, when it returns messages, notes its drained read without copying the
  positions; the next round skips its read on that note only when no other call of
  the consumer came in between (D79).
* A ``wakeup()`` that lands while a woken wait is being torn down still ends the
  poll at once (the wake lock is taken only when one is pending).
* ``AsyncQueue.receive`` takes its lock before a wait, not after it (D77), and a
  ``wakeup()`` landing as its woken wait is torn down still ends it at once.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from _polling import waiters_word

import mqlite
import mqlite.aio
from mqlite.aio._future import InlineFuture
from mqlite.consumer import Consumer

#: csrc/notify.h MQ_NOTIFY_BELL_UNIT: one armed doorbell in a slot's waiters word.
BELL_UNIT = 1 << 16


def _bells_on(path: Path, slot: int) -> int:
    return waiters_word(os.path.join(path, "notify.shm"), slot) // BELL_UNIT


def _uring_bell(b: Any) -> Any:
    bell = b._bell()
    if not bell.via_uring:
        pytest.skip("no futex waits through io_uring here (Linux >= 6.7)")
    return bell


def test_the_reader_callback_disarms_after_the_woken_task_resumed(tmp_broker_dir: Path) -> None:
    """The resumed task still sees its slot armed (one doorbell on the word); once the
    callback returned, the slot is disarmed (no doorbell on the word, no wait left)."""

    async def main() -> None:
        async with mqlite.aio.open(tmp_broker_dir, durability="none") as b:
            bell = _uring_bell(b)
            n = b.sync.notifier
            loop = asyncio.get_running_loop()
            slot = 9
            seen: list[int] = []
            fut: asyncio.Future[bool] = InlineFuture(loop)

            async def waiter() -> None:
                reg = bell.arm(slot, n.load(slot), 30.0, fut)
                try:
                    assert await fut is True
                    seen.append(_bells_on(tmp_broker_dir, slot))  # inside the callback
                finally:
                    bell.disarm(reg)

            task = asyncio.create_task(waiter())
            await asyncio.sleep(0)  # armed
            assert _bells_on(tmp_broker_dir, slot) == 1
            n.bump(slot)
            async with asyncio.timeout(10):
                await task
            assert seen == [1]
            assert _bells_on(tmp_broker_dir, slot) == 0
            assert bell.waiting() == 0

    asyncio.run(main())


def test_a_slot_armed_again_by_the_resumed_task_stays_armed(tmp_broker_dir: Path) -> None:
    """A task resumed inside the callback arms the same word again before the callback
    disarms emptied slots: the slot keeps its doorbell (one, not two), and the next bump
    wakes the new wait."""

    async def main() -> None:
        async with mqlite.aio.open(tmp_broker_dir, durability="none") as b:
            bell = _uring_bell(b)
            n = b.sync.notifier
            loop = asyncio.get_running_loop()
            slot = 11
            rounds: list[int] = []

            async def waiter() -> None:
                for _ in range(3):
                    fut: asyncio.Future[bool] = InlineFuture(loop)
                    reg = bell.arm(slot, n.load(slot), 30.0, fut)
                    try:
                        assert await fut is True
                    finally:
                        bell.disarm(reg)
                    rounds.append(_bells_on(tmp_broker_dir, slot))

            task = asyncio.create_task(waiter())
            for i in range(3):
                while bell.waiting() == 0:
                    await asyncio.sleep(0)
                assert _bells_on(tmp_broker_dir, slot) == 1
                n.bump(slot)
                async with asyncio.timeout(10):  # a slot disarmed under the wait: 30 s
                    while len(rounds) <= i:
                        await asyncio.sleep(0)
            async with asyncio.timeout(10):
                await task
            assert rounds == [1, 1, 1]  # each read inside the callback, before its disarm
            assert _bells_on(tmp_broker_dir, slot) == 0
            assert bell.waiting() == 0

    asyncio.run(main())


def test_loop_step_is_poll_step_without_writes(tmp_broker_dir: Path) -> None:
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t")
        one = b.consumer("t", max_poll_records=2)
        other = b.consumer("t", max_poll_records=2)
        for i in range(3):
            b.send("t", f"m{i}".encode())
        a = one.loop_step(None)  # the consumer's max_poll_records
        p = other.poll_step(None, writes=False)
        assert [m.value for m in a.messages] == [m.value for m in p.messages] == [b"m0", b"m1"]
        assert a.done and p.done and not a.needs_writes
        a, p = one.loop_step(5), other.poll_step(5, writes=False)
        assert [m.value for m in a.messages] == [m.value for m in p.messages] == [b"m2"]
        a, p = one.loop_step(5), other.poll_step(5, writes=False)
        assert not a.done and not p.done
        assert (a.slot, a.seq, a.wait) == (p.slot, p.seq, p.wait)
        for bad, exc in ((0, ValueError), (-1, ValueError), (True, TypeError),
                         (1.0, TypeError), ("1", TypeError)):
            with pytest.raises(exc):
                one.loop_step(bad)  # type: ignore[arg-type]
            with pytest.raises(exc):
                other.poll_step(bad, writes=False)  # type: ignore[arg-type]
        one.close()
        with pytest.raises(mqlite.ClosedError):
            one.loop_step(None)
        other.close()


def _python_calls(fn: Any) -> list[str]:
    """The names of the Python functions ``fn()`` called, in order (``fn``'s own frame,
    a lambda here, left out)."""
    names: list[str] = []

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            names.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return names[1:]


def test_loop_step_has_no_python_frame_of_its_own(tmp_broker_dir: Path) -> None:
    """D79: the compiled wrapper enters the guard and runs ``_step`` itself; the Python
    method (``_loop_step_checked``) runs only for an argument or state to check."""
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t")
        c = b.consumer("t")
        b.send("t", b"a")
        calls = _python_calls(lambda: c.loop_step(10))
        assert calls[:2] == ["closed", "_step"]  # (the broker's ``closed`` property, checked)
        assert "loop_step" not in calls and "_loop_step_checked" not in calls
        assert _python_calls(lambda: c.loop_step(None))[:2] == ["closed", "_step"]

        def bad() -> None:
            with pytest.raises(TypeError):
                c.loop_step(True)

        assert "_loop_step_checked" in _python_calls(bad)
        assert Consumer.loop_step.__doc__ is not None
        c.close()


def _counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Count the calls of ``Consumer.<name>`` (which still runs)."""
    seen: list[int] = []
    orig = getattr(Consumer, name)

    def counted(self: Consumer, *args: Any) -> Any:
        seen.append(1)
        return orig(self, *args)

    monkeypatch.setattr(Consumer, name, counted)
    return seen


def test_a_loop_round_notes_its_drained_read_late(
        tmp_broker_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """D79: the loop's round that returns messages does not run ``_note_drained`` (its
    checks and positions copy); the next round still skips its read (no ``_fetch``) when
    nothing moved and it is the only call since.  The synchronous poll still notes at
    once (its path is unchanged)."""
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t")
        c = b.consumer("t")
        c.poll(timeout=0.01)  # positions resolved
        b.send("t", b"a")
        noted = _counting(monkeypatch, "_note_drained")
        assert [m.value for m in c.loop_step(10).messages] == [b"a"]
        assert noted == []
        fetched = _counting(monkeypatch, "_fetch")
        step = c.loop_step(10)
        assert not step.done and fetched == []  # skipped on the late note
        step = c.loop_step(10)
        assert not step.done and fetched == [1]  # (a skip consumes the note: this one reads)
        assert noted == [1]  # a round that found nothing notes at once (before a wait)
        noted.clear()
        b.send("t", b"b")
        assert [m.value for m in c.poll(10, timeout=5)] == [b"b"]
        assert noted == [1]
        c.close()


@pytest.mark.parametrize("between", ["seek", "position", "assign"])
def test_a_call_between_loop_rounds_voids_the_late_note(
        tmp_broker_dir: Path, monkeypatch: pytest.MonkeyPatch, between: str) -> None:
    """A seek (or any other call) between the round that returned messages and the next
    round makes that round read: the positions the late note stands for may have
    changed.  After a seek back to 0 it returns the message again; a skip would have
    said "wait" (with the count check removed from ``_skip`` this test fails)."""
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t")
        c = b.consumer()
        c.assign([("t", 0)])
        assert c.poll(timeout=0.01) == []  # the partition's id learnt: its word waited on
        b.send("t", b"a")
        assert [m.value for m in c.loop_step(10).messages] == [b"a"]
        fetched = _counting(monkeypatch, "_fetch")
        if between == "seek":
            c.seek(("t", 0), 0)
        elif between == "position":
            assert c.position(("t", 0)) == 1
        else:
            c.assign([("t", 0)])  # the same partition, a new assignment list
        step = c.loop_step(10)
        assert fetched == [1]  # read, not skipped
        if between == "seek":
            assert [m.value for m in step.messages] == [b"a"]
        else:
            assert not step.done and step.messages == []
        c.close()


def test_an_await_poll_after_a_seek_returns_the_messages_again(tmp_broker_dir: Path) -> None:
    """The same through ``mqlite.aio``: ``seek`` between two polls is not lost to the
    late note (the second poll would otherwise wait its 30 s timeout)."""

    async def main() -> None:
        async with mqlite.aio.open(tmp_broker_dir, durability="none") as b:
            await b.create_topic("t")
            c = b.consumer()
            c.assign([("t", 0)])
            assert await c.poll(timeout=0.01) == []
            task = asyncio.create_task(c.poll(10, timeout=30))
            await asyncio.sleep(0)
            await b.send("t", b"a")
            async with asyncio.timeout(10):
                assert [m.value for m in await task] == [b"a"]  # a woken loop round
            c.seek(("t", 0), 0)
            async with asyncio.timeout(10):
                assert [m.value for m in await c.poll(10, timeout=30)] == [b"a"]
            await c.close()

    asyncio.run(main())


def test_loop_step_of_a_group_member_asks_for_writes(tmp_broker_dir: Path) -> None:
    """A member that must join first cannot do it on the loop: needs_writes, as poll_step."""
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("t")
        c = b.consumer("t", group="g")
        step = c.loop_step(10)
        assert step.needs_writes and not step.done and step.messages == []
        c.close()


def test_a_wakeup_landing_as_a_woken_wait_ends_returns_at_once(
        tmp_broker_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bump with nothing to read ends the wait; a wakeup() that lands while the wait is
    torn down (inside the bell's disarm) makes the poll return [] instead of waiting on
    for its 30 s timeout."""

    async def main() -> None:
        async with mqlite.aio.open(tmp_broker_dir, durability="none") as b:
            await b.create_topic("t")
            c = b.consumer("t")
            assert await c.poll(timeout=0.01) == []
            bell = b._bell()
            n = b.sync.notifier
            disarm = bell.disarm
            calls: list[int] = []

            def disarm_then_wakeup(reg: Any) -> None:
                disarm(reg)
                calls.append(1)
                c.wakeup()  # as if from another thread, right now

            monkeypatch.setattr(bell, "disarm", disarm_then_wakeup)
            task = asyncio.create_task(c.poll(timeout=30))
            while bell.waiting() == 0:
                await asyncio.sleep(0)
            n.bump(c.sync._wait_slots()[0])  # the word the poll waits on, no record
            async with asyncio.timeout(10):
                assert await task == []
            assert calls
            monkeypatch.setattr(bell, "disarm", disarm)
            b.sync.send("t", b"x")  # the wake-up was taken: the next poll reads
            async with asyncio.timeout(10):
                assert [m.value for m in await c.poll(timeout=30)] == [b"x"]
            await c.close()

    asyncio.run(main())


class _CountingLock:
    """A ``threading.Lock`` that counts how often it was taken."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.taken = 0

    def __enter__(self) -> bool:
        self._lock.acquire()
        self.taken += 1
        return True

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


@pytest.mark.parametrize("doorbell", [True, False])
def test_a_woken_receive_takes_its_lock_only_before_the_wait(
        tmp_broker_dir: Path, doorbell: bool) -> None:
    """A receive that waits once and is woken by a send takes the queue's lock twice: at
    its start and to register its wait; none after the wait (D77)."""

    async def main() -> None:
        async with mqlite.aio.open(tmp_broker_dir, durability="none") as b:
            await b.create_topic("t")
            bell = b._bell()
            index = bell._index
            if not doorbell:  # as a loop without a doorbell: the wait sleeps in a worker
                bell._index = -1
            try:
                q = await b.queue("t", "g").start()
                assert await q.receive(1, timeout=0.01) == []
                lock = q._lock = _CountingLock()  # type: ignore[assignment]
                task = asyncio.create_task(q.receive(1, timeout=30))
                async with asyncio.timeout(10):
                    while lock.taken < 2:  # registered its wait
                        await asyncio.sleep(0.001)
                await b.send("t", b"x")
                async with asyncio.timeout(10):
                    got = await task
                assert [d.value for d in got] == [b"x"]
                assert lock.taken == 2
                await got[0].ack()
                await q.close()
            finally:
                bell._index = index  # the doorbell is released at close

    asyncio.run(main())


def test_a_wakeup_landing_as_a_woken_receive_wait_ends_returns_at_once(
        tmp_broker_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bump with nothing to take ends the receive's wait; a wakeup() that lands while
    the wait is torn down (inside the bell's disarm) makes the receive return [] at once,
    without the lock after the wait (D77); the next receive takes the message."""

    async def main() -> None:
        async with mqlite.aio.open(tmp_broker_dir, durability="none") as b:
            await b.create_topic("t")
            q = await b.queue("t", "g").start()
            assert await q.receive(1, timeout=0.01) == []
            bell = b._bell()
            n = b.sync.notifier
            disarm = bell.disarm
            calls: list[int] = []

            def disarm_then_wakeup(reg: Any) -> None:
                calls.append(reg[3])
                disarm(reg)
                q.wakeup()  # as if from another thread, right now

            monkeypatch.setattr(bell, "disarm", disarm_then_wakeup)
            task = asyncio.create_task(q.receive(1, timeout=30))
            async with asyncio.timeout(10):
                while bell.waiting() == 0:
                    await asyncio.sleep(0)
            n.bump(q.sync._slot)  # the receive's word, no message
            async with asyncio.timeout(10):
                assert await task == []
            assert calls
            assert not q._wake_pending  # the wakeup found the wait: nothing left pending
            monkeypatch.setattr(bell, "disarm", disarm)
            await b.send("t", b"x")
            async with asyncio.timeout(10):
                got = await q.receive(1, timeout=30)
            assert [d.value for d in got] == [b"x"]
            await got[0].ack()
            await q.close()

    asyncio.run(main())


def test_a_wakeup_during_a_receive_round_ends_that_receive_only(
        tmp_broker_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wakeup() that lands while a receive runs its round (no wait registered yet) ends
    that receive with [] before it waits, and is consumed by it: the next receive waits
    and takes a message sent while it waits (before the fix the flag stayed set and the
    next receive returned [] after one round too)."""

    async def main() -> None:
        async with mqlite.aio.open(tmp_broker_dir, durability="none") as b:
            await b.create_topic("t")
            q = await b.queue("t", "g").start()
            step = q._step
            rounds: list[int] = []

            async def step_then_wakeup(*args: Any) -> Any:
                out = await step(*args)
                if not rounds:
                    q.wakeup()  # as if from another thread, during the first round
                rounds.append(1)
                return out

            monkeypatch.setattr(q, "_step", step_then_wakeup)
            async with asyncio.timeout(10):
                assert await q.receive(1, timeout=30) == []
            assert len(rounds) == 1
            bell = b._bell()
            task = asyncio.create_task(q.receive(1, timeout=30))
            async with asyncio.timeout(10):
                while bell.waiting() == 0 and not task.done():
                    await asyncio.sleep(0)
            assert not task.done(), "the next receive returned without waiting"
            await b.send("t", b"x")
            async with asyncio.timeout(10):
                got = await task
            assert [d.value for d in got] == [b"x"]
            await got[0].ack()
            await q.close()

    asyncio.run(main())
