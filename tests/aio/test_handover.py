"""Hand-overs into the event loop (D48): ``InlineFuture`` and the worker ``Runner``.

An ``InlineFuture`` resolved outside any task resumes its awaiting task inside
the resolving callback; resolved inside a task (or cancelled) it behaves as an
asyncio future.  The ``Runner`` hands calls to worker threads and the outcome
back with one loop callback.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any

import pytest

from mqlite.aio._future import InlineFuture
from mqlite.aio._runner import WORKERS, Job, Runner
from mqlite.errors import ClosedError


def _stack_names() -> list[str]:
    f = sys._getframe(1)
    names = []
    while f is not None:
        names.append(f.f_code.co_name)
        f = f.f_back  # type: ignore[assignment]
    return names


async def _awaited_inline_future() -> tuple[Any, InlineFuture[int], list[str], Any]:
    """An InlineFuture and a task awaiting it, which records when (and where) it resumed."""
    loop = asyncio.get_running_loop()
    order: list[str] = []
    fut: InlineFuture[int] = InlineFuture(loop)

    async def waiter() -> None:
        order.append(f"resumed {await fut}")
        order.append("inside" if "resolve" in _stack_names() else "outside")

    task = loop.create_task(waiter())
    await asyncio.sleep(0)  # the task now awaits fut
    return loop, fut, order, task


def test_inline_future_resumes_its_task_inside_the_resolving_callback() -> None:
    async def main() -> None:
        loop, fut, order, task = await _awaited_inline_future()

        def resolve() -> None:
            fut.set_result(5)
            order.append("resolve returned")

        loop.call_soon(resolve)
        await task
        assert order == ["resumed 5", "inside", "resolve returned"]

    asyncio.run(main())


def test_inline_future_resolved_inside_a_task_resumes_the_next_iteration() -> None:
    async def main() -> None:
        loop, fut, order, task = await _awaited_inline_future()
        fut.set_result(1)  # this task is running: a task cannot run inside it
        order.append("set")
        await task
        assert order == ["set", "resumed 1", "outside"]
        # an exception is delivered the same way
        fut2: InlineFuture[int] = InlineFuture(loop)
        t2 = loop.create_task(_await(fut2))
        await asyncio.sleep(0)
        loop.call_soon(fut2.set_exception, ValueError("boom"))
        with pytest.raises(ValueError, match="boom"):
            await t2

    asyncio.run(main())


async def _await(aw: Any) -> Any:
    return await aw


def test_inline_future_cancels_and_composes_as_an_asyncio_future() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        # task.cancel() while awaiting it
        fut: InlineFuture[int] = InlineFuture(loop)
        task = loop.create_task(_await(fut))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert fut.cancelled()
        # asyncio.timeout around it
        fut = InlineFuture(loop)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await fut
        assert fut.cancelled()
        # wait / shield / gather, resolved from a timer (outside any task)
        fut = InlineFuture(loop)
        loop.call_later(0.001, fut.set_result, 7)
        assert await asyncio.shield(fut) == 7
        assert await asyncio.gather(fut) == [7]
        fut = InlineFuture(loop)
        loop.call_later(0.001, fut.set_result, 8)
        done, pending = await asyncio.wait([fut], timeout=10)
        assert done == {fut} and not pending
        # a removed callback is not called; a second callback runs as asyncio's do
        fut = InlineFuture(loop)
        seen: list[str] = []
        first = lambda f: seen.append("first")
        fut.add_done_callback(first)
        fut.add_done_callback(lambda f: seen.append("second"))
        assert fut.remove_done_callback(first) == 1
        fut.set_result(1)
        await asyncio.sleep(0)
        assert seen == ["second"]

    asyncio.run(main())


def test_runner_returns_results_raises_errors_and_refuses_once_closed() -> None:
    async def main() -> None:
        r = Runner()
        try:
            assert await r.run(lambda a, b: a + b, 2, 3) == 5
            assert await r.run(dict, a=1) == {"a": 1}
            with pytest.raises(ZeroDivisionError):
                await r.run(lambda: 1 / 0)
            job = r.submit(threading.get_ident)
            assert await job != threading.get_ident()  # ran in a worker thread
        finally:
            r.shutdown()
        with pytest.raises(ClosedError, match="closed"):
            await r.run(int)
        with pytest.raises(ClosedError):
            r.submit(int)

    asyncio.run(main())


def test_runner_cancel_skips_a_queued_call_and_keeps_a_started_ones_outcome() -> None:
    async def main() -> None:
        r = Runner()
        gate = threading.Event()
        started = threading.Event()
        ran: list[str] = []

        def blocker(tag: str) -> str:
            started.set()
            gate.wait(30)
            ran.append(tag)
            return tag

        try:
            # Fill every worker, then queue one more run(): cancelled before it starts,
            # it never runs.
            busy = [r.submit(blocker, f"b{i}") for i in range(WORKERS)]
            queued = asyncio.ensure_future(r.run(ran.append, "queued"))
            await asyncio.sleep(0)
            assert await asyncio.to_thread(started.wait, 30)
            queued.cancel()
            with pytest.raises(asyncio.CancelledError):
                await queued
            # A submitted job cancelled while running: its outcome arrives later.
            job = busy[0]
            job.cancel()
            later = job.outcome_later()
            assert later is not job and not later.done()
            gate.set()
            async with asyncio.timeout(30):
                assert await later == "b0"
                assert sorted(await asyncio.gather(*busy[1:])) == [
                    f"b{i}" for i in range(1, WORKERS)]
            await r.run(lambda: None)  # every queued call before it has been taken
            assert "queued" not in ran
            assert job.outcome_later() is later
        finally:
            gate.set()
            r.shutdown()

    asyncio.run(main())


def test_runner_runs_up_to_workers_calls_at_once_in_that_many_threads() -> None:
    """The runner starts exactly WORKERS threads and shutdown ends them. Judged by the
    threads themselves, not by a count: a thread left by an earlier test may end (or a
    daemon start) while this one runs."""

    async def main() -> None:
        r = Runner()
        barrier = threading.Barrier(WORKERS, timeout=30)
        before = set(threading.enumerate())
        started: list[threading.Thread] = []
        try:
            idents = await asyncio.gather(*(r.run(_meet, barrier) for _ in range(WORKERS)))
            assert len(set(idents)) == WORKERS  # all met at the barrier: in parallel
            # more calls reuse the same threads
            idents2 = await asyncio.gather(*(r.run(threading.get_ident) for _ in range(50)))
            assert set(idents2) <= set(idents)
            started = [t for t in threading.enumerate()
                       if t not in before and t.name == "mqlite-aio"]
            assert {t.ident for t in started} == set(idents)
        finally:
            r.shutdown()
        for t in started:
            await asyncio.to_thread(t.join, 30)
        assert not any(t.is_alive() for t in started)  # shutdown ends every worker

    asyncio.run(main())


def _meet(barrier: threading.Barrier) -> int:
    barrier.wait()
    return threading.get_ident()


def test_an_outcome_already_on_its_way_when_cancelled_is_kept_for_later() -> None:
    """The worker handed the outcome back, then the job was cancelled before the loop ran
    that hand-back: ``outcome_later`` (asked afterwards, as a cancelled poll does) still
    gets it, so a cancelled round's messages are put back, never lost."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        job = Job(loop, int, (), False)  # (not queued: the worker's part is played here)
        job.hand_back(True, 42)
        assert job.cancel()
        await asyncio.sleep(0)  # the hand-back runs: the job is cancelled already
        later = job.outcome_later()
        assert later.done() and later.result() == 42
        # and an error the same way
        job = Job(loop, int, (), False)
        job.cancel()
        later = job.outcome_later()
        job.hand_back(False, KeyError("k"))
        with pytest.raises(KeyError):
            await later

    asyncio.run(main())
