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
import threading
from typing import TYPE_CHECKING, Any, Self

from mqlite._headers import HeadersArg
from mqlite.future import SendFuture
from mqlite.producer import Producer
from mqlite.types import RecordMetadata

if TYPE_CHECKING:
    from mqlite.aio.broker import AsyncBroker

__all__ = ["AsyncProducer"]


class AsyncProducer:
    """A batching producer for asyncio (module docstring).  ``sync`` is the threaded one.

    Any number of tasks may send through one producer.
    """

    def __init__(self, broker: AsyncBroker, producer: Producer,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._broker = broker
        self.sync = producer
        self._loop = loop
        self._lock = threading.Lock()
        self._done: list[tuple[asyncio.Future[RecordMetadata], SendFuture[RecordMetadata]]] = []

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
        sfut = self.sync.send(topic, value, key, headers, partition, timestamp_ms, dedup_id)
        afut: asyncio.Future[RecordMetadata] = self._loop.create_future()
        sfut.add_done_callback(lambda f: self._resolved(afut, f))
        return afut

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

    def _resolved(self, afut: asyncio.Future[RecordMetadata],
                  sfut: SendFuture[RecordMetadata]) -> None:
        # flusher thread: batch the hand-over to the loop
        with self._lock:
            first = not self._done
            self._done.append((afut, sfut))
        if first:
            try:
                self._loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # loop closed: nobody awaits these any more
                with self._lock:
                    self._done.clear()

    def _deliver(self) -> None:
        with self._lock:
            done, self._done = self._done, []
        for afut, sfut in done:
            if afut.done():
                continue  # the awaiting task was cancelled
            if sfut.cancelled():
                afut.cancel()
                continue
            exc = sfut.exception(0)
            if exc is not None:
                afut.set_exception(exc)
            else:
                afut.set_result(sfut.result(0))

    async def flush(self, timeout: float | None = None) -> None:
        """Commit everything queued so far and wait for it (``timeout`` in seconds)."""
        await self._broker._runner.run(self.sync.flush, timeout)

    async def close(self, timeout: float | None = None) -> None:
        """Flush and stop.  Idempotent."""
        await self._broker._runner.run(self.sync.close, timeout)

    @property
    def closed(self) -> bool:
        return self.sync.closed

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
