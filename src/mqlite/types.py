"""Small value types of the public API.  A leaf module."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple, TypeAlias

import msgspec

__all__ = [
    "BatchMetadata",
    "BrokerStats",
    "GroupLag",
    "GroupStats",
    "OffsetAndTimestamp",
    "PartitionInfo",
    "PartitionRange",
    "PartitionStats",
    "QueueStats",
    "RecordMetadata",
    "TopicDescription",
    "TopicPartition",
    "TopicPartitionLike",
]


class TopicPartition(NamedTuple):
    """A (topic, partition) pair."""

    topic: str
    partition: int


#: What the consumer calls that take a partition accept: a :class:`TopicPartition` or a
#: plain ``(topic, partition)`` tuple, as kafka-python's and confluent-kafka's users write
#: them (checked at run time: a str topic, a partition >= 0).
TopicPartitionLike: TypeAlias = "TopicPartition | tuple[str, int]"


class RecordMetadata(NamedTuple):
    """Where a sent record was stored."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int


class PartitionRange(NamedTuple):
    """A run of consecutive offsets a batch send appended to one partition."""

    partition: int
    base_offset: int
    count: int  # type: ignore[assignment]  # the field shadows tuple.count, as documented


class BatchMetadata(Sequence[RecordMetadata]):
    """Compact result of ``send_batch``: offset ranges, not one object per message.

    ``len(md)`` is the number of messages; ``md[i]`` builds the
    :class:`RecordMetadata` of message ``i`` on demand; ``md.ranges`` lists,
    per partition written, the base offset and count.
    """

    __slots__ = ("_assign", "_count", "_offsets", "ranges", "timestamp_ms", "topic")

    def __init__(self, topic: str, timestamp_ms: int, ranges: Sequence[PartitionRange],
                 assignment: Sequence[int] | None = None, *,
                 offsets: Sequence[int] | None = None) -> None:
        self.topic = topic
        self.timestamp_ms = timestamp_ms
        self.ranges: tuple[PartitionRange, ...] = tuple(ranges)
        self._assign = assignment  # partition of message i, when several were used
        # offset of message i, when a backend reports them one by one (Kafka: other
        # producers may interleave, so a partition's offsets need not be one run)
        self._offsets: list[int] | None = None if offsets is None else list(offsets)
        self._count = sum(r.count for r in self.ranges)

    def __len__(self) -> int:
        return self._count

    @property
    def partition(self) -> int:
        """The partition written, when only one was (else ``ValueError``)."""
        if len(self.ranges) != 1:
            raise ValueError("this batch spans several partitions; see .ranges")
        return self.ranges[0].partition

    @property
    def base_offset(self) -> int:
        """The first offset written, when only one partition was written."""
        if len(self.ranges) != 1:
            raise ValueError("this batch spans several partitions; see .ranges")
        return self.ranges[0].base_offset

    def _build(self) -> list[int]:
        if self._offsets is None:
            nxt = {r.partition: r.base_offset for r in self.ranges}
            out: list[int] = []
            for p in self._assign or ():
                out.append(nxt[p])
                nxt[p] += 1
            self._offsets = out
        return self._offsets

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._count))]
        if i < 0:
            i += self._count
        if not 0 <= i < self._count:
            raise IndexError("BatchMetadata index out of range")
        if self._assign is None:
            r = self.ranges[0]
            return RecordMetadata(self.topic, r.partition, r.base_offset + i, self.timestamp_ms)
        return RecordMetadata(self.topic, self._assign[i], self._build()[i], self.timestamp_ms)

    def __iter__(self) -> Iterator[RecordMetadata]:
        for i in range(self._count):
            yield self[i]

    def __repr__(self) -> str:
        return (f"BatchMetadata(topic={self.topic!r}, count={self._count}, "
                f"ranges={list(self.ranges)!r})")


class PartitionInfo(NamedTuple):
    """State of one partition, as ``describe_topic`` reports it."""

    partition: int
    start_offset: int
    end_offset: int
    messages: int
    bytes: int
    oldest_timestamp_ms: int | None
    newest_timestamp_ms: int | None


class TopicDescription(NamedTuple):
    """``describe_topic`` result: configuration plus per-partition state."""

    name: str
    config: dict
    partitions: list[PartitionInfo]

    @property
    def messages(self) -> int:
        return sum(p.messages for p in self.partitions)

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.partitions)


class OffsetAndTimestamp(NamedTuple):
    """Result of ``offsets_for_times`` for one partition."""

    offset: int
    timestamp_ms: int


# -- read-only snapshots of the whole broker (``Broker.stats()``, metrics, the CLI) ----------

class PartitionStats(msgspec.Struct, frozen=True):
    """Offsets and size of one partition.

    ``end_offset`` is the next offset to be written: every message ever
    appended to the partition (a counter: it only grows, until the topic is
    deleted and recreated).  ``bytes`` counts the stored record batches.
    """

    topic: str
    partition: int
    start_offset: int
    end_offset: int
    bytes: int


class GroupLag(msgspec.Struct, frozen=True):
    """A stream group's committed offset and lag on one partition.

    ``lag`` is ``end_offset`` minus the committed offset (clamped to the
    stored range); without a commit, ``end_offset`` minus the log start.
    """

    topic: str
    partition: int
    committed: int | None
    end_offset: int
    lag: int


class GroupStats(msgspec.Struct, frozen=True):
    """A stream-mode consumer group: live members and lag per partition.

    ``members`` counts members whose process holds its member lock (probed
    now, without joining); ``stored_members`` counts every member record,
    including crashed ones not yet reaped and departed static members.
    ``lag`` covers the subscribed topics and every partition with a commit.
    ``dead_letter_topics`` maps a subscribed topic to the dead-letter topic
    its failures go to, as recorded by ``Broker.set_group_dead_letter_topic``
    (an App's stream subscriber with ``dead_letter=`` records it when it
    starts); ``dead_letters`` is the depth (letters not yet redriven or
    purged) summed over those dead-letter topics, 0 when there are none.
    """

    group: str
    generation: int
    members: int
    stored_members: int
    topics: list[str]
    lag: list[GroupLag]
    dead_letter_topics: dict[str, str] = {}
    dead_letters: int = 0

    @property
    def total_lag(self) -> int:
        return sum(x.lag for x in self.lag)


class QueueStats(msgspec.Struct, frozen=True):
    """A queue group (``broker.queue(topic, group)``) at one instant, without joining it.

    Attributes
    ----------
    ready
        Messages a ``receive()`` would hand out now: never delivered, plus
        delivered ones visible again (timed out, released, nacked).
    inflight
        Delivered, held by a consumer, not yet acked, visibility not expired.
    delayed
        Nacked with a retry delay that has not yet passed.
    consumed
        Messages delivered and then settled (acked or dead-lettered): grows
        like a counter; resets if the topic is recreated.
    consumers
        Live queue consumers (lock probed now).
    oldest_pending_ms
        First-delivery time (UNIX ms) of the oldest unsettled delivery, or ``None``.
    oldest_ready_timestamp_ms
        Timestamp of the oldest never-delivered message (only filled by
        ``Broker.queue_stats``; ``None`` in ``Broker.stats()`` or when there is none).
    """

    topic: str
    group: str
    ready: int
    inflight: int
    delayed: int
    consumed: int
    consumers: int
    dead_letter_topic: str | None
    max_deliveries: int | None
    oldest_pending_ms: int | None
    oldest_ready_timestamp_ms: int | None = None
    dead_letters: int = 0


class BrokerStats(msgspec.Struct, frozen=True):
    """One consistent snapshot of a broker (one read transaction): ``Broker.stats()``.

    Attributes
    ----------
    taken_ms
        When it was taken (UNIX ms).
    partitions
        Every partition of every topic, by topic then partition.
    groups
        Every stream-mode consumer group.
    queues
        Every queue group (``dead_letters`` filled with its dead-letter topic's depth).
    scheduled
        Delayed messages not yet due, per target topic.
    dead_letters
        Depth (not yet redriven or purged) of every topic some queue group
        uses as its dead-letter topic.
    """

    taken_ms: int
    partitions: list[PartitionStats]
    groups: list[GroupStats]
    queues: list[QueueStats]
    scheduled: dict[str, int]
    dead_letters: dict[str, int]
