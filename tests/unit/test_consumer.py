"""Log consumers without a group: subscription, assignment, positions, seeks, offsets."""

from __future__ import annotations

import threading
import time

import pytest
from _values import value

import mqlite
from mqlite import TopicPartition as TP


def _drain(c: mqlite.Consumer, max_records: int = 1000) -> list[mqlite.Message]:
    out: list[mqlite.Message] = []
    while batch := c.poll(max_records=max_records, timeout=0):
        out += batch
    return out


def _values(msgs: list[mqlite.Message]) -> list[bytes]:
    return [value(m) for m in msgs]


# -- subscription and assignment ---------------------------------------------------------------


def test_subscribe_to_several_topics(broker: mqlite.Broker) -> None:
    broker.create_topic("a", partitions=2)
    broker.create_topic("b", partitions=3)
    broker.create_topic("c")
    for i in range(10):
        broker.send("a", b"a%d" % i)
        broker.send("b", b"b%d" % i)
        broker.send("c", b"c%d" % i)
    c = broker.consumer(["a", "b"])
    assert c.subscription() == ["a", "b"]
    assert sorted(c.assignment()) == [TP("a", 0), TP("a", 1), TP("b", 0), TP("b", 1), TP("b", 2)]
    got = _drain(c, 4)
    assert sorted(_values(got)) == sorted([b"a%d" % i for i in range(10)] +
                                          [b"b%d" % i for i in range(10)])
    assert {m.topic for m in got} == {"a", "b"}
    # subscribe() replaces the subscription
    c.subscribe("c")
    assert c.subscription() == ["c"]
    assert _values(_drain(c)) == [b"c%d" % i for i in range(10)]
    # duplicates collapse
    c.subscribe(["a", "a"])
    assert c.subscription() == ["a"]


def test_subscribe_unknown_topic(broker: mqlite.Broker) -> None:
    broker.create_topic("a")
    with pytest.raises(mqlite.TopicNotFoundError):
        broker.consumer(["a", "missing"])
    c = broker.consumer("a")
    with pytest.raises(mqlite.TopicNotFoundError):
        c.subscribe(["missing"])


def test_assign_explicit_partitions(broker: mqlite.Broker) -> None:
    broker.create_topic("a", partitions=3)
    broker.create_topic("b", partitions=2)
    for p in range(3):
        broker.send_batch("a", [b"a%d-%d" % (p, i) for i in range(5)], partition=p)
    for p in range(2):
        broker.send_batch("b", [b"b%d-%d" % (p, i) for i in range(5)], partition=p)
    c = broker.consumer()
    assert c.assignment() == []
    assert c.poll(timeout=0) == []
    c.assign([TP("a", 2), ("b", 0)])  # a (topic, partition) tuple is accepted too
    assert c.assignment() == [TP("a", 2), TP("b", 0)]
    got = _drain(c)
    assert sorted(_values(got)) == sorted([b"a2-%d" % i for i in range(5)] +
                                          [b"b0-%d" % i for i in range(5)])
    with pytest.raises(mqlite.PartitionNotFoundError):
        c.assign([TP("b", 2)])
    with pytest.raises(mqlite.TopicNotFoundError):
        c.assign([TP("zzz", 0)])
    with pytest.raises(TypeError):
        c.assign(["a"])  # type: ignore[list-item]  # checks the TypeError


def test_poll_order_and_max_records(broker: mqlite.Broker) -> None:
    broker.create_topic("t", partitions=2)
    broker.send_batch("t", [b"p0-%03d" % i for i in range(100)], partition=0)
    for i in range(100):
        broker.send("t", b"p1-%03d" % i, partition=1)  # one stored batch each
    c = broker.consumer("t")
    polls = []
    while batch := c.poll(max_records=30, timeout=0):
        assert 1 <= len(batch) <= 30
        polls.append(batch)
    got = [m for b in polls for m in b]
    assert len(got) == 200
    for p in (0, 1):
        offs = [m.offset for m in got if m.partition == p]
        assert offs == list(range(100))  # offset order within a partition
    # partitions are served in turn, not one drained before the other starts
    assert {m.partition for m in polls[0] + polls[1]} == {0, 1}


def test_max_poll_records_default(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    broker.send_batch("t", [b"x"] * 50)
    c = broker.consumer("t", max_poll_records=7)
    assert len(c.poll(timeout=0)) == 7
    assert len(c.poll(max_records=100, timeout=0)) == 43


# -- positions and seeks -----------------------------------------------------------------------


@pytest.fixture
def filled(broker: mqlite.Broker) -> mqlite.Broker:
    broker.create_topic("t", partitions=2)
    broker.send_batch("t", [b"%d" % i for i in range(10)], partition=0)
    for i in range(5):
        broker.send("t", b"%d" % i, partition=1)
    return broker


def test_position_seek_and_seek_to_beginning_end(filled: mqlite.Broker) -> None:
    c = filled.consumer("t")
    tp0, tp1 = TP("t", 0), TP("t", 1)
    assert c.position(tp0) == 0 and c.position(tp1) == 0
    c.seek(tp0, 7)
    assert c.position(tp0) == 7
    c.seek(tp1, 5)  # end: nothing left there
    assert _values(_drain(c)) == [b"7", b"8", b"9"]
    assert c.position(tp0) == 10 and c.position(tp1) == 5
    c.seek(tp0, 3)  # inside a stored batch
    assert _values(c.poll(max_records=2, timeout=0)) == [b"3", b"4"]
    assert c.position(tp0) == 5
    c.seek_to_beginning()
    assert c.position(tp0) == 0 and c.position(tp1) == 0
    assert len(_drain(c)) == 15
    c.seek_to_beginning(tp1)
    assert [m.partition for m in _drain(c)] == [1] * 5
    c.seek_to_end()
    assert _drain(c) == []
    filled.send("t", b"new", partition=1)
    assert _values(c.poll(timeout=0)) == [b"new"]
    c.seek_to_end(tp0)
    assert c.position(tp0) == 10
    assert c.positions() == {tp0: 10, tp1: 6}


@pytest.mark.parametrize("reset,expect", [("earliest", 0), ("latest", 10)])
def test_seek_past_end_is_reset_by_policy(filled: mqlite.Broker, reset: str, expect: int) -> None:
    # As in Kafka: an out-of-range position (either side) follows auto_offset_reset.
    c = filled.consumer("t", auto_offset_reset=reset)
    c.seek(TP("t", 0), 1000)
    assert c.position(TP("t", 0)) == expect
    c.seek(TP("t", 0), 1000)
    got = _drain(c)
    assert [m.offset for m in got if m.partition == 0] == list(range(expect, 10))
    filled.send("t", b"later", partition=0)
    assert _values(c.poll(timeout=0)) == [b"later"]


def test_seek_past_end_with_reset_none_raises(filled: mqlite.Broker) -> None:
    c = filled.consumer("t", auto_offset_reset="none")
    c.seek(TP("t", 0), 11)
    with pytest.raises(mqlite.OffsetOutOfRangeError):
        c.position(TP("t", 0))
    c.seek(TP("t", 0), 10)  # exactly the end is in range
    assert c.position(TP("t", 0)) == 10


def test_offset_out_of_range_error_carries_the_partition_offsets(filled: mqlite.Broker) -> None:
    # Kafka: OffsetOutOfRangeException.offsetOutOfRangePartitions() maps each
    # partition to the offset that was out of range.
    import pickle

    c = filled.consumer("t", auto_offset_reset="none")
    with pytest.raises(mqlite.OffsetOutOfRangeError) as info:
        c.position(TP("t", 0))  # no position and no committed offset
    assert info.value.offsets == {TP("t", 0): -1}
    c.seek(TP("t", 0), 11)
    with pytest.raises(mqlite.OffsetOutOfRangeError) as info:
        c.poll(timeout=0)
    assert info.value.offsets == {TP("t", 0): 11}
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is mqlite.OffsetOutOfRangeError
    assert again.offsets == {TP("t", 0): 11}
    assert str(again) == str(info.value)


def test_reader_of_recreated_topic_reads_the_new_messages(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    broker.send_batch("t", [b"old"] * 10)
    c = broker.consumer("t")
    assert len(c.poll(timeout=0)) == 10
    broker.delete_topic("t")
    broker.create_topic("t")
    broker.send_batch("t", [b"new"] * 5)
    assert _values(_drain(c)) == [b"new"] * 5


def test_seek_unassigned_partition_is_value_error(filled: mqlite.Broker) -> None:
    c = filled.consumer()
    c.assign([TP("t", 0)])
    with pytest.raises(ValueError):
        c.seek(TP("t", 1), 0)
    with pytest.raises(ValueError):
        c.position(TP("t", 1))


def test_beginning_and_end_offsets(filled: mqlite.Broker) -> None:
    c = filled.consumer("t")
    tps = [TP("t", 0), TP("t", 1)]
    assert c.beginning_offsets(tps) == {TP("t", 0): 0, TP("t", 1): 0}
    assert c.end_offsets(tps) == {TP("t", 0): 10, TP("t", 1): 5}
    assert c.lag() == {TP("t", 0): 10, TP("t", 1): 5}
    c.poll(max_records=3, timeout=0)
    assert sum(c.lag().values()) == 12
    with pytest.raises(mqlite.PartitionNotFoundError):
        c.end_offsets([TP("t", 2)])


def test_offsets_for_times(broker: mqlite.Broker) -> None:
    broker.create_topic("t", partitions=2)
    # batch 1 (offsets 0-3), then single-record batches (4, 5, 6)
    broker.send_batch("t", [b"a", b"b", b"c", b"d"], partition=0,
                      timestamp_ms=[100, 200, 200, 300])
    broker.send("t", b"e", partition=0, timestamp_ms=150)  # out of order
    broker.send("t", b"f", partition=0, timestamp_ms=400)
    broker.send("t", b"g", partition=0, timestamp_ms=400)
    c = broker.consumer("t")
    tp0, tp1 = TP("t", 0), TP("t", 1)
    expect = {0: (0, 100), 100: (0, 100), 101: (1, 200), 150: (1, 200), 200: (1, 200),
              201: (3, 300), 300: (3, 300), 301: (5, 400), 400: (5, 400)}
    for ts, (off, found_ts) in expect.items():
        res = c.offsets_for_times({tp0: ts})
        assert res == {tp0: mqlite.OffsetAndTimestamp(off, found_ts)}, ts
    assert c.offsets_for_times({tp0: 401, tp1: 0}) == {tp0: None, tp1: None}
    # Seeking to the answer reads from there.
    found = c.offsets_for_times({tp0: 250})[tp0]
    assert found is not None
    c.seek(tp0, found.offset)
    assert _values(c.poll(timeout=0)) == [b"d", b"e", b"f", b"g"]


def test_offsets_for_times_skips_whole_batches(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    for n in range(50):
        broker.send_batch("t", [b"x"] * 20, timestamp_ms=[1000 * n + i for i in range(20)])
    c = broker.consumer("t")
    for n in (0, 7, 49):
        for i in (0, 5, 19):
            res = c.offsets_for_times({TP("t", 0): 1000 * n + i})[TP("t", 0)]
            assert res == (20 * n + i, 1000 * n + i)
    assert c.offsets_for_times({TP("t", 0): 49_020})[TP("t", 0)] is None


# -- auto_offset_reset after retention ----------------------------------------------------------


def _retention_setup(broker: mqlite.Broker) -> None:
    broker.create_topic("t", retention_messages=20)
    broker.send_batch("t", [b"%d" % i for i in range(10)])  # batch 0-9


def _push_past(broker: mqlite.Broker) -> None:
    # Three more 10-record batches: the log keeps only the newest 20 records.
    for n in range(1, 4):
        broker.send_batch("t", [b"%d" % i for i in range(10 * n, 10 * n + 10)])
    broker.apply_retention("t")
    assert broker.describe_topic("t").partitions[0].start_offset == 20


@pytest.mark.parametrize("reset", ["earliest", "latest"])
def test_position_below_log_start_is_reset(broker: mqlite.Broker, reset: str) -> None:
    _retention_setup(broker)
    c = broker.consumer("t", auto_offset_reset=reset)
    c.seek(TP("t", 0), 0)
    assert c.position(TP("t", 0)) == 0
    assert _values(c.poll(max_records=2, timeout=0)) == [b"0", b"1"]
    _push_past(broker)
    got = _values(_drain(c))
    if reset == "earliest":
        assert got == [b"%d" % i for i in range(20, 40)]
    else:
        assert got == []
        broker.send("t", b"fresh")
        assert _values(c.poll(timeout=0)) == [b"fresh"]


def test_position_below_log_start_with_reset_none_raises(broker: mqlite.Broker) -> None:
    _retention_setup(broker)
    c = broker.consumer("t", auto_offset_reset="none")
    tp = TP("t", 0)
    with pytest.raises(mqlite.OffsetOutOfRangeError):
        c.poll(timeout=0)  # no position at all: must seek first
    c.seek(tp, 0)
    assert len(c.poll(max_records=5, timeout=0)) == 5
    _push_past(broker)
    with pytest.raises(mqlite.OffsetOutOfRangeError) as info:
        c.poll(timeout=0)
    assert isinstance(info.value, ValueError)
    assert "20" in str(info.value)  # says where the log starts now
    c.seek_to_beginning()
    assert _values(c.poll(max_records=1, timeout=0)) == [b"20"]


def test_latest_starts_at_end(broker: mqlite.Broker) -> None:
    broker.create_topic("t", partitions=2)
    broker.send_batch("t", [b"old"] * 5)
    c = broker.consumer("t", auto_offset_reset="latest")
    assert c.poll(timeout=0) == []
    broker.send("t", b"new", partition=0)
    broker.send("t", b"new", partition=1)
    assert _values(c.poll(timeout=0)) == [b"new", b"new"]


# -- blocking, lifecycle -----------------------------------------------------------------------


def test_blocking_poll_wakes_on_send_from_another_thread(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    c = broker.consumer("t")
    timer = threading.Timer(0.2, lambda: broker.send("t", b"wake"))
    t0 = time.monotonic()
    timer.start()
    try:
        got = c.poll(timeout=30)
    finally:
        timer.join()
    elapsed = time.monotonic() - t0
    assert _values(got) == [b"wake"]
    # woken by the send, not at the 30 s timeout (no tight bound: load delays wake-ups)
    assert 0.15 <= elapsed < 10.0, elapsed


def test_blocking_poll_on_several_topics_wakes(broker: mqlite.Broker) -> None:
    broker.create_topic("a")
    broker.create_topic("b")
    c = broker.consumer(["a", "b"])
    timer = threading.Timer(0.2, lambda: broker.send("b", b"wake"))
    t0 = time.monotonic()
    timer.start()
    try:
        got = c.poll(timeout=30)
    finally:
        timer.join()
    assert _values(got) == [b"wake"]
    assert time.monotonic() - t0 < 10.0  # woken by the send, not at the 30 s timeout


def test_idle_poll_returns_empty_after_timeout(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    c = broker.consumer("t")
    t0 = time.monotonic()
    assert c.poll(timeout=0.3) == []
    # not before the timeout; after it, late only by what a loaded machine adds
    assert 0.29 <= time.monotonic() - t0 < 5.0
    t0 = time.monotonic()
    assert c.poll(timeout=0) == []
    assert time.monotonic() - t0 < 1.0  # does not wait (no tight bound: load stalls threads)


def test_consumer_close_and_context_manager(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    with broker.consumer("t") as c:
        assert not c.closed
    assert c.closed
    with pytest.raises(mqlite.ClosedError):
        c.poll(timeout=0)
    with pytest.raises(mqlite.ClosedError):
        c.subscribe("t")
    c.close()  # idempotent


def test_topic_deleted_under_consumer(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    broker.send("t", b"x")
    c = broker.consumer("t")
    broker.delete_topic("t")
    with pytest.raises(mqlite.TopicNotFoundError):
        c.poll(timeout=0)


def test_close_after_the_topic_was_deleted_leaves_the_group(broker: mqlite.Broker) -> None:
    # API fuzz (issue 10): the final commit of a deleted partition raised
    # TopicNotFoundError from close() and rolled back the leave, so the group still
    # listed the member.
    broker.create_topic("gone")
    broker.create_topic("kept")
    broker.send("gone", b"x")
    broker.send("kept", b"y")
    c = broker.consumer(["gone", "kept"], group="g", commit="after")
    got: list[mqlite.Message] = []
    while len(got) < 2:  # no further poll: the positions stay uncommitted
        got += c.poll(timeout=1.0)
    broker.delete_topic("gone")
    c.close()
    assert c.closed
    assert broker.describe_group("g").members == []
    assert broker.committed_offsets("g", "kept") == {0: 1}
