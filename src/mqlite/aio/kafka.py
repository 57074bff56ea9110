"""``mqlite.aio.open("kafka://...")``: the asyncio API on the Kafka backend (stream subset).

::

    async with mqlite.aio.open("kafka://localhost:9092") as broker:
        await broker.create_topic("orders", partitions=6)
        md = await broker.send("orders", b"v", key=b"k")
        async with broker.consumer("orders", group="payments") as consumer:
            msgs = await consumer.poll(max_records=500, timeout=1.0)
            await consumer.commit()
        producer = broker.producer()
        await producer.send("orders", b"v")         # resolves on Kafka's ack
        async with broker.transaction() as tx:      # a Kafka transaction
            tx.send("results", b"r")
            tx.commit_offsets(consumer)

The same names, parameters and errors as :class:`mqlite.aio.AsyncBroker`
where Kafka has the feature (docs/scale-out.md); what it lacks raises
:class:`mqlite.NotSupportedError` as the synchronous Kafka backend does.

How it runs (docs/decisions.md D37): the synchronous
:class:`mqlite.kafka.KafkaBroker` does the work.  Sends never block the loop:
librdkafka queues the record and its delivery report resolves the asyncio
future (the producer's report thread hands results to the loop in batches).
Each consumer has one thread of its own, where all its librdkafka calls run
(a waiting ``poll`` holds that thread, not the loop; ``close`` and ``wakeup``
end the wait within 0.2 s).  Metadata and admin requests, flushes and
transaction commits run in the handle's worker threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, NoReturn, Self, overload

from mqlite._core import Message
from mqlite._headers import HeadersArg
from mqlite.aio._bridge import BridgedProducer, copy_outcome
from mqlite.aio._runner import Runner
from mqlite.aio.consumer import RebalanceCallback, bridge_callback
from mqlite.errors import ClosedError
from mqlite.kafka import KafkaBroker, KafkaConsumer, KafkaProducer, KafkaTransaction
from mqlite.kafka import open as kafka_open
from mqlite.types import (
    BatchMetadata,
    OffsetAndTimestamp,
    RecordMetadata,
    TopicDescription,
    TopicPartition,
    TopicPartitionLike,
)

__all__ = ["AsyncKafkaBroker", "AsyncKafkaConsumer", "AsyncKafkaProducer",
           "AsyncKafkaTransaction", "open_kafka"]


class _KafkaOpening:
    """``await mqlite.aio.open("kafka://...")`` or ``async with ... as broker``."""

    def __init__(self, url: str, client_options: Mapping[str, Any] | None) -> None:
        # checked here, at once: a bad URL or option is the caller's error, not the loop's
        self._sync = kafka_open(url, client_options=client_options)
        self._broker: AsyncKafkaBroker | None = None

    async def _open(self) -> AsyncKafkaBroker:
        return AsyncKafkaBroker(self._sync)

    def __await__(self) -> Generator[Any, None, AsyncKafkaBroker]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncKafkaBroker:
        self._broker = await self._open()
        return self._broker

    async def __aexit__(self, *exc: object) -> None:
        if self._broker is not None:
            await self._broker.close()


def open_kafka(url: str, client_options: Mapping[str, Any] | None = None) -> _KafkaOpening:
    """``mqlite.aio.open`` for a ``kafka://`` URL (see :func:`mqlite.kafka.open`).

    Raises
    ------
    ValueError, TypeError
        A malformed URL or ``client_options`` (at once, before any await).
    """
    return _KafkaOpening(url, client_options)


class AsyncKafkaBroker:
    """A handle on a Kafka cluster for asyncio (module docstring).

    ``sync`` is the :class:`mqlite.kafka.KafkaBroker`; consumers, producers
    and transactions made from this handle are closed with it.
    """

    def __init__(self, sync: KafkaBroker) -> None:
        self.sync = sync
        self._runner = Runner()
        self._producer: AsyncKafkaProducer | None = None
        self._consumers: list[AsyncKafkaConsumer] = []

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The ``kafka://`` URL of this handle."""
        return self.sync.url

    @property
    def closed(self) -> bool:
        return self.sync.closed

    async def close(self) -> None:
        """Close every consumer (committing per policy), flush producers, close.  Idempotent."""
        for c in self._consumers:
            c.wakeup()
        try:
            for c in self._consumers:
                await c.close()
            if not self.sync.closed:
                await self._runner.run(self.sync.close)
        finally:
            self._runner.shutdown()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<mqlite.aio.AsyncKafkaBroker {self.url} {'closed' if self.closed else 'open'}>"

    # -- topics --------------------------------------------------------------------------
    async def create_topic(self, name: str, partitions: int = 1, *,
                           retention_ms: int | None = None, retention_bytes: int | None = None,
                           retention_messages: int | None = None,
                           max_message_bytes: int | None = None, cleanup: str = "delete",
                           exist_ok: bool = False, replication_factor: int | None = None,
                           config: Mapping[str, str] | None = None) -> None:
        """As :meth:`mqlite.kafka.KafkaBroker.create_topic`."""
        kw: dict[str, Any] = {} if max_message_bytes is None else {
            "max_message_bytes": max_message_bytes}
        await self._runner.run(self.sync.create_topic, name, partitions,
                               retention_ms=retention_ms, retention_bytes=retention_bytes,
                               retention_messages=retention_messages, cleanup=cleanup,
                               exist_ok=exist_ok, replication_factor=replication_factor,
                               config=dict(config) if config else None, **kw)

    async def delete_topic(self, name: str) -> None:
        """As :meth:`mqlite.kafka.KafkaBroker.delete_topic`."""
        await self._runner.run(self.sync.delete_topic, name)

    async def topics(self) -> list[str]:
        """As :meth:`mqlite.kafka.KafkaBroker.topics`."""
        return await self._runner.run(self.sync.topics)

    async def describe_topic(self, name: str) -> TopicDescription:
        """As :meth:`mqlite.kafka.KafkaBroker.describe_topic`."""
        return await self._runner.run(self.sync.describe_topic, name)

    async def partitions_for(self, name: str) -> int:
        """As :meth:`mqlite.kafka.KafkaBroker.partitions_for`."""
        return await self._runner.run(self.sync.partitions_for, name)

    async def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        """As :meth:`mqlite.kafka.KafkaBroker.committed_offsets`."""
        return await self._runner.run(self.sync.committed_offsets, group, topic)

    # -- writing -------------------------------------------------------------------------
    async def send(self, topic: str, value: Any, key: Any = None, headers: HeadersArg = None,
                   partition: int | None = None, timestamp_ms: int | None = None,
                   dedup_id: str | bytes | None = None, *, delay: float | None = None,
                   deliver_at: float | None = None) -> RecordMetadata:
        """Send one record; returns once Kafka acknowledged it (``acks=all``).

        Concurrent sends share one producer (and its batches).

        Raises
        ------
        As :meth:`mqlite.kafka.KafkaBroker.send` (``NotSupportedError`` for
        ``dedup_id``, ``delay``, ``deliver_at``).
        """
        if delay is not None or deliver_at is not None:
            self.sync.send(topic, value, delay=delay, deliver_at=deliver_at)  # raises
        if self._producer is None:
            self._producer = self.producer()
        return await self._producer.send(topic, value, key, headers, partition, timestamp_ms,
                                         dedup_id)

    async def send_batch(self, topic: str, values: Sequence[Any],
                         keys: Sequence[Any] | None = None, partition: int | None = None, *,
                         headers: Sequence[HeadersArg] | None = None,
                         timestamp_ms: int | Sequence[int] | None = None) -> BatchMetadata:
        """As :meth:`mqlite.kafka.KafkaBroker.send_batch` (not all-or-nothing on Kafka)."""
        return await self._runner.run(self.sync.send_batch, topic, values, keys, partition,
                                      headers=headers, timestamp_ms=timestamp_ms)

    def producer(self, *, linger_ms: float = 0.0, batch_bytes: int = 1 << 20,
                 partitioner: str | Callable[[Any, Any, int], int] | None = None,
                 max_queued: int = 1_000_000) -> AsyncKafkaProducer:
        """A batching producer (:class:`AsyncKafkaProducer`); parameters as
        :meth:`mqlite.kafka.KafkaBroker.producer`.  Call it in the running loop."""
        loop = asyncio.get_running_loop()
        return AsyncKafkaProducer(self._runner, self.sync.producer(
            linger_ms=linger_ms, batch_bytes=batch_bytes, partitioner=partitioner,
            max_queued=max_queued), loop)

    def transaction(self) -> AsyncKafkaTransaction:
        """``async with broker.transaction() as tx:`` — one Kafka transaction."""
        if self.sync.closed:
            raise ClosedError("this Kafka broker handle is closed")
        return AsyncKafkaTransaction(self)

    # -- reading -------------------------------------------------------------------------
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
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
    ) -> AsyncKafkaConsumer:
        """A log consumer (:class:`AsyncKafkaConsumer`); parameters as
        :meth:`mqlite.kafka.KafkaBroker.consumer`.

        Arguments are checked here; the subscription (a metadata request)
        happens in the consumer's thread on its first coroutine call, so a
        missing topic raises :class:`TopicNotFoundError` there.  Call it in the
        running loop.
        """
        loop = asyncio.get_running_loop()
        sync = self.sync.consumer(
            None, group, auto_offset_reset=auto_offset_reset, commit=commit,
            max_poll_records=max_poll_records, instance_id=instance_id, assignor=assignor,
            session_timeout=session_timeout, max_poll_interval=max_poll_interval,
            on_assign=bridge_callback(on_assign, loop), on_revoke=bridge_callback(on_revoke, loop))
        c = AsyncKafkaConsumer(sync, topics)
        self._consumers = [x for x in self._consumers if not x.closed]
        self._consumers.append(c)
        return c

    # -- what Kafka does not have: NotSupportedError naming the alternative --------------
    def queue(self, topic: str, group: str, **options: Any) -> NoReturn:
        """Not on Kafka (:class:`NotSupportedError`): use a consumer group."""
        self.sync.queue(topic, group, **options)

    async def declare_exchange(self, name: str, type: str = "direct", **options: Any) -> None:
        """Not on Kafka (:class:`NotSupportedError`)."""
        self.sync.declare_exchange(name, type, **options)

    async def bind(self, exchange: str, topic: str, *args: Any, **kwargs: Any) -> None:
        """Not on Kafka (:class:`NotSupportedError`)."""
        self.sync.bind(exchange, topic, *args, **kwargs)

    async def publish(self, exchange: str, routing_key: str, value: Any, **kwargs: Any) -> None:
        """Not on Kafka (:class:`NotSupportedError`)."""
        self.sync.publish(exchange, routing_key, value, **kwargs)

    async def claim(self, event_id: str | bytes, scope: str = "default", **kwargs: Any) -> None:
        """Not on Kafka (:class:`NotSupportedError`)."""
        self.sync.claim(event_id, scope, **kwargs)


class AsyncKafkaProducer(BridgedProducer[KafkaProducer]):
    """A batching producer for asyncio on Kafka.  ``sync`` is the :class:`KafkaProducer`.

    Any number of tasks may send through one producer; a send never blocks
    the loop (unless librdkafka's queue of ``max_queued`` records is full,
    when it waits for room as the synchronous ``send`` does).
    """

    def send_nowait(self, topic: str, value: Any, key: Any = None,
                    headers: HeadersArg = None, partition: int | None = None,
                    timestamp_ms: int | None = None,
                    dedup_id: str | bytes | None = None) -> asyncio.Future[RecordMetadata]:
        """Queue one record; an asyncio future of its metadata, resolved on Kafka's ack.

        Raises
        ------
        As :meth:`mqlite.kafka.KafkaProducer.send` (argument errors here,
        delivery errors through the future).
        """
        kfut = self.sync.send(topic, value, key, headers, partition, timestamp_ms, dedup_id)
        with self._lock:
            self.sync.awaited += 1  # the report thread serves reports as they come
        return self._bridge(kfut)

    async def send(self, topic: str, value: Any, key: Any = None,
                   headers: HeadersArg = None, partition: int | None = None,
                   timestamp_ms: int | None = None,
                   dedup_id: str | bytes | None = None) -> RecordMetadata:
        """Send one record; returns its metadata once Kafka acknowledged it."""
        return await self.send_nowait(topic, value, key, headers, partition, timestamp_ms,
                                      dedup_id)

    def _settled(self, n: int) -> None:
        self.sync.awaited -= n


class AsyncKafkaConsumer:
    """A Kafka log consumer for asyncio.  ``sync`` is the :class:`KafkaConsumer`.

    Every call into librdkafka runs in this consumer's own thread, one at a
    time, in the order made.  A ``poll`` whose awaiting task is cancelled
    keeps its messages for the next ``poll`` (none is skipped).
    """

    def __init__(self, sync: KafkaConsumer, topics: str | Iterable[str] | None) -> None:
        self.sync = sync
        self._topics: str | list[str] | None = (
            topics if topics is None or isinstance(topics, str) else list(topics))
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mqlite-kafka-c")
        self._pending: asyncio.Future[list[Message]] | None = None
        self._closed = False

    @property
    def group(self) -> str | None:
        return self.sync.group

    @property
    def closed(self) -> bool:
        return self._closed

    def _submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        # queued at once, in call order, on the consumer's thread
        if self._closed:
            raise ClosedError("this consumer is closed")
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._thread, self._call, fn, args)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._submit(fn, *args)

    def _call(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        # the consumer's thread: subscribe first (deferred from broker.consumer())
        if self._topics is not None:
            topics, self._topics = self._topics, None
            self.sync.subscribe(topics)
        return fn(*args)

    async def start(self) -> None:
        """Subscribe now (otherwise done by the first coroutine call)."""
        await self._run(lambda: None)

    def subscribe(self, topics: str | Iterable[str]) -> asyncio.Future[None]:
        """As :meth:`mqlite.kafka.KafkaConsumer.subscribe`, queued on the consumer's thread.

        A plain call (as on the embedded backend) that returns an awaitable:
        await it to see its errors; either way it happens before the next
        ``poll``.
        """
        return self._submit(self.sync.subscribe, topics)

    def subscription(self) -> list[str]:
        if self._topics is not None:
            return [self._topics] if isinstance(self._topics, str) else list(self._topics)
        return self.sync.subscription()

    def assign(self, partitions: Iterable[TopicPartitionLike]) -> asyncio.Future[None]:
        """As :meth:`mqlite.kafka.KafkaConsumer.assign`; queued like :meth:`subscribe`."""
        return self._submit(self.sync.assign, list(partitions))

    def assignment(self) -> list[TopicPartition]:
        return self.sync.assignment()

    def positions(self) -> dict[TopicPartition, int]:
        return self.sync.positions()

    def wakeup(self) -> None:
        """Make a waiting :meth:`poll` return (within 0.2 s).  Any thread."""
        self.sync.wakeup()

    async def poll(self, max_records: int | None = None,
                   timeout: float = 1.0) -> list[Message]:
        """As :meth:`mqlite.kafka.KafkaConsumer.poll`; waits in the consumer's thread."""
        if self._pending is None:
            self._pending = self._submit(self.sync.poll, max_records, timeout)
        pending = self._pending
        try:
            out = await asyncio.shield(pending)
        except asyncio.CancelledError:
            if not pending.done():
                self.sync.wakeup()  # the next poll() collects what this one got
                raise
            self._pending = None
            raise
        except BaseException:
            self._pending = None
            raise
        self._pending = None
        return out

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while not self._closed:
            try:
                batch = await self.poll(timeout=1.0)
            except ClosedError:
                return
            for m in batch:
                yield m

    async def commit(self, offsets: Any = None) -> None:
        """As :meth:`mqlite.kafka.KafkaConsumer.commit` (synchronous commit, off the loop)."""
        await self._run(self.sync.commit, offsets)

    @overload
    async def committed(self, tp: TopicPartitionLike) -> int | None: ...

    @overload
    async def committed(self, tp: list[TopicPartition]) -> dict[TopicPartition, int | None]: ...

    async def committed(self, tp: TopicPartitionLike | list[TopicPartition]
                        ) -> int | None | dict[TopicPartition, int | None]:
        """As :meth:`mqlite.kafka.KafkaConsumer.committed`."""
        return await self._run(self.sync.committed, tp)

    async def position(self, tp: TopicPartitionLike) -> int:
        """As :meth:`mqlite.kafka.KafkaConsumer.position`."""
        return await self._run(self.sync.position, tp)

    def seek(self, tp: TopicPartitionLike, offset: int) -> asyncio.Future[None]:
        """As :meth:`mqlite.kafka.KafkaConsumer.seek`; queued like :meth:`subscribe`."""
        return self._submit(self.sync.seek, tp, offset)

    async def seek_to_beginning(self, *tps: TopicPartitionLike) -> None:
        """As :meth:`mqlite.kafka.KafkaConsumer.seek_to_beginning`."""
        await self._run(self.sync.seek_to_beginning, *tps)

    async def seek_to_end(self, *tps: TopicPartitionLike) -> None:
        """As :meth:`mqlite.kafka.KafkaConsumer.seek_to_end`."""
        await self._run(self.sync.seek_to_end, *tps)

    async def lag(self) -> dict[TopicPartition, int]:
        """As :meth:`mqlite.kafka.KafkaConsumer.lag`."""
        return await self._run(self.sync.lag)

    async def beginning_offsets(self, tps: Iterable[TopicPartitionLike]) -> dict[TopicPartition, int]:
        """As :meth:`mqlite.kafka.KafkaConsumer.beginning_offsets`."""
        return await self._run(self.sync.beginning_offsets, list(tps))

    async def end_offsets(self, tps: Iterable[TopicPartitionLike]) -> dict[TopicPartition, int]:
        """As :meth:`mqlite.kafka.KafkaConsumer.end_offsets`."""
        return await self._run(self.sync.end_offsets, list(tps))

    async def offsets_for_times(self, timestamps: Mapping[TopicPartition, int]
                                ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """As :meth:`mqlite.kafka.KafkaConsumer.offsets_for_times`."""
        return await self._run(self.sync.offsets_for_times, dict(timestamps))

    async def close(self) -> None:
        """Commit per policy, leave the group and stop the consumer's thread.  Idempotent."""
        if self._closed:
            return
        self.sync.wakeup()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, self.sync.close)
        finally:
            self._closed = True
            self._thread.shutdown(wait=False)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<mqlite.aio.AsyncKafkaConsumer group={self.group!r} " \
               f"{'closed' if self._closed else 'open'}>"


class AsyncKafkaTransaction:
    """``async with broker.transaction() as tx:`` — one Kafka transaction.

    Entering begins it (in a worker thread: the first transaction of a
    handle initialises the transactional producer); ``tx.send`` queues
    records; ``tx.commit_offsets(consumer)`` adds the consumer's positions
    as they are at that call; leaving the block commits all of it at once
    (or aborts on an exception).
    """

    def __init__(self, broker: AsyncKafkaBroker) -> None:
        self._broker = broker
        self.sync: KafkaTransaction | None = None
        self._offsets: list[tuple[KafkaConsumer, dict[TopicPartition, int] | Any]] = []

    def _tx(self) -> KafkaTransaction:
        if self.sync is None:
            raise ClosedError("use the transaction inside 'async with broker.transaction()'")
        return self.sync

    async def __aenter__(self) -> Self:
        self.sync = await self._broker._runner.run(self._begin)
        return self

    def _begin(self) -> KafkaTransaction:
        return self._broker.sync.transaction().__enter__()

    def send(self, topic: str, value: Any, key: Any = None, headers: HeadersArg = None,
             partition: int | None = None, timestamp_ms: int | None = None,
             dedup_id: str | bytes | None = None) -> asyncio.Future[RecordMetadata]:
        """Queue a send; the future resolves to its metadata after the commit."""
        loop = asyncio.get_running_loop()
        sfut = self._tx().send(topic, value, key, headers, partition, timestamp_ms, dedup_id)
        afut: asyncio.Future[RecordMetadata] = loop.create_future()

        def resolved(f: Any) -> None:
            loop.call_soon_threadsafe(copy_outcome, f, afut)

        sfut.add_done_callback(resolved)
        return afut

    def commit_offsets(self, consumer: AsyncKafkaConsumer | KafkaConsumer,
                       offsets: Any = None) -> None:
        """Commit a group consumer's offsets with the transaction.

        ``offsets=None`` takes the consumer's positions now (what it has
        returned so far); a :class:`~mqlite.Message` or a
        ``{TopicPartition: next_offset}`` mapping as in the sync API.
        """
        self._tx()
        sync = consumer.sync if isinstance(consumer, AsyncKafkaConsumer) else consumer
        if offsets is None:
            offsets = {tp: p for tp, p in sync.positions().items() if tp in sync.assignment()}
        self._offsets.append((sync, offsets))

    async def commit(self) -> None:
        """Commit the transaction (sends visible and offsets committed together)."""
        await self._broker._runner.run(self._commit)

    def _commit(self) -> None:
        tx = self._tx()
        for consumer, offsets in self._offsets:
            tx.commit_offsets(consumer, offsets)
        self._offsets.clear()
        tx.commit()

    async def abort(self) -> None:
        """Abort: nothing of the transaction is applied.  Idempotent."""
        if self.sync is not None:
            await self._broker._runner.run(self.sync.abort)

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if et is not None:
            await self.abort()
            return
        await self.commit()

