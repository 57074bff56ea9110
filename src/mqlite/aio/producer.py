"""``AsyncProducer``: ``await producer.send(...)`` resolves when the record is committed.

It is the threaded :class:`mqlite.Producer` (group commit: records sent while
a transaction commits all go into the next one, so many concurrent tasks
share each fsync) with its futures bridged into the event loop.  ``send``
only queues the record (no I/O on the loop thread); the producer's flusher
thread commits; completions are handed to the loop in batches: one
``call_soon_threadsafe`` per group of records the flusher resolved, not one
per record.

Cancelling an ``await producer.send()`` does not withdraw the record (it may
be committed already); it only stops waiting for it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mqlite._headers import HeadersArg
from mqlite.aio._bridge import BridgedProducer
from mqlite.producer import Producer
from mqlite.types import RecordMetadata

__all__ = ["AsyncProducer"]


class AsyncProducer(BridgedProducer[Producer]):
    """A batching producer for asyncio (module docstring).  ``sync`` is the threaded one.

    Any number of tasks may send through one producer.
    """

    def send_nowait(self, topic: str, value: Any, key: Any = None,
                    headers: HeadersArg = None, partition: int | None = None,
                    timestamp_ms: int | None = None,
                    dedup_id: str | bytes | None = None) -> asyncio.Future[RecordMetadata]:
        """Queue one record; an asyncio future of its metadata, resolved after commit.

        Raises
        ------
        As :meth:`mqlite.Producer.send` (argument errors here, storage errors
        through the future).
        """
        return self._bridge(self.sync.send(topic, value, key, headers, partition,
                                           timestamp_ms, dedup_id))

    async def send(self, topic: str, value: Any, key: Any = None,
                   headers: HeadersArg = None, partition: int | None = None,
                   timestamp_ms: int | None = None,
                   dedup_id: str | bytes | None = None) -> RecordMetadata:
        """Send one record; returns its metadata once committed (durable per ``durability``).

        Raises
        ------
        As :meth:`mqlite.Producer.send`, plus the storage error the record hit.
        """
        return await self.send_nowait(topic, value, key, headers, partition, timestamp_ms,
                                      dedup_id)
