"""The one seam between the App and a broker (internal).

Handlers never see this: the App reads, writes and commits only through a
:class:`Backend`.  :class:`LocalBackend` is the sync mqlite broker; an
asyncio backend (``mqlite.aio``) or a Kafka backend implement the same small
surface, so the App and every handler run unchanged on them.

Every method may be called from any App thread except where noted: a
stream consumer is used by its fetch thread only (``commit_in_tx`` passes it to
a transaction in a handler thread, which mqlite's fenced commit allows).

Async subscribers fetch on the App's event loop (D33, D40): stream mode takes
an asyncio consumer from ``async_stream_consumer``
(called on that loop): an object with ``await poll(max_records, timeout)``,
``wakeup()`` (any thread), ``await close()`` and ``sync``, the synchronous
consumer used for commits, seeks and transactions.  ``aclose()`` (on the loop)
releases what those needed, before ``close()``.  Queue mode takes a started
:class:`mqlite.aio.AsyncQueue` from ``await async_queue(...)`` (arguments as
``queue``).  ``topic_exists(name)`` tells a queue subscriber whose topic was
deleted when it is back (D84; without it the subscriber tries to open a new
queue consumer at once).  These (and ``scheduled``) are OPTIONAL methods, not in the
:class:`Backend` protocol (added by D33 and D40, so backends written against
the protocol stay valid): for a backend without them the App uses
:class:`ThreadedAsyncConsumer` over ``stream_consumer`` (its waiting polls
hold a thread), a fetch thread for async queue subscribers, and skips
``aclose`` / counts no scheduled retries.

``record_dead_letter(group, topics, dead_letter)`` is optional too (D87): the
App calls it when it starts, for each stream subscriber, so that operators'
tools in other processes see where the group's failures go (``dead_letter``
``None`` forgets a recorded one).  The mqlite backends record it in the group
(:meth:`mqlite.Broker.set_group_dead_letter_topic`); the Kafka backend does
nothing (a Kafka group has no place for it).  ``dead_letters(dlq, limit,
where=)`` and ``redrive(..., cursor=)`` take their last argument only when the
App's caller gave one (a backend without them keeps working for other calls).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from mqlite.app.context import Output
from mqlite.errors import TopicExistsError, TopicNotFoundError
from mqlite.types import RecordMetadata, TopicPartition

__all__ = ["BROKER_BACKENDS", "URL_BACKENDS", "Backend", "LocalBackend", "ThreadedAsyncConsumer",
           "async_stream_consumer", "is_target", "open_backend"]


class Backend(Protocol):
    """What the App needs from a broker."""

    def ensure_topic(self, name: str, partitions: int) -> None: ...
    def send(self, out: Output) -> RecordMetadata: ...
    def apply(self, outputs: Sequence[Output], claims: Sequence[tuple[Any, str, float]],
              offsets: tuple[Any, dict[TopicPartition, int]] | None,
              acks: Sequence[Any]) -> None: ...
    def stream_consumer(self, topics: list[str], group: str, *, auto_offset_reset: str,
                        batch: int,
                        on_revoke: Callable[[list[TopicPartition]], Any]) -> Any: ...
    def queue(self, topic: str, group: str, *, visibility_timeout: float,
              max_deliveries: int | None, dead_letter: str | None) -> Any: ...
    def reader(self, topic: str) -> Any: ...
    def is_processed(self, key: Any, scope: str) -> bool: ...
    def stream_lag(self, group: str, topics: list[str]) -> int: ...
    def redrive(self, dlq: str, where: Callable[[Any], bool] | None, limit: int | None,
                to_topic: str | None, *, cursor: Any = None) -> int: ...
    def dead_letters(self, dlq: str, limit: int,
                     where: Callable[[Any], bool] | None = None) -> list[Any]: ...
    def close(self) -> None: ...


class LocalBackend:
    """:class:`Backend` over a sync :class:`mqlite.Broker` (this process's handle).

    With ``auto_create`` (the App's ``auto_create_topics``), a send to a missing
    topic creates it with ``partitions`` partitions and is tried again.
    """

    #: Whether sends may be delayed or carry a dedup id (``ctx.publish`` checks, D88).
    delayed_sends = True

    def __init__(self, broker: Any, owned: bool, auto_create: bool = True,
                 partitions: int = 1) -> None:
        self.broker = broker
        self._owned = owned
        self.auto_create = auto_create
        self.partitions = partitions
        self._aio: Any = None  # mqlite.aio.AsyncBroker over ``broker``, made on first use

    def topic_exists(self, name: str) -> bool:
        """Whether topic ``name`` exists now (a queue subscriber waiting for its deleted
        topic looks with this, D84)."""
        return name in self.broker.topics()

    def ensure_topic(self, name: str, partitions: int, *,
                     retention_messages: int | None = None) -> None:
        """Create topic ``name`` if missing (an existing one is used as it is);
        ``retention_messages`` bounds what a new topic keeps (a periodic job's ticks)."""
        if name in self.broker.topics():
            return
        try:
            self.broker.create_topic(name, partitions, retention_messages=retention_messages)
        except TopicExistsError:
            pass  # another worker created it first: use it as it is

    def send(self, out: Output) -> RecordMetadata:
        try:
            return self.broker.send(out.topic, out.value, out.key, out.headers, out.partition,
                                    dedup_id=out.dedup_id, delay=out.delay,
                                    deliver_at=out.deliver_at)
        except TopicNotFoundError:
            if not self.auto_create:
                raise
        self.ensure_topic(out.topic, self.partitions)
        return self.broker.send(out.topic, out.value, out.key, out.headers, out.partition,
                                dedup_id=out.dedup_id, delay=out.delay,
                                deliver_at=out.deliver_at)

    def apply(self, outputs: Sequence[Output], claims: Sequence[tuple[Any, str, float]],
              offsets: tuple[Any, dict[TopicPartition, int]] | None,
              acks: Sequence[Any]) -> None:
        """Sends, claims, an offset commit and queue acks in ONE transaction (all or nothing).

        Except delayed messages (``delay`` / ``deliver_at``): a transaction cannot hold
        them, so they are sent first, each on its own, and are not part of the all or
        nothing (a crash before the transaction sends them again: at-least-once).
        """
        if self.delayed_sends and any(o.scheduled for o in outputs):
            for o in outputs:
                if o.scheduled:
                    self.send(o)  # creates a missing topic itself
            outputs = [o for o in outputs if not o.scheduled]
        try:
            self._apply(outputs, claims, offsets, acks)
        except TopicNotFoundError:
            if not self.auto_create:
                raise
            for o in outputs:
                self.ensure_topic(o.topic, self.partitions)
            self._apply(outputs, claims, offsets, acks)

    def _apply(self, outputs: Sequence[Output], claims: Sequence[tuple[Any, str, float]],
               offsets: tuple[Any, dict[TopicPartition, int]] | None,
               acks: Sequence[Any]) -> None:
        if not outputs and not claims and offsets is None and not acks:
            return
        if len(outputs) == 1 and not claims and offsets is None and not acks:
            self.send(outputs[0])
            return
        with self.broker.transaction() as tx:
            for o in outputs:
                tx.send(o.topic, o.value, o.key, o.headers, o.partition, dedup_id=o.dedup_id)
            for key, scope, ttl in claims:
                tx.claim(key, scope, ttl=ttl)
            if offsets is not None:
                tx.commit_offsets(offsets[0], offsets[1])
            if acks:
                tx.ack(acks)

    def stream_consumer(self, topics: list[str], group: str, *, auto_offset_reset: str,
                        batch: int, on_revoke: Callable[[list[TopicPartition]], Any]) -> Any:
        # commit="manual": the App commits only contiguous completed offsets itself.
        # max_poll_interval: a fetch thread waiting for busy handlers stops polling for a
        # while; the member's heartbeat thread keeps it alive meanwhile.
        return self.broker.consumer(topics, group=group, auto_offset_reset=auto_offset_reset,
                                    commit="manual", max_poll_records=batch,
                                    max_poll_interval=86400.0, on_revoke=on_revoke,
                                    assignor="cooperative-sticky")

    def async_stream_consumer(self, topics: list[str], group: str, *,
                              auto_offset_reset: str, batch: int,
                              on_revoke: Callable[[list[TopicPartition]], Any]) -> Any:
        """An :class:`mqlite.aio.AsyncConsumer` as :meth:`stream_consumer` (on the App loop).

        Its ``poll`` reads inline on the loop and waits on the loop's doorbell:
        no thread is held while it waits.
        """
        return self._aio_broker().consumer(topics, group, auto_offset_reset=auto_offset_reset,
                                  commit="manual", max_poll_records=batch,
                                  max_poll_interval=86400.0, on_revoke=on_revoke,
                                  assignor="cooperative-sticky")

    def _aio_broker(self) -> Any:
        if self._aio is None:
            from mqlite.aio import AsyncBroker

            self._aio = AsyncBroker(self.broker)
        return self._aio

    async def async_queue(self, topic: str, group: str, *, visibility_timeout: float,
                          max_deliveries: int | None, dead_letter: str | None) -> Any:
        """A started :class:`mqlite.aio.AsyncQueue` as :meth:`queue` (on the App loop).

        Its ``receive`` waits on the loop's doorbell (no thread held); setting
        the policy and registering with the group run in worker threads.
        """
        aio = self._aio_broker()
        await aio.set_queue_policy(topic, group, max_deliveries=max_deliveries,
                                   dead_letter_topic=dead_letter, retry_backoff=None)
        q = aio.queue(topic, group, visibility_timeout=visibility_timeout)
        return await q.start()

    async def aclose(self) -> None:
        """Release the asyncio side (doorbell, worker threads); on the App's loop.

        A broker the App opened is closed with it; a broker the caller passed
        stays open (``AsyncBroker.detach``).
        """
        if self._aio is not None:
            aio, self._aio = self._aio, None
            if self._owned:
                await aio.close()
            else:
                await aio.detach()

    def queue(self, topic: str, group: str, *, visibility_timeout: float,
              max_deliveries: int | None, dead_letter: str | None) -> Any:
        self.broker.set_queue_policy(topic, group, max_deliveries=max_deliveries,
                                     dead_letter_topic=dead_letter, retry_backoff=None)
        return self.broker.queue(topic, group, visibility_timeout=visibility_timeout)

    def reader(self, topic: str) -> Any:
        """A groupless consumer of every partition of ``topic``, positioned at the end."""
        c = self.broker.consumer(None)
        tps = [TopicPartition(topic, p) for p in range(self.broker.partitions_for(topic))]
        c.assign(tps)
        c.seek_to_end(*tps)
        return c

    def is_processed(self, key: Any, scope: str) -> bool:
        return self.broker.is_processed(key, scope)

    def stream_lag(self, group: str, topics: list[str]) -> int:
        total = 0
        for t in topics:
            committed = self.broker.committed_offsets(group, t)
            for p in self.broker.describe_topic(t).partitions:
                total += max(0, p.end_offset - max(committed.get(p.partition, 0),
                                                    p.start_offset))
        return total

    def scheduled(self, topic: str) -> int:
        """Delayed messages for ``topic`` not yet due (retry topics' pending retries)."""
        return int(self.broker.stats().scheduled.get(topic, 0))

    def redrive(self, dlq: str, where: Callable[[Any], bool] | None, limit: int | None,
                to_topic: str | None, *, cursor: Any = None) -> int:
        return self.broker.redrive(dlq, where, limit, to_topic, cursor=cursor)

    def dead_letters(self, dlq: str, limit: int,
                     where: Callable[[Any], bool] | None = None) -> list[Any]:
        return self.broker.dead_letters(dlq, limit, where)

    def record_dead_letter(self, group: str, topics: list[str], dead_letter: str | None) -> None:
        """Record in the group where its failures from ``topics`` go (``None``: forget it)."""
        self.broker.set_group_dead_letter_topic(group, topics, dead_letter)

    def close(self) -> None:
        if self._owned:
            self.broker.close()


#: Backends for URL targets by prefix, ``make(url, auto_create, partitions)``; each module
#: registers itself (``mqlite.app.kafka_backend``: ``"kafka://"``), so this one imports none.
URL_BACKENDS: dict[str, Callable[[str, bool, int], LocalBackend]] = {}
#: Backends for open broker handles of other backends: ``(accepts(target), make(target,
#: auto_create, partitions))``; the App does not close such a handle (``mqlite.kafka``'s
#: ``KafkaBroker``: registered by ``mqlite.app.kafka_backend``).
BROKER_BACKENDS: list[tuple[Callable[[Any], bool], Callable[[Any, bool, int], LocalBackend]]] = []


def is_target(target: Any) -> bool:
    """Whether ``mqlite.App(target)`` takes ``target`` (path, URL, or an open broker handle)."""
    import mqlite

    return isinstance(target, (str, os.PathLike, mqlite.Broker)) or any(
        accepts(target) for accepts, _ in BROKER_BACKENDS)


class ThreadedAsyncConsumer:
    """The asyncio consumer shape over a sync stream consumer (a backend with no asyncio client).

    A poll with a timeout under 1 ms runs inline on the loop; a longer one
    runs in the loop's default executor (a thread held while it waits).
    """

    def __init__(self, sync: Any) -> None:
        self.sync = sync

    async def poll(self, max_records: int, timeout: float) -> list[Any]:
        if timeout < 0.001:
            return list(self.sync.poll(max_records=max_records, timeout=timeout))
        loop = asyncio.get_running_loop()
        return list(await loop.run_in_executor(
            None, functools.partial(self.sync.poll, max_records=max_records, timeout=timeout)))

    def wakeup(self) -> None:
        self.sync.wakeup()

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.sync.close)


def async_stream_consumer(backend: Any, topics: list[str], group: str, *,
                          auto_offset_reset: str, batch: int,
                          on_revoke: Callable[[list[TopicPartition]], Any]) -> Any:
    """``backend.async_stream_consumer(...)``, or a :class:`ThreadedAsyncConsumer` when it has none."""
    make = getattr(backend, "async_stream_consumer", None)
    if make is not None:
        return make(topics, group, auto_offset_reset=auto_offset_reset, batch=batch,
                    on_revoke=on_revoke)
    return ThreadedAsyncConsumer(backend.stream_consumer(
        topics, group, auto_offset_reset=auto_offset_reset, batch=batch, on_revoke=on_revoke))


def open_backend(target: Any, durability: str, auto_create: bool = True,
                 partitions: int = 1) -> LocalBackend:
    """A backend for ``target``: a broker directory path or an open :class:`mqlite.Broker`
    (or another backend's open handle registered in :data:`BROKER_BACKENDS`).

    A URL registered in :data:`URL_BACKENDS` (``kafka://``:
    :class:`mqlite.app.kafka_backend.KafkaBackend`) gives that backend
    (``durability`` does not apply).
    """
    import mqlite

    if isinstance(target, str):
        for prefix, make in URL_BACKENDS.items():
            if target.startswith(prefix):
                return make(target, auto_create, partitions)
    if isinstance(target, mqlite.Broker):
        return LocalBackend(target, False, auto_create, partitions)
    for accepts, adopt in BROKER_BACKENDS:
        if accepts(target):
            return adopt(target, auto_create, partitions)
    if isinstance(target, (str, os.PathLike)):
        return LocalBackend(mqlite.open(target, durability=durability), True, auto_create,
                            partitions)
    raise TypeError(f"App() takes a broker directory (str / PathLike), a kafka:// URL, a "
                    f"mqlite.Broker or a mqlite.kafka.KafkaBroker, not {type(target).__name__}")
