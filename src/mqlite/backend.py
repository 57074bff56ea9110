"""The backend seam: typed protocols for the stream subset of the public API.

mqlite has two backends behind one API: the embedded engine
(:class:`mqlite.Broker` on an LMDB directory) and Kafka
(:class:`mqlite.kafka.KafkaBroker`, through confluent-kafka).  Code that must
run on both — the service framework, the mirror, a user's own workers — is
written against the protocols below, which both implement (checked by mypy:
``broker.py`` and ``kafka/broker.py`` each assign their class to
:class:`StreamBroker` under ``TYPE_CHECKING``).

The protocols cover what Kafka has: topics with partitions, keyed sends with
murmur2 placement, batching producers with futures, consumer groups with the
``commit="before" | "after" | "manual"`` policies, seeks, committed offsets,
lag, and transactions that send and commit a consumer's offsets atomically.
Queues, exchanges, delayed sends and dedup windows are embedded-only; on
Kafka they raise :class:`mqlite.NotSupportedError` naming the alternative.

Layer: below the features (which may implement the protocols), above the
helpers; it imports only leaf types.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar, overload, runtime_checkable

from mqlite._headers import HeadersArg
from mqlite.types import (
    BatchMetadata,
    OffsetAndTimestamp,
    RecordMetadata,
    TopicDescription,
    TopicPartition,
    TopicPartitionLike,
)

if TYPE_CHECKING:
    from mqlite._core import Message

__all__ = [
    "ResultFuture",
    "StreamBroker",
    "StreamConsumer",
    "StreamProducer",
    "StreamTransaction",
]

T_co = TypeVar("T_co", covariant=True)


@runtime_checkable
class ResultFuture(Protocol[T_co]):
    """The outcome of a send: :class:`mqlite.SendFuture` or a ``concurrent.futures.Future``."""

    def result(self, timeout: float | None = None) -> T_co: ...

    def done(self) -> bool: ...


@runtime_checkable
class StreamProducer(Protocol):
    """A batching, thread-safe producer whose sends resolve futures."""

    def send(self, topic: str, value: Any, key: Any = None, headers: HeadersArg = None,
             partition: int | None = None,
             timestamp_ms: int | None = None) -> ResultFuture[RecordMetadata]: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...

    @property
    def closed(self) -> bool: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class StreamConsumer(Protocol):
    """A log consumer, alone or in a group (Kafka's consumer model)."""

    group: str | None

    def subscribe(self, topics: str | Iterable[str]) -> None: ...

    def subscription(self) -> list[str]: ...

    def assign(self, partitions: Iterable[TopicPartitionLike]) -> None: ...

    def assignment(self) -> list[TopicPartition]: ...

    def poll(self, max_records: int | None = None, timeout: float = 1.0) -> list[Message]: ...

    def commit(self, offsets: Any = None) -> None: ...

    @overload
    def committed(self, tp: TopicPartitionLike) -> int | None: ...

    @overload
    def committed(self, tp: list[TopicPartition]) -> dict[TopicPartition, int | None]: ...

    def position(self, tp: TopicPartitionLike) -> int: ...

    def seek(self, tp: TopicPartitionLike, offset: int) -> None: ...

    def seek_to_beginning(self, *tps: TopicPartitionLike) -> None: ...

    def seek_to_end(self, *tps: TopicPartitionLike) -> None: ...

    def beginning_offsets(self, tps: Iterable[TopicPartitionLike]) -> dict[TopicPartition, int]: ...

    def end_offsets(self, tps: Iterable[TopicPartitionLike]) -> dict[TopicPartition, int]: ...

    def offsets_for_times(
        self, timestamps: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]: ...

    def lag(self) -> dict[TopicPartition, int]: ...

    def wakeup(self) -> None: ...

    def close(self) -> None: ...

    @property
    def closed(self) -> bool: ...

    def __iter__(self) -> Iterator[Message]: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class StreamTransaction(Protocol):
    """Sends and a group consumer's offset commit, applied atomically on ``commit``."""

    def send(self, topic: str, value: Any, key: Any = None, headers: HeadersArg = None,
             partition: int | None = None,
             timestamp_ms: int | None = None) -> ResultFuture[RecordMetadata]: ...

    def commit_offsets(self, consumer: Any, offsets: Any = None) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


@runtime_checkable
class StreamBroker(Protocol):
    """A broker handle: topic catalog, sends, producers, consumers, transactions."""

    def create_topic(self, name: str, partitions: int = 1, *, retention_ms: int | None = None,
                     retention_bytes: int | None = None, exist_ok: bool = False) -> None: ...

    def delete_topic(self, name: str) -> None: ...

    def topics(self) -> list[str]: ...

    def partitions_for(self, name: str) -> int: ...

    def describe_topic(self, name: str) -> TopicDescription: ...

    def send(self, topic: str, value: Any, key: Any = None, headers: HeadersArg = None,
             partition: int | None = None,
             timestamp_ms: int | None = None) -> RecordMetadata: ...

    def send_batch(self, topic: str, values: Sequence[Any], keys: Sequence[Any] | None = None,
                   partition: int | None = None, *,
                   headers: Sequence[HeadersArg] | None = None,
                   timestamp_ms: int | Sequence[int] | None = None) -> BatchMetadata: ...

    def producer(self, *, linger_ms: float = 0.0, batch_bytes: int = 1 << 20,
                 partitioner: str | Callable[[Any, Any, int], int] | None = None,
                 max_queued: int = 1_000_000) -> StreamProducer: ...

    def consumer(
        self,
        topics: str | Iterable[str] | None = None,
        group: str | None = None,
        *,
        auto_offset_reset: str = "earliest",
        commit: str = "after",
        max_poll_records: int = 500,
        instance_id: str | None = None,
        assignor: str | None = None,
        session_timeout: float | None = None,
        max_poll_interval: float | None = None,
        on_assign: Callable[[list[TopicPartition]], Any] | None = None,
        on_revoke: Callable[[list[TopicPartition]], Any] | None = None,
    ) -> StreamConsumer: ...

    def committed_offsets(self, group: str, topic: str) -> dict[int, int]: ...

    def transaction(self) -> StreamTransaction: ...

    @property
    def closed(self) -> bool: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...
