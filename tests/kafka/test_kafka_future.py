"""KafkaFuture: the Kafka producer's per-record future (C), without a broker.

Resolved by librdkafka's delivery report (it is the ``on_delivery`` callback);
the same methods and guarantees as :class:`mqlite.SendFuture`.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

pytest.importorskip("confluent_kafka")

from confluent_kafka import KafkaError

import mqlite
from mqlite.kafka import KafkaFuture


class _Msg:
    """The four calls a delivery report's message answers."""

    def topic(self) -> str:
        return "orders"

    def partition(self) -> int:
        return 3

    def offset(self) -> int:
        return 41

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)


def test_delivery_report_resolves_to_record_metadata() -> None:
    fut: KafkaFuture[Any] = KafkaFuture()
    assert not fut.done() and not fut.running() and not fut.cancelled()
    assert "pending" in repr(fut)
    fut(None, _Msg())
    assert fut.done()
    md = fut.result(timeout=0)
    assert md == mqlite.RecordMetadata("orders", 3, 41, 1_700_000_000_000)
    assert fut.result() is md  # built once
    assert fut.exception() is None
    assert "offset=41" in repr(fut)


def test_error_report_raises_the_mapped_mqlite_error() -> None:
    fut: KafkaFuture[Any] = KafkaFuture()
    fut(KafkaError(KafkaError._MSG_TIMED_OUT), _Msg())
    with pytest.raises(mqlite.TimeoutError, match="send to 'orders'"):
        fut.result()
    assert isinstance(fut.exception(), mqlite.TimeoutError)
    assert "raised TimeoutError" in repr(fut)


def test_resolved_once_and_cancel() -> None:
    fut: KafkaFuture[Any] = KafkaFuture()
    assert fut.cancel() is True
    assert fut.cancel() is False
    fut(None, _Msg())  # a late report changes nothing
    assert fut.cancelled() and fut.done()
    with pytest.raises(mqlite.CancelledError):
        fut.result()
    with pytest.raises(mqlite.CancelledError):
        fut.exception()
    done: KafkaFuture[Any] = KafkaFuture()
    done.set_result(7)
    done.set_exception(ValueError("late"))
    assert done.result() == 7 and done.cancel() is False


def test_callbacks_run_once_on_resolution_or_at_once() -> None:
    seen: list[Any] = []
    fut: KafkaFuture[Any] = KafkaFuture()
    fut.add_done_callback(lambda f: seen.append(("a", f.result().offset)))
    fut.add_done_callback(lambda f: seen.append(("b", f.done())))
    with pytest.raises(TypeError, match="callable"):
        fut.add_done_callback(42)  # type: ignore[arg-type]
    assert seen == []
    fut(None, _Msg())
    fut(None, _Msg())
    assert seen == [("a", 41), ("b", True)]
    fut.add_done_callback(lambda f: seen.append(("late", f.done())))
    assert seen[-1] == ("late", True)


def test_a_raising_callback_is_logged_not_propagated(caplog: pytest.LogCaptureFixture) -> None:
    fut: KafkaFuture[Any] = KafkaFuture()

    def boom(_: Any) -> None:
        raise RuntimeError("boom")

    fut.add_done_callback(boom)
    fut(None, _Msg())
    assert fut.result().partition == 3
    assert "exception in a send future callback" in caplog.text


def test_waiters_without_a_producer_wake_on_the_report() -> None:
    fut: KafkaFuture[Any] = KafkaFuture()
    with pytest.raises(mqlite.TimeoutError):
        fut.result(timeout=0.01)
    with pytest.raises(TypeError, match="seconds"):
        fut.result(timeout="1")  # type: ignore[arg-type]
    ready = threading.Barrier(4)
    got: list[Any] = []

    def wait() -> None:
        ready.wait()
        got.append(fut.result(timeout=60))

    threads = [threading.Thread(target=wait) for _ in range(3)]
    for t in threads:
        t.start()
    ready.wait()
    fut(None, _Msg())
    for t in threads:
        t.join(60)
    assert [md.offset for md in got] == [41, 41, 41]


def test_a_waiter_serves_its_producers_reports() -> None:
    class Owner:
        def __init__(self) -> None:
            self.calls = 0

        def serve_for_waiter(self, timeout: float) -> None:
            assert 0 < timeout <= 0.1
            self.calls += 1
            if self.calls == 3:
                fut(None, _Msg())

    owner = Owner()
    fut: KafkaFuture[Any] = KafkaFuture(owner)
    assert fut.result().offset == 41
    assert owner.calls == 3
    idle: KafkaFuture[Any] = KafkaFuture(type("Idle", (), {
        "serve_for_waiter": lambda self, t: None})())
    with pytest.raises(mqlite.TimeoutError):
        idle.result(timeout=0.05)


def test_confluent_reports_are_read_through_their_getters() -> None:
    from confluent_kafka import Message as KMessage

    report = KMessage(topic="orders", partition=5, offset=9, timestamp=(1, 123), value=b"v")
    fut: KafkaFuture[Any] = KafkaFuture()
    fut(None, report)
    fake: KafkaFuture[Any] = KafkaFuture()
    fake(None, _Msg())  # another type after confluent's: the getters by name
    assert fut.result() == mqlite.RecordMetadata("orders", 5, 9, 123)
    assert fake.result() == mqlite.RecordMetadata("orders", 3, 41, 1_700_000_000_000)
