"""``async with broker.transaction() as tx:`` — sends, offset commits and acks, atomically.

The synchronous :class:`mqlite.transaction.Transaction` collects operations
in memory (no I/O: the calls below stay plain methods) and applies them in
one LMDB write transaction on exit; here that commit runs in the broker's
worker threads, so the loop never waits on its fsync and the write lock is
never held across an ``await``.  Futures of ``tx.send`` / ``tx.publish`` are
asyncio futures, resolved after the commit.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from mqlite._headers import HeadersArg
from mqlite.aio.consumer import AsyncConsumer
from mqlite.aio.queue import AsyncDelivery, _unwrap
from mqlite.queue import Delivery
from mqlite.transaction import DEFAULT_CLAIM_TTL, Transaction
from mqlite.types import RecordMetadata

if TYPE_CHECKING:
    from mqlite.aio.broker import AsyncBroker

__all__ = ["AsyncTransaction"]


class AsyncTransaction:
    """One atomic group of operations (module docstring).  ``sync`` is the collector."""

    def __init__(self, broker: AsyncBroker, tx: Transaction) -> None:
        self._broker = broker
        self.sync = tx

    def send(self, topic: str, value: Any, key: Any = None, headers: HeadersArg = None,
             partition: int | None = None, timestamp_ms: int | None = None,
             dedup_id: str | bytes | None = None) -> asyncio.Future[RecordMetadata]:
        """Queue a send; the future resolves to its metadata after the commit."""
        return asyncio.wrap_future(self.sync.send(topic, value, key, headers, partition,
                                                  timestamp_ms, dedup_id))

    def publish(self, exchange: str, routing_key: str, value: Any, *, key: Any = None,
                headers: HeadersArg = None,
                mandatory: bool = False) -> asyncio.Future[list[RecordMetadata]]:
        """Queue an exchange publish; the future resolves to the copies' metadata."""
        return asyncio.wrap_future(self.sync.publish(exchange, routing_key, value, key=key,
                                                     headers=headers, mandatory=mandatory))

    def commit_offsets(self, consumer: AsyncConsumer | Any, offsets: Any = None) -> None:
        """Commit a group consumer's offsets with the transaction (fenced)."""
        if isinstance(consumer, AsyncConsumer):
            consumer = consumer.sync
        self.sync.commit_offsets(consumer, offsets)

    def ack(self, deliveries: AsyncDelivery | Delivery | Any) -> None:
        """Acknowledge queue deliveries with the transaction (stale ones abort it)."""
        self.sync.ack(_unwrap(deliveries))

    def claim(self, event_id: str | bytes, scope: str = "default", *,
              ttl: float = DEFAULT_CLAIM_TTL) -> None:
        """Claim ``event_id`` in ``scope`` exclusively, with the transaction."""
        self.sync.claim(event_id, scope, ttl=ttl)

    def record_processed(self, event_id: str | bytes, scope: str = "default",
                         ttl: float = DEFAULT_CLAIM_TTL) -> None:
        """The same as :meth:`claim` (older name)."""
        self.sync.record_processed(event_id, scope, ttl)

    def release(self, event_id: str | bytes, scope: str = "default") -> None:
        """Forget a claim with the transaction."""
        self.sync.release(event_id, scope)

    async def is_processed(self, event_id: str | bytes, scope: str = "default") -> bool:
        """Whether ``event_id`` is claimed (a hint; see :meth:`mqlite.Broker.is_processed`)."""
        return await self._broker._runner.run(self.sync.is_processed, event_id, scope)

    async def commit(self) -> None:
        """Apply everything in one LMDB transaction (all or nothing), in a worker thread."""
        await self._broker._runner.run(self.sync.commit)

    def abort(self) -> None:
        """Discard everything collected.  Idempotent."""
        self.sync.abort()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if et is not None:
            self.abort()
            return
        await self._broker._runner.run(self.sync.__exit__, None, None, None)
