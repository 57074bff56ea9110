"""Delayed messages: ``send(..., delay=)`` / ``deliver_at=`` (mqlite.scheduler)."""

from __future__ import annotations

import threading
import time

import pytest

import mqlite


@pytest.fixture
def broker(tmp_broker_dir):
    b = mqlite.open(tmp_broker_dir, durability="none")
    b.create_topic("t")
    yield b
    b.close()


def test_delay_hides_until_due_then_wakes_a_blocked_queue_receiver(broker):
    q = broker.queue("t", group="g")
    sent = time.monotonic()
    md = broker.send("t", b"later", delay=1.0)
    assert md.offset == -1 and md.partition == -1
    assert q.receive(1, timeout=0.2) == []  # 0.8 s before due: room for a stalled thread
    (d,) = q.receive(1, timeout=30.0)
    waited = time.monotonic() - sent
    # Not before it is due; woken when due, not at the receive's 30 s timeout (no tight
    # upper bound: a loaded machine wakes the thread late).
    assert d.value == b"later" and 1.0 <= waited < 10.0, waited
    d.ack()
    q.close()


def test_stream_consumer_sees_delayed_message_when_due(broker):
    c = broker.consumer("t")
    broker.send("t", b"now")
    broker.send("t", b"soon", delay=0.3, headers=[("h", b"1")], key=b"k")
    first = c.poll(timeout=0.1)
    assert [m.value for m in first] == [b"now"]
    t0 = time.monotonic()
    got = c.poll(timeout=30.0)
    assert [(m.value, m.key, m.headers) for m in got] == [(b"soon", b"k", [("h", b"1")])]
    # woken when due, not at the poll's 30 s timeout (no tight bound: load delays wake-ups)
    assert time.monotonic() - t0 < 10.0
    c.close()


def test_deliver_at_and_order_within_the_same_due_time(broker):
    due = time.time() + 0.2
    for i in range(5):
        broker.send("t", b"%d" % i, deliver_at=due)
    broker.send("t", b"first", deliver_at=due - 0.1)
    q = broker.queue("t", group="g")
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(got) < 6 and time.monotonic() < deadline:
        ds = q.receive(10, timeout=0.5)
        got += [d.value for d in ds]
        q.ack(ds)
    assert got == [b"first", b"0", b"1", b"2", b"3", b"4"]
    assert time.time() >= due
    q.close()


def test_delayed_messages_survive_close_and_reopen(tmp_broker_dir):
    # Due 3 s ahead: the close and the reopen (fsyncs on a loaded disk) must not make it
    # due before the "not yet due" check.
    due = time.time() + 3.0
    with mqlite.open(tmp_broker_dir, durability="sync") as b:
        b.create_topic("t")
        b.send("t", b"durable", deliver_at=due, partition=0)
    with mqlite.open(tmp_broker_dir, durability="sync") as b:
        assert b.promote_scheduled() == 0  # not yet due
        assert b.read("t") == []
        time.sleep(max(0.0, due - time.time()) + 0.05)
        assert b.promote_scheduled() == 1
        (m,) = b.read("t")
        assert m.value == b"durable"


def test_many_threads_schedule_without_collisions(broker):
    due = time.time() + 0.1

    def sched(i: int) -> None:
        for j in range(50):
            broker.send("t", b"%d-%d" % (i, j), deliver_at=due)

    ths = [threading.Thread(target=sched, args=(i,)) for i in range(4)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    time.sleep(0.15)
    assert broker.promote_scheduled() == 200
    assert len(broker.read("t", max_records=1000)) == 200


def test_delay_argument_errors(broker):
    with pytest.raises(ValueError):
        broker.send("t", b"x", delay=1, deliver_at=time.time())
    with pytest.raises(ValueError):
        broker.send("t", b"x", delay=-1)
    with pytest.raises(ValueError):
        broker.send("t", b"x", delay=float("inf"))
    with pytest.raises(TypeError):
        broker.send("t", b"x", delay="1")
    with pytest.raises(TypeError):
        broker.send("t", "text", delay=1)
    with pytest.raises(mqlite.TopicNotFoundError):
        broker.send("nope", b"x", delay=1)
    with pytest.raises(mqlite.PartitionNotFoundError):
        broker.send("t", b"x", delay=1, partition=3)
    with pytest.raises(mqlite.MessageTooLargeError):
        broker.send("t", b"x" * (9 << 20), delay=1)
    assert broker.promote_scheduled() == 0


def test_delayed_message_to_a_deleted_topic_is_dropped(broker):
    broker.create_topic("gone")
    broker.send("gone", b"x", delay=0.05)
    broker.delete_topic("gone")
    time.sleep(0.06)
    assert broker.promote_scheduled() == 1
    assert "gone" not in broker.topics()
