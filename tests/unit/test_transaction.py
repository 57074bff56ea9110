"""broker.transaction(): sends, offset commits, acks and processed-ids, all or nothing."""

from __future__ import annotations

import pytest

import mqlite
from mqlite import TopicPartition


@pytest.fixture
def broker(tmp_broker_dir):
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("in", partitions=2)
        b.create_topic("out")
        yield b


def _all(b, topic):
    return [m.value for m in b.consumer(topic).poll(max_records=10_000, timeout=0)]


def test_consume_process_produce_commits_together(broker):
    for i in range(10):
        broker.send("in", b"%d" % i, partition=i % 2)
    c = broker.consumer("in", group="proc", commit="manual")
    msgs = c.poll(max_records=100, timeout=1)
    assert len(msgs) == 10
    with broker.transaction() as tx:
        futs = [tx.send("out", m.value + b"!") for m in msgs]
        tx.commit_offsets(c)
    assert [f.result().offset for f in futs] == list(range(10))
    assert sorted(_all(broker, "out")) == sorted(m.value + b"!" for m in msgs)
    assert c.committed(TopicPartition("in", 0)) == 5
    assert c.committed(TopicPartition("in", 1)) == 5
    c.close()


def test_exception_in_block_applies_nothing(broker):
    broker.send("in", b"x")
    c = broker.consumer("in", group="g", commit="manual")
    c.poll(timeout=1)
    with pytest.raises(RuntimeError), broker.transaction() as tx:
        f = tx.send("out", b"never")
        tx.commit_offsets(c)
        tx.record_processed("evt")
        raise RuntimeError("handler failed")
    assert f.cancelled()
    assert _all(broker, "out") == []
    assert c.committed(TopicPartition("in", 0)) is None
    assert not broker.is_processed("evt")
    c.close()


def test_fenced_commit_aborts_the_sends(broker):
    broker.send("in", b"x", partition=0)
    c = broker.consumer("in", group="g", commit="manual")
    c.poll(timeout=1)
    with pytest.raises(mqlite.CommitFailedError), broker.transaction() as tx:
        f = tx.send("out", b"dup?")
        tx.commit_offsets(c, {TopicPartition("in", 0): 1, TopicPartition("out", 0): 1})
    assert isinstance(f.exception(), mqlite.CommitFailedError)
    assert _all(broker, "out") == []
    c.close()


def test_queue_ack_in_transaction(broker):
    broker.send("in", b"job", partition=0)
    q = broker.queue("in", "workers", visibility_timeout=30)
    (d,) = q.receive(max_messages=1, timeout=1)
    with broker.transaction() as tx:
        tx.send("out", b"result")
        tx.ack(d)
    assert _all(broker, "out") == [b"result"]
    assert q.pending() == []
    with pytest.raises(mqlite.StaleDeliveryError), broker.transaction() as tx:
        tx.send("out", b"second")
        tx.ack(d)  # already acked: the whole transaction is refused
    assert _all(broker, "out") == [b"result"]
    q.close()


def test_processed_ids_and_expiry(broker):
    with broker.transaction() as tx:
        assert not tx.is_processed("e1")
        tx.record_processed("e1", ttl=60)
        assert tx.is_processed("e1")
        tx.record_processed("short", scope="s", ttl=0.001)
    assert broker.is_processed("e1")
    assert not broker.is_processed("e1", scope="other")
    import time

    time.sleep(0.01)
    assert not broker.is_processed("short", scope="s")
    with pytest.raises(TypeError):
        broker.is_processed(12)


def test_publish_inside_transaction(broker):
    broker.declare_exchange("fx", "fanout")
    broker.bind("fx", "out")
    with broker.transaction() as tx:
        f = tx.publish("fx", "", b"routed")
    assert [m.topic for m in f.result()] == ["out"]
    assert _all(broker, "out") == [b"routed"]


def test_closed_transaction_refuses_more(broker):
    tx = broker.transaction()
    tx.send("out", b"1")
    tx.commit()
    with pytest.raises(mqlite.ClosedError):
        tx.send("out", b"2")
