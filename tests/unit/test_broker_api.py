"""The broker facade: open/close, the topic catalog, send, send_batch, plain readers."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path

import _reference
import pytest
from _values import value

import mqlite
from mqlite import _core

# -- open / close ------------------------------------------------------------------------------


def test_open_as_context_manager_closes(tmp_broker_dir: Path) -> None:
    with mqlite.open(tmp_broker_dir) as b:
        assert isinstance(b, mqlite.Broker)
        assert not b.closed
        assert b.path == str(tmp_broker_dir)
        assert b.durability == "sync"
        b.create_topic("t")
        b.send("t", b"x")
    assert b.closed
    with pytest.raises(mqlite.ClosedError):
        b.send("t", b"y")
    with pytest.raises(mqlite.ClosedError):
        b.topics()
    b.close()  # idempotent
    with mqlite.open(tmp_broker_dir) as b2:
        assert [m.value for m in b2.read("t")] == [b"x"]


def test_open_creates_directory_and_files(tmp_broker_dir: Path) -> None:
    assert not tmp_broker_dir.exists()
    with mqlite.open(tmp_broker_dir):
        assert tmp_broker_dir.is_dir()
        assert {"data.mdb", "lock.mdb", "notify.shm"} <= set(os.listdir(tmp_broker_dir))


def test_one_shared_environment_per_path(open_broker: Callable[..., mqlite.Broker],
                                         tmp_broker_dir: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    b1 = open_broker(durability="none")
    # Another spelling of the same directory still shares the one environment.
    monkeypatch.chdir(tmp_broker_dir.parent)
    b2 = open_broker("./broker/", durability="none")
    assert b1 is not b2
    assert b1._engine.env is b2._engine.env
    b1.create_topic("t")
    b1.send("t", b"one")
    assert [m.value for m in b2.read("t")] == [b"one"]
    b1.close()
    # The other handle keeps working: the environment closes with the last handle.
    assert not b2.closed
    b2.send("t", b"two")
    assert [m.value for m in b2.read("t")] == [b"one", b"two"]


def test_reopen_with_other_durability_in_same_process_is_value_error(
        open_broker: Callable[..., mqlite.Broker]) -> None:
    open_broker(durability="sync")
    with pytest.raises(ValueError, match="durability"):
        open_broker(durability="none")


@pytest.mark.parametrize("mode", ["sync", "lazy", "none"])
def test_durability_modes_round_trip(tmp_broker_dir: Path, mode: str) -> None:
    with mqlite.open(tmp_broker_dir, durability=mode) as b:
        assert b.durability == mode
        b.create_topic("t", partitions=2)
        b.send("t", b"a", partition=0)
        b.send_batch("t", [b"b", b"c"], partition=1)
    # Reopening in any mode reads what any mode wrote.
    other = {"sync": "none", "lazy": "sync", "none": "lazy"}[mode]
    with mqlite.open(tmp_broker_dir, durability=other) as b:
        assert [m.value for m in b.read("t", 0)] == [b"a"]
        assert [m.value for m in b.read("t", 1)] == [b"b", b"c"]


@pytest.mark.parametrize("mode", ["fast", "SYNC", "", None, 1])
def test_unknown_durability_is_value_error(tmp_broker_dir: Path, mode: object) -> None:
    with pytest.raises(ValueError):
        mqlite.open(tmp_broker_dir, durability=mode)  # type: ignore[arg-type]
    assert not tmp_broker_dir.exists()


def test_open_create_false_on_missing_directory(tmp_broker_dir: Path) -> None:
    with pytest.raises(mqlite.BrokerDirectoryError):
        mqlite.open(tmp_broker_dir, create=False)
    assert not tmp_broker_dir.exists()


# -- topic catalog -----------------------------------------------------------------------------


def test_create_list_describe_delete_topics(broker: mqlite.Broker) -> None:
    assert broker.topics() == []
    broker.create_topic("orders", partitions=3)
    broker.create_topic("audit.log-1_x")
    assert broker.topics() == ["audit.log-1_x", "orders"]
    assert broker.partitions_for("orders") == 3
    d = broker.describe_topic("orders")
    assert isinstance(d, mqlite.TopicDescription)
    assert d.name == "orders"
    assert d.config["partitions"] == 3
    assert [p.partition for p in d.partitions] == [0, 1, 2]
    for p in d.partitions:
        assert (p.start_offset, p.end_offset, p.messages, p.bytes) == (0, 0, 0, 0)
        assert p.oldest_timestamp_ms is None and p.newest_timestamp_ms is None
    assert d.messages == 0 and d.bytes == 0
    broker.delete_topic("orders")
    assert broker.topics() == ["audit.log-1_x"]
    with pytest.raises(mqlite.TopicNotFoundError):
        broker.describe_topic("orders")


def test_create_existing_topic(broker: mqlite.Broker) -> None:
    broker.create_topic("t", partitions=2)
    with pytest.raises(mqlite.TopicExistsError):
        broker.create_topic("t", partitions=2)
    broker.create_topic("t", partitions=5, exist_ok=True)  # no change
    assert broker.partitions_for("t") == 2


def test_describe_topic_counts_offsets_bytes_and_timestamps(broker: mqlite.Broker) -> None:
    broker.create_topic("t", partitions=2)
    broker.send("t", b"a" * 10, partition=0, timestamp_ms=1_000)
    broker.send("t", b"b" * 20, partition=0, timestamp_ms=3_000)
    broker.send_batch("t", [b"c", b"d", b"e"], partition=0, timestamp_ms=[2_000, 5_000, 4_000])
    d = broker.describe_topic("t")
    p0, p1 = d.partitions
    assert (p0.start_offset, p0.end_offset, p0.messages) == (0, 5, 5)
    assert p0.bytes > 30 + _core.BATCH_HEADER_SIZE  # stored batch bytes, headers included
    assert p0.oldest_timestamp_ms == 1_000
    assert p0.newest_timestamp_ms == 5_000
    assert (p1.start_offset, p1.end_offset, p1.messages, p1.bytes) == (0, 0, 0, 0)
    assert d.messages == 5 and d.bytes == p0.bytes
    before = p0.bytes
    broker.send("t", b"f" * 1000, partition=0)
    assert broker.describe_topic("t").partitions[0].bytes >= before + 1000


def test_deleted_topic_is_gone_and_recreated_topic_is_empty(broker: mqlite.Broker) -> None:
    broker.create_topic("t", partitions=2)
    broker.send_batch("t", [b"old"] * 5, partition=1)
    reader = broker.consumer("t")
    broker.delete_topic("t")
    with pytest.raises(mqlite.TopicNotFoundError):
        broker.send("t", b"x")
    with pytest.raises(mqlite.TopicNotFoundError):
        reader.poll(timeout=0)
    with pytest.raises(mqlite.TopicNotFoundError):
        broker.delete_topic("t")
    broker.create_topic("t", partitions=2)
    d = broker.describe_topic("t")
    assert all(p.end_offset == 0 and p.bytes == 0 for p in d.partitions)
    assert broker.consumer("t").poll(timeout=0) == []
    assert broker.send("t", b"new", partition=1).offset == 0
    assert [m.value for m in broker.read("t", 1)] == [b"new"]


def _producer_send(b: mqlite.Broker, topic: str, value: bytes) -> None:
    with b.producer() as p:
        p.send(topic, value)


@pytest.mark.parametrize("call", [
    lambda b: b.send("nope", b"x"),
    lambda b: b.send_batch("nope", [b"x"]),
    lambda b: b.describe_topic("nope"),
    lambda b: b.delete_topic("nope"),
    lambda b: b.consumer("nope"),
    lambda b: b.read("nope"),
    lambda b: b.partitions_for("nope"),
    lambda b: _producer_send(b, "nope", b"x"),
], ids=["send", "send_batch", "describe", "delete", "consumer", "read", "partitions_for",
        "producer"])
def test_unknown_topic_is_topic_not_found(broker: mqlite.Broker, call: Callable) -> None:
    with pytest.raises(mqlite.TopicNotFoundError, match="nope"):
        call(broker)
    assert broker.topics() == []


def test_unknown_topic_error_is_key_error_with_readable_message(broker: mqlite.Broker) -> None:
    with pytest.raises(KeyError) as info:
        broker.send("missing", b"x")
    assert "create_topic" in str(info.value)


# -- send ----------------------------------------------------------------------------------------


def test_send_returns_record_metadata_with_dense_offsets(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    mds = [broker.send("t", b"v%d" % i) for i in range(20)]
    for i, md in enumerate(mds):
        assert isinstance(md, mqlite.RecordMetadata)
        assert (md.topic, md.partition, md.offset) == ("t", 0, i)
        assert md.timestamp_ms > 0
    msgs = broker.read("t", max_records=100)
    assert [m.offset for m in msgs] == list(range(20))
    assert [m.timestamp_ms for m in msgs] == [md.timestamp_ms for md in mds]


def test_send_round_trips_every_field(broker: mqlite.Broker) -> None:
    broker.create_topic("t", partitions=4)
    hdrs = [("b", b"1"), ("a", b""), ("b", b"2"), ("\u00fcml", b"\x00\xff")]
    md = broker.send("t", bytearray(b"val"), key=memoryview(b"key"), headers=hdrs,
                     partition=3, timestamp_ms=1_234_567)
    assert md == mqlite.RecordMetadata("t", 3, 0, 1_234_567)
    (m,) = broker.read("t", 3)
    assert (m.topic, m.partition, m.offset, m.timestamp_ms) == ("t", 3, 0, 1_234_567)
    assert m.key == b"key" and m.value == b"val"
    assert type(m.key) is bytes and type(m.value) is bytes
    assert m.headers == hdrs


def test_null_and_empty_keys_and_values_are_distinct(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    broker.send("t", b"", key=b"")
    broker.send("t", None, key=None)  # a null value (tombstone)
    broker.send("t", b"v")
    a, b, c = broker.read("t")
    assert (a.key, a.value) == (b"", b"")
    assert (b.key, b.value) == (None, None)
    assert (c.key, c.value, c.headers) == (None, b"v", [])


def test_keyed_send_uses_kafka_murmur2(broker: mqlite.Broker) -> None:
    broker.create_topic("t", partitions=50)
    # Kafka's Java client puts key "foobar" in partition 16 of 50.
    assert broker.send("t", b"x", key=b"foobar").partition == 16
    for key in (b"", b"a", b"key-1", bytes(range(256))):
        want = _reference.partition_for_key(key, 50)
        assert broker.send("t", b"x", key=key).partition == want


def test_same_key_same_partition_in_order(broker: mqlite.Broker) -> None:
    broker.create_topic("t", partitions=7)
    parts = {broker.send("t", b"%d" % i, key=b"user-42").partition for i in range(30)}
    assert len(parts) == 1
    p = parts.pop()
    assert [m.value for m in broker.read("t", p)] == [b"%d" % i for i in range(30)]


def test_keyless_sends_round_robin_over_partitions(broker: mqlite.Broker) -> None:
    broker.create_topic("t", partitions=4)
    parts = [broker.send("t", b"x").partition for _ in range(12)]
    assert sorted(parts) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    # cyclic: every window of 4 consecutive sends hits every partition
    for i in range(len(parts) - 3):
        assert set(parts[i:i + 4]) == {0, 1, 2, 3}


def test_explicit_partition_wins_over_key(broker: mqlite.Broker) -> None:
    broker.create_topic("t", partitions=50)
    assert broker.send("t", b"x", key=b"foobar", partition=3).partition == 3
    with pytest.raises(mqlite.PartitionNotFoundError):
        broker.send("t", b"x", partition=50)
    with pytest.raises(ValueError):
        broker.send("t", b"x", partition=-1)
    assert broker.describe_topic("t").messages == 1


# -- send_batch ----------------------------------------------------------------------------------


def _last_txnid(b: mqlite.Broker) -> int:
    return b._engine.env.handle().info()["last_txnid"]


def test_send_batch_returns_compact_metadata(broker: mqlite.Broker) -> None:
    broker.create_topic("t", partitions=3)
    values = [b"v%d" % i for i in range(1000)]
    md = broker.send_batch("t", values, partition=2, timestamp_ms=42)
    assert isinstance(md, mqlite.BatchMetadata)
    assert not isinstance(md, list)
    assert len(md) == 1000
    assert md.ranges == (mqlite.PartitionRange(2, 0, 1000),)
    assert (md.partition, md.base_offset, md.topic, md.timestamp_ms) == (2, 0, "t", 42)
    assert md[0] == mqlite.RecordMetadata("t", 2, 0, 42)
    assert md[-1] == mqlite.RecordMetadata("t", 2, 999, 42)
    assert md[10:12] == [mqlite.RecordMetadata("t", 2, 10, 42), mqlite.RecordMetadata("t", 2, 11, 42)]
    with pytest.raises(IndexError):
        md[1000]
    md2 = broker.send_batch("t", [b"a", b"b"], partition=2)
    assert md2.base_offset == 1000
    assert [m.value for m in broker.read("t", 2, offset=998, max_records=10)] == \
        [b"v998", b"v999", b"a", b"b"]


def test_send_batch_is_one_transaction(broker: mqlite.Broker) -> None:
    broker.create_topic("t", partitions=8)
    keys = [b"k%d" % i for i in range(500)]
    before = _last_txnid(broker)
    md = broker.send_batch("t", [b"x"] * 500, keys=keys)
    assert _last_txnid(broker) == before + 1
    assert len(md.ranges) == 8
    assert sum(r.count for r in md.ranges) == 500
    # md[i] names message i's partition (its key's murmur2) and its offset.
    per_part = {p: 0 for p in range(8)}
    for i, k in enumerate(keys):
        p = _reference.partition_for_key(k, 8)
        assert md[i] == mqlite.RecordMetadata("t", p, per_part[p], md.timestamp_ms)
        per_part[p] += 1
    for p in range(8):
        got = [m.key for m in broker.read("t", p, max_records=1000)]
        assert got == [k for k in keys if _reference.partition_for_key(k, 8) == p]


def test_send_batch_is_all_or_nothing(broker: mqlite.Broker) -> None:
    broker.create_topic("t", partitions=2, max_message_bytes=100)
    before = _last_txnid(broker)
    with pytest.raises(mqlite.MessageTooLargeError):
        broker.send_batch("t", [b"ok"] * 10 + [b"x" * 101] + [b"ok"] * 10)
    with pytest.raises(TypeError):
        broker.send_batch("t", [b"ok", "str", b"ok"], keys=[b"a", b"b", b"c"])
    assert _last_txnid(broker) == before
    assert broker.describe_topic("t").messages == 0


def test_send_batch_without_keys_keeps_order_on_one_partition(broker: mqlite.Broker) -> None:
    broker.create_topic("t", partitions=3)
    seen = []
    for n in range(6):
        md = broker.send_batch("t", [b"%d-%d" % (n, i) for i in range(50)])
        assert len(md.ranges) == 1
        seen.append(md.partition)
        got = broker.read("t", md.partition, md.base_offset, 50)
        assert [m.value for m in got] == [b"%d-%d" % (n, i) for i in range(50)]
    assert set(seen) == {0, 1, 2}


def test_send_batch_argument_errors(broker: mqlite.Broker) -> None:
    broker.create_topic("t", partitions=2)
    with pytest.raises(ValueError):
        broker.send_batch("t", [])
    with pytest.raises(TypeError):
        broker.send_batch("t", b"not-a-list")
    with pytest.raises(ValueError):
        broker.send_batch("t", [b"a", b"b"], keys=[b"a"])
    with pytest.raises(ValueError):
        broker.send_batch("t", [b"a", b"b"], headers=[None])
    with pytest.raises(mqlite.PartitionNotFoundError):
        broker.send_batch("t", [b"a"], partition=2)
    assert broker.describe_topic("t").messages == 0


def test_send_batch_large_batches_span_many_lmdb_values(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    values = [bytes([i % 251]) * 1000 for i in range(2000)]  # ~2 MB: several stored batches
    md = broker.send_batch("t", values)
    assert len(md) == 2000
    got: list[mqlite.Message] = []
    while len(got) < 2000:
        got += broker.read("t", offset=len(got), max_records=333)
    assert [m.offset for m in got] == list(range(2000))
    assert [m.value for m in got] == values


# -- plain reader (no group) -------------------------------------------------------------------


def test_reader_without_group_reads_every_partition_from_beginning(broker: mqlite.Broker) -> None:
    broker.create_topic("t", partitions=5)
    sent = {}
    for i in range(100):
        md = broker.send("t", b"m%d" % i, key=b"k%d" % i)
        sent[(md.partition, md.offset)] = b"m%d" % i
    reader = broker.consumer("t")
    assert reader.group is None
    assert sorted(reader.assignment()) == [mqlite.TopicPartition("t", p) for p in range(5)]
    got = []
    while True:
        batch = reader.poll(max_records=7, timeout=0)
        if not batch:
            break
        assert len(batch) <= 7
        got += batch
    assert {(m.partition, m.offset): m.value for m in got} == sent
    assert len(got) == 100
    for p in range(5):
        offs = [m.offset for m in got if m.partition == p]
        assert offs == list(range(len(offs)))
    # A second reader starts from the beginning again: readers share no state.
    assert len(broker.consumer("t").poll(max_records=1000, timeout=0)) == 100
    reader.close()


def test_reader_iteration(broker: mqlite.Broker) -> None:
    broker.create_topic("t", partitions=2)
    broker.send_batch("t", [b"%d" % i for i in range(10)], partition=0)
    broker.send_batch("t", [b"%d" % i for i in range(10, 15)], partition=1)
    with broker.consumer("t") as reader:
        got = list(itertools.islice(iter(reader), 15))
    assert sorted(int(value(m)) for m in got) == list(range(15))
    assert reader.closed
    with pytest.raises(mqlite.ClosedError):
        reader.poll(timeout=0)


def test_iteration_stops_when_consumer_closed(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    broker.send("t", b"only")
    reader = broker.consumer("t")
    it = iter(reader)
    assert next(it).value == b"only"
    reader.close()
    assert list(it) == []


def test_reader_sees_later_sends_and_no_commits(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    reader = broker.consumer("t")
    assert reader.poll(timeout=0) == []
    broker.send("t", b"1")
    assert [m.value for m in reader.poll(timeout=0)] == [b"1"]
    with pytest.raises(ValueError):
        reader.commit()


def test_operations_after_broker_close_raise_closed_error(tmp_broker_dir: Path) -> None:
    b = mqlite.open(tmp_broker_dir, durability="none")
    b.create_topic("t")
    reader = b.consumer("t")
    b.close()
    for call in (lambda: b.send("t", b"x"), lambda: b.send_batch("t", [b"x"]),
                 lambda: b.create_topic("u"), lambda: b.describe_topic("t"),
                 lambda: b.consumer("t"), lambda: reader.poll(timeout=0),
                 lambda: b.producer()):
        with pytest.raises(mqlite.ClosedError):
            call()
