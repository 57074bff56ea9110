"""SendFuture: the producer's light future (resolution, waiting, timeouts, cancel, callbacks)."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest

import mqlite
from mqlite.future import SendFuture


def test_result_blocks_until_resolved_from_another_thread() -> None:
    fut: SendFuture[int] = SendFuture()
    assert not fut.done() and not fut.cancelled() and not fut.running()
    steps: list[str] = []
    go = threading.Event()

    def resolve() -> None:
        go.wait(10)  # the main thread is about to block in result()
        steps.append("resolved")
        fut.set_result(42)

    t = threading.Thread(target=resolve)
    t.start()
    go.set()
    assert fut.result(timeout=10) == 42
    steps.append("returned")
    t.join(10)
    assert steps == ["resolved", "returned"]  # result() waited for the resolution
    assert fut.done() and fut.exception() is None
    assert fut.result() == 42  # again: resolved futures answer at once


def test_many_waiters_all_released_by_one_resolution() -> None:
    fut: SendFuture[str] = SendFuture()
    got: list[str] = []
    lock = threading.Lock()

    def wait() -> None:
        r = fut.result(timeout=10)
        with lock:
            got.append(r)

    ts = [threading.Thread(target=wait) for _ in range(8)]
    for t in ts:
        t.start()
    time.sleep(0.05)
    fut.set_result("x")
    for t in ts:
        t.join(10)
    assert got == ["x"] * 8


def test_timeout_raises_mqlite_timeout_catchable_as_builtin() -> None:
    fut: SendFuture[int] = SendFuture()
    with pytest.raises(mqlite.TimeoutError):
        fut.result(timeout=0.01)
    with pytest.raises(TimeoutError):  # builtin, as concurrent.futures raises
        fut.exception(timeout=0)
    fut.set_result(1)
    assert fut.result(timeout=0) == 1


@pytest.mark.parametrize("bad", ["1", [1], True])
def test_timeout_must_be_a_number(bad: object) -> None:
    fut: SendFuture[int] = SendFuture()
    with pytest.raises(TypeError, match="timeout"):
        fut.result(timeout=bad)  # type: ignore[arg-type]


def test_exception_is_raised_by_result_and_returned_by_exception() -> None:
    fut: SendFuture[int] = SendFuture()
    err = mqlite.MessageTooLargeError("too big")
    fut.set_exception(err)
    assert fut.exception() is err
    with pytest.raises(mqlite.MessageTooLargeError):
        fut.result()


def test_resolved_once_first_outcome_wins() -> None:
    fut: SendFuture[int] = SendFuture()
    fut.set_result(1)
    fut.set_result(2)
    fut.set_exception(ValueError("late"))
    assert fut.cancel() is False
    assert fut.result() == 1 and fut.exception() is None


def test_cancel_pending_then_result_raises_cancelled() -> None:
    fut: SendFuture[int] = SendFuture()
    assert fut.cancel() is True
    assert fut.cancelled() and fut.done()
    with pytest.raises(mqlite.CancelledError):
        fut.result()
    with pytest.raises(concurrent.futures.CancelledError):  # the stdlib name catches it too
        fut.exception()
    fut.set_result(3)  # a late resolution changes nothing
    assert fut.cancelled()


def test_callbacks_run_once_on_resolution_or_at_once_when_done() -> None:
    fut: SendFuture[int] = SendFuture()
    calls: list[tuple[str, int]] = []
    fut.add_done_callback(lambda f: calls.append(("before", f.result())))
    fut.set_result(7)
    fut.add_done_callback(lambda f: calls.append(("after", f.result())))
    assert calls == [("before", 7), ("after", 7)]
    with pytest.raises(TypeError, match="callable"):
        fut.add_done_callback(7)  # type: ignore[arg-type]


def test_failing_callback_is_logged_and_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    fut: SendFuture[int] = SendFuture()
    calls: list[int] = []

    def boom(_: SendFuture[int]) -> None:
        raise RuntimeError("callback bug")

    fut.add_done_callback(boom)
    fut.add_done_callback(lambda f: calls.append(f.result()))
    with caplog.at_level("ERROR", logger="mqlite.producer"):
        fut.set_result(5)
    assert calls == [5]
    assert "callback" in caplog.text


def test_callback_registration_races_resolution_without_loss() -> None:
    """Every callback registered around the moment of resolution runs exactly once."""

    def register(fut: SendFuture[int], calls: list[int], start: threading.Barrier) -> None:
        start.wait()
        for i in range(20):
            def note(f: SendFuture[int], i: int = i) -> None:
                calls.append(i)
            fut.add_done_callback(note)

    for _ in range(200):
        fut: SendFuture[int] = SendFuture()
        calls: list[int] = []
        start = threading.Barrier(2)
        t = threading.Thread(target=register, args=(fut, calls, start))
        t.start()
        start.wait()
        fut.set_result(0)
        t.join(10)
        assert sorted(calls) == list(range(20))


def test_a_future_its_helper_resolves_makes_no_gate() -> None:
    """D78: a future resolved before anyone has to wait (the waiting thread's helper
    committed the record itself, D49) never allocates its completion lock; a wait that
    does block makes it once, and later waits reuse it."""
    fut: SendFuture[int] = SendFuture(lambda: fut.set_result(7))
    assert fut._gate is None
    assert fut.result() == 7
    assert fut._gate is None  # resolved in the helper: nothing was made to wait on

    blocked: SendFuture[int] = SendFuture()
    with pytest.raises(mqlite.TimeoutError):
        blocked.result(timeout=0.01)
    gate = blocked._gate
    assert gate is not None and gate.locked()  # made (held) by the wait that blocked
    with pytest.raises(mqlite.TimeoutError):
        blocked.result(timeout=0.01)
    assert blocked._gate is gate
    blocked.set_result(1)
    assert blocked.result(timeout=10) == 1 and not gate.locked()


def test_resolution_racing_the_first_wait_never_loses_the_wake_up() -> None:
    """D78: the first waiter makes the gate while another thread resolves the future;
    every wait returns (a lost wake-up would time out), with one or many waiters."""

    def wait(fut: SendFuture[int], start: threading.Barrier, got: list[int]) -> None:
        start.wait()
        got.append(fut.result(timeout=20))

    for waiters in (1, 3):
        for i in range(300):
            fut: SendFuture[int] = SendFuture()
            got: list[int] = []
            start = threading.Barrier(waiters + 1)
            ts = [threading.Thread(target=wait, args=(fut, start, got)) for _ in range(waiters)]
            for t in ts:
                t.start()
            start.wait()
            fut.set_result(i)
            for t in ts:
                t.join(30)
            assert got == [i] * waiters, (waiters, i, got)


def test_repr_names_the_state() -> None:
    fut: SendFuture[int] = SendFuture()
    assert "pending" in repr(fut)
    fut.set_exception(ValueError("x"))
    assert "ValueError" in repr(fut)
