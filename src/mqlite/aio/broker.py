"""``mqlite.aio.open`` and ``AsyncBroker``: the broker facade with coroutines.

An :class:`AsyncBroker` wraps a :class:`mqlite.Broker` (``sync``) and adds
two things: a small pool of worker threads (:mod:`mqlite.aio._runner`) where
every call that can block on the disk runs, and a doorbell on the event loop
(:mod:`mqlite.aio._bell`) through which consumers and queues wait for new
messages without holding a thread.  Every coroutine has the semantics and
errors of the synchronous call of the same name.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import Any, Self

from mqlite import _core
from mqlite import broker as _broker
from mqlite._headers import HeadersArg
from mqlite.aio._bell import LoopBell
from mqlite.aio._runner import Runner
from mqlite.aio.consumer import AsyncConsumer, RebalanceCallback, bridge_callback
from mqlite.aio.producer import AsyncProducer
from mqlite.aio.queue import AsyncQueue
from mqlite.aio.transaction import AsyncTransaction
from mqlite.config import DEFAULT_DEDUP_WINDOW_MS, DEFAULT_MAX_MESSAGE_BYTES, UNSET, Unset
from mqlite.groups import GroupDescription
from mqlite.queue import DeadLetter, DeadLetterCursor, QueuePolicy
from mqlite.retry import Backoff
from mqlite.types import BatchMetadata, RecordMetadata, TopicDescription, TopicPartition

__all__ = ["AsyncBroker", "open"]


class _Opening:
    """``await mqlite.aio.open(...)`` or ``async with mqlite.aio.open(...) as broker``."""

    def __init__(self, path: str | os.PathLike[str], kwargs: dict[str, Any]) -> None:
        self._path = path
        self._kwargs = kwargs
        self._broker: AsyncBroker | None = None

    async def _open(self) -> AsyncBroker:
        runner = Runner()
        try:
            sync = await runner.run(_broker.open, self._path, **self._kwargs)
        except BaseException:
            runner.shutdown()
            raise
        return AsyncBroker(sync, runner)

    def __await__(self) -> Generator[Any, None, AsyncBroker]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncBroker:
        self._broker = await self._open()
        return self._broker

    async def __aexit__(self, *exc: object) -> None:
        if self._broker is not None:
            await self._broker.close()


def open(
    path: str | os.PathLike[str],
    durability: str = "sync",
    *,
    map_size: int | None = None,
    create: bool = True,
    shared_group: bool = False,
    client_options: Mapping[str, Any] | None = None,
) -> _Opening:
    """Open (creating if needed) the broker in directory ``path``, for asyncio.

    ``broker = await mqlite.aio.open(path)`` or ``async with
    mqlite.aio.open(path) as broker:`` (closed on exit).  Parameters, errors
    and guarantees are those of :func:`mqlite.open`; the opening runs in a
    worker thread.  Must be awaited in a running event loop; the broker then
    belongs to that loop.

    A ``kafka://host:port[,...]`` URL (with ``client_options``, librdkafka
    properties) gives a :class:`mqlite.aio.kafka.AsyncKafkaBroker`: the same
    stream API on Kafka (docs/scale-out.md).
    """
    if isinstance(path, str) and path.startswith("kafka://"):
        try:
            from mqlite.aio.kafka import open_kafka
        except ImportError as exc:
            raise ImportError(f"{path!r} needs the Kafka client: pip install 'mqlite[kafka]' "
                              f"(confluent-kafka); {exc}") from exc
        return open_kafka(path, client_options)  # type: ignore[return-value]
    if client_options is not None:
        raise TypeError("client_options is for kafka:// URLs; a broker directory takes none")
    return _Opening(path, {"durability": durability, "map_size": map_size, "create": create,
                           "shared_group": shared_group})


class AsyncBroker:
    """A handle on one broker directory for asyncio (module docstring).

    ``sync`` is the underlying :class:`mqlite.Broker`.  The consumers, queues
    and producers made from it are its children: :meth:`close` closes them.
    """

    def __init__(self, sync: _broker.Broker, runner: Runner | None = None) -> None:
        self.sync = sync
        self._runner = runner or Runner()
        self._bell_: LoopBell | None = None
        self._queues: list[AsyncQueue] = []

    def _bell(self, loop: asyncio.AbstractEventLoop | None = None) -> LoopBell:
        """The doorbell of the running loop ``loop`` (claimed on first use)."""
        if loop is None:
            loop = asyncio.get_running_loop()
        bell = self._bell_
        if bell is not None and bell.loop is loop:
            return bell
        if bell is not None:
            bell.close()
        bell = self._bell_ = LoopBell(self.sync.notifier, loop, self._runner)
        return bell

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def path(self) -> str:
        """Absolute path of the broker directory."""
        return self.sync.path

    @property
    def durability(self) -> str:
        return self.sync.durability

    @property
    def closed(self) -> bool:
        return self.sync.closed

    async def close(self) -> None:
        """Close every child (producers flushed first), then the handle.  Idempotent.

        Waiting ``poll`` / ``receive`` calls return at once (an empty list, or
        :class:`ClosedError` for those that start another round).
        """
        for q in self._queues:
            q.wakeup()
        if self._bell_ is not None:
            self._bell_.wake_all()
        try:
            if not self.sync.closed:
                await self._runner.run(self.sync.close)
        finally:
            if self._bell_ is not None:
                self._bell_.close()
            for q in self._queues:
                q._closed = True
            self._runner.shutdown()

    async def detach(self) -> None:
        """Release this handle's asyncio side (doorbell, worker threads), leaving
        ``sync`` open: for a broker the caller opened and still uses.  Close the
        consumers and queues made from this handle first.  Idempotent."""
        if self._bell_ is not None:
            self._bell_.close()
            self._bell_ = None
        self._runner.shutdown()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.durability
        return f"<mqlite.aio.AsyncBroker {self.path!r} {state}>"

    # -- topic catalog -------------------------------------------------------------------
    async def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        retention_messages: int | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        dedup_window_ms: int = DEFAULT_DEDUP_WINDOW_MS,
        cleanup: str = "delete",
        exist_ok: bool = False,
    ) -> None:
        """As :meth:`mqlite.Broker.create_topic`."""
        await self._runner.run(
            self.sync.create_topic, name, partitions, retention_ms=retention_ms,
            retention_bytes=retention_bytes, retention_messages=retention_messages,
            max_message_bytes=max_message_bytes, dedup_window_ms=dedup_window_ms,
            cleanup=cleanup, exist_ok=exist_ok)

    async def delete_topic(self, name: str) -> None:
        """As :meth:`mqlite.Broker.delete_topic`."""
        await self._runner.run(self.sync.delete_topic, name)

    async def topics(self) -> list[str]:
        """As :meth:`mqlite.Broker.topics`."""
        return await self._runner.run(self.sync.topics)

    async def describe_topic(self, name: str) -> TopicDescription:
        """As :meth:`mqlite.Broker.describe_topic`."""
        return await self._runner.run(self.sync.describe_topic, name)

    async def partitions_for(self, name: str) -> int:
        """As :meth:`mqlite.Broker.partitions_for`."""
        return await self._runner.run(self.sync.partitions_for, name)

    async def apply_retention(self, topic: str | None = None) -> int:
        """As :meth:`mqlite.Broker.apply_retention`."""
        return await self._runner.run(self.sync.apply_retention, topic)

    # -- writing and reading -------------------------------------------------------------
    async def send(self, topic: str, value: Any, key: Any = None, headers: HeadersArg = None,
                   partition: int | None = None, timestamp_ms: int | None = None,
                   dedup_id: str | bytes | None = None, *, delay: float | None = None,
                   deliver_at: float | None = None) -> RecordMetadata:
        """As :meth:`mqlite.Broker.send`: returns once committed (one transaction per call;
        concurrent tasks should share commits through :meth:`producer`)."""
        return await self._runner.run(self.sync.send, topic, value, key, headers, partition,
                                      timestamp_ms, dedup_id, delay=delay,
                                      deliver_at=deliver_at)

    async def send_batch(self, topic: str, values: Sequence[Any],
                         keys: Sequence[Any] | None = None, partition: int | None = None, *,
                         headers: Sequence[HeadersArg] | None = None,
                         timestamp_ms: int | Sequence[int] | None = None) -> BatchMetadata:
        """As :meth:`mqlite.Broker.send_batch` (one transaction, all or nothing)."""
        return await self._runner.run(self.sync.send_batch, topic, values, keys, partition,
                                      headers=headers, timestamp_ms=timestamp_ms)

    async def read(self, topic: str, partition: int = 0, offset: int = 0,
                   max_records: int = 500) -> list[_core.Message]:
        """As :meth:`mqlite.Broker.read`."""
        return await self._runner.run(self.sync.read, topic, partition, offset, max_records)

    async def publish(self, exchange: str, routing_key: str, value: Any, *, key: Any = None,
                      headers: HeadersArg = None, timestamp_ms: int | None = None,
                      mandatory: bool = False) -> list[RecordMetadata]:
        """As :meth:`mqlite.Broker.publish`."""
        return await self._runner.run(self.sync.publish, exchange, routing_key, value, key=key,
                                      headers=headers, timestamp_ms=timestamp_ms,
                                      mandatory=mandatory)

    async def promote_scheduled(self) -> int:
        """As :meth:`mqlite.Broker.promote_scheduled`."""
        return await self._runner.run(self.sync.promote_scheduled)

    # -- exchanges -----------------------------------------------------------------------
    async def declare_exchange(self, name: str, type: str = "direct", *,
                               alternate_exchange: str | None = None,
                               exist_ok: bool = True) -> None:
        """As :meth:`mqlite.Broker.declare_exchange`."""
        await self._runner.run(self.sync.declare_exchange, name, type,
                               alternate_exchange=alternate_exchange, exist_ok=exist_ok)

    async def delete_exchange(self, name: str) -> None:
        """As :meth:`mqlite.Broker.delete_exchange`."""
        await self._runner.run(self.sync.delete_exchange, name)

    async def exchanges(self) -> list[str]:
        """As :meth:`mqlite.Broker.exchanges`."""
        return await self._runner.run(self.sync.exchanges)

    async def bind(self, exchange: str, topic: str, routing_key: str | None = None, *,
                   headers: dict[str, Any] | None = None, match: str = "all") -> None:
        """As :meth:`mqlite.Broker.bind`."""
        await self._runner.run(self.sync.bind, exchange, topic, routing_key, headers=headers,
                               match=match)

    async def unbind(self, exchange: str, topic: str, routing_key: str | None = None, *,
                     headers: dict[str, Any] | None = None, match: str = "all") -> None:
        """As :meth:`mqlite.Broker.unbind`."""
        await self._runner.run(self.sync.unbind, exchange, topic, routing_key, headers=headers,
                               match=match)

    # -- groups, queues, dead letters ----------------------------------------------------
    async def groups(self) -> list[str]:
        """As :meth:`mqlite.Broker.groups`."""
        return await self._runner.run(self.sync.groups)

    async def describe_group(self, group: str) -> GroupDescription:
        """As :meth:`mqlite.Broker.describe_group`."""
        return await self._runner.run(self.sync.describe_group, group)

    async def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        """As :meth:`mqlite.Broker.committed_offsets`."""
        return await self._runner.run(self.sync.committed_offsets, group, topic)

    async def set_queue_policy(self, topic: str, group: str, *,
                               max_deliveries: int | None | Unset = UNSET,
                               dead_letter_topic: str | None | Unset = UNSET,
                               retry_backoff: Backoff | float | None | Unset = UNSET,
                               ) -> QueuePolicy:
        """As :meth:`mqlite.Broker.set_queue_policy`."""
        return await self._runner.run(self.sync.set_queue_policy, topic, group,
                                      max_deliveries=max_deliveries,
                                      dead_letter_topic=dead_letter_topic,
                                      retry_backoff=retry_backoff)

    async def queue_policy(self, topic: str, group: str) -> QueuePolicy | None:
        """As :meth:`mqlite.Broker.queue_policy`."""
        return await self._runner.run(self.sync.queue_policy, topic, group)

    async def set_group_dead_letter_topic(self, group: str, topics: str | Iterable[str],
                                          dead_letter_topic: str | None) -> dict[str, str]:
        """As :meth:`mqlite.Broker.set_group_dead_letter_topic`."""
        return await self._runner.run(self.sync.set_group_dead_letter_topic, group, topics,
                                      dead_letter_topic)

    async def dead_letters(self, topic: str, limit: int = 1000,
                           where: Callable[[DeadLetter], bool] | None = None
                           ) -> list[DeadLetter]:
        """As :meth:`mqlite.Broker.dead_letters` (``where`` runs in a worker thread)."""
        return await self._runner.run(self.sync.dead_letters, topic, limit, where)

    async def redrive(self, topic: str, where: Callable[[DeadLetter], bool] | None = None,
                      limit: int | None = None, to_topic: str | None = None, *,
                      cursor: DeadLetterCursor | None = None) -> int:
        """As :meth:`mqlite.Broker.redrive` (``where`` runs in a worker thread)."""
        return await self._runner.run(self.sync.redrive, topic, where, limit, to_topic,
                                      cursor=cursor)

    async def purge_dead_letters(self, topic: str,
                                 where: Callable[[DeadLetter], bool] | None = None) -> int:
        """As :meth:`mqlite.Broker.purge_dead_letters`."""
        return await self._runner.run(self.sync.purge_dead_letters, topic, where)

    async def is_processed(self, event_id: str | bytes, scope: str = "default") -> bool:
        """As :meth:`mqlite.Broker.is_processed` (a hint, not a lock)."""
        return await self._runner.run(self.sync.is_processed, event_id, scope)

    async def claim(self, event_id: str | bytes, scope: str = "default", *,
                    ttl: float = 7 * 24 * 3600.0) -> bool:
        """As :meth:`mqlite.Broker.claim`: exactly one claimer gets ``True``."""
        return await self._runner.run(self.sync.claim, event_id, scope, ttl=ttl)

    # -- children --------------------------------------------------------------------------
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
    ) -> AsyncConsumer:
        """A log consumer (:class:`AsyncConsumer`); parameters as :meth:`mqlite.Broker.consumer`.

        ``on_assign`` / ``on_revoke`` may be coroutine functions: rebalances
        run in a worker thread, which waits for them on this loop.  Joining
        the group happens in the first ``poll`` (off the loop).  Call it in
        the running loop.

        Raises
        ------
        TopicNotFoundError, TypeError, ValueError, ClosedError
        """
        loop = asyncio.get_running_loop()
        sync = self.sync.consumer(
            topics, group, auto_offset_reset=auto_offset_reset, commit=commit,
            max_poll_records=max_poll_records, instance_id=instance_id, assignor=assignor,
            session_timeout=session_timeout, max_poll_interval=max_poll_interval,
            on_assign=bridge_callback(on_assign, loop), on_revoke=bridge_callback(on_revoke, loop))
        return AsyncConsumer(self, sync)

    def queue(self, topic: str, group: str, *, visibility_timeout: float = 30.0,
              max_deliveries: int | None | Unset = UNSET,
              dead_letter_topic: str | None | Unset = UNSET,
              retry_backoff: Backoff | float | None | Unset = UNSET) -> AsyncQueue:
        """A competing-consumer queue (:class:`AsyncQueue`); parameters as
        :meth:`mqlite.Broker.queue`.

        Registering with the group is a write, so it happens off the loop, on
        the first coroutine call (or ``await queue.start()``).
        """
        if self.sync.closed:
            from mqlite.errors import ClosedError

            raise ClosedError("this broker handle is closed; call mqlite.aio.open() again")

        def make() -> Any:
            return self.sync.queue(topic, group, visibility_timeout=visibility_timeout,
                                   max_deliveries=max_deliveries,
                                   dead_letter_topic=dead_letter_topic,
                                   retry_backoff=retry_backoff)

        q = AsyncQueue(self, make, topic, group)
        self._queues = [x for x in self._queues if not x.closed]
        self._queues.append(q)
        return q

    def producer(self, *, linger_ms: float = 0.0, batch_bytes: int = 1 << 20,
                 partitioner: str | Callable[[Any, Any, int], int] | None = None,
                 max_queued: int = 1_000_000) -> AsyncProducer:
        """A batching producer (:class:`AsyncProducer`); parameters as
        :meth:`mqlite.Broker.producer`.  ``await producer.send()`` resolves at commit,
        and concurrent sends share commits."""
        loop = asyncio.get_running_loop()
        return AsyncProducer(self._runner, self.sync.producer(
            linger_ms=linger_ms, batch_bytes=batch_bytes, partitioner=partitioner,
            max_queued=max_queued), loop)

    def transaction(self) -> AsyncTransaction:
        """``async with broker.transaction() as tx:`` — see :class:`AsyncTransaction`."""
        return AsyncTransaction(self, self.sync.transaction())


# TopicPartition is part of this module's public vocabulary (callbacks receive it)
_ = TopicPartition
