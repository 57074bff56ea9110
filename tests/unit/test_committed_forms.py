"""``consumer.committed()`` takes one partition or a list (issue 9, part 7).

A list (confluent-kafka's form) returns ``dict[TopicPartition, int | None]``.
A partition that does not exist reads as ``None`` like Kafka's
``KafkaConsumer.committed()`` (issue 10; it raised the typed error before).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import mqlite
from mqlite import TopicPartition as TP


@pytest.fixture
def consumer(broker: mqlite.Broker) -> Iterator[mqlite.Consumer]:
    broker.create_topic("t", partitions=2)
    broker.send("t", b"a", partition=0)
    broker.send("t", b"b", partition=0)
    c = broker.consumer("t", group="g", commit="manual")
    msgs: list[mqlite.Message] = []
    while len(msgs) < 2:
        msgs += c.poll(timeout=5)
    c.commit({TP("t", 0): 2})
    yield c
    c.close()


def test_one_partition(consumer: mqlite.Consumer) -> None:
    assert consumer.committed(TP("t", 0)) == 2
    assert consumer.committed(TP("t", 1)) is None
    assert consumer.committed(("t", 0)) == 2


def test_a_list_returns_a_dict(consumer: mqlite.Consumer) -> None:
    got = consumer.committed([TP("t", 0), TP("t", 1)])
    assert got == {TP("t", 0): 2, TP("t", 1): None}
    assert consumer.committed([]) == {}


@pytest.mark.parametrize("tp", [TP("t", 2), TP("nope", 0)])
def test_missing_partition_reads_as_none(consumer: mqlite.Consumer, tp: TP) -> None:
    assert consumer.committed(tp) is None
    assert consumer.committed([TP("t", 0), tp]) == {TP("t", 0): 2, tp: None}


def test_bad_argument_types(consumer: mqlite.Consumer) -> None:
    with pytest.raises(TypeError):
        consumer.committed("t")  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        consumer.committed([TP("t", 0), 5])  # type: ignore[list-item]


def test_without_group(broker: mqlite.Broker) -> None:
    broker.create_topic("t")
    with broker.consumer("t") as c, pytest.raises(ValueError, match="group="):
        c.committed([TP("t", 0)])


@pytest.mark.parametrize("topic", [None, 1, 1.5, b"t", ("t",), frozenset()])
def test_topic_partition_with_a_non_str_topic_is_a_type_error(consumer: mqlite.Consumer,
                                                              topic: object) -> None:
    # API fuzz (issue 10): this was an AttributeError from the storage layer.
    bad = TP(topic, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="topic must be str"):
        consumer.committed(bad)
    with pytest.raises(TypeError, match="topic must be str"):
        consumer.committed([TP("t", 0), bad])
    with pytest.raises(TypeError, match="topic must be str"):
        consumer.position(bad)


@pytest.mark.parametrize("bad", [-1, 2**63, 2**64])
def test_a_commit_offset_outside_int64_is_a_value_error_and_stores_nothing(
        broker: mqlite.Broker, consumer: mqlite.Consumer, bad: int) -> None:
    """Offsets are stored as signed 64-bit numbers (found by the slow API fuzz: 2**64
    escaped as msgspec's raw ``OverflowError``)."""
    with pytest.raises(ValueError, match=r"0\.\.2\*\*63-1"):
        consumer.commit({TP("t", 0): bad})
    with pytest.raises(ValueError, match="offset"), broker.transaction() as tx:
        tx.commit_offsets(consumer, {TP("t", 0): bad})
    with pytest.raises(ValueError, match=r"0\.\.2\*\*63-1"):
        broker.reset_offsets("g", "t", to=bad)
    assert consumer.committed(TP("t", 0)) == 2  # what was committed before, unchanged
    consumer.commit({TP("t", 0): 2**63 - 1})  # the largest offset is accepted
    assert consumer.committed(TP("t", 0)) == 2**63 - 1
