"""What the asyncio producers share: futures of another thread handed to the loop in batches.

Both :class:`mqlite.aio.AsyncProducer` (over the threaded producer, whose
flusher thread resolves its futures) and :class:`mqlite.aio.kafka.AsyncKafkaProducer`
(over librdkafka, whose report thread resolves them) return an asyncio future
per record.  A resolved record is appended to a list under a lock; the first
one appended after the loop last emptied it schedules one
``call_soon_threadsafe``, so a commit that resolves a thousand records costs
the loop one callback, not a thousand.

A cancelled asyncio future only stops its task waiting: the record was
handed over and may still be committed.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Generic, Protocol, Self, TypeVar

from mqlite.aio._runner import Runner
from mqlite.types import RecordMetadata

__all__ = ["BridgedProducer", "copy_outcome"]


class _Resolvable(Protocol):
    """The part of a thread's future the bridge reads (``concurrent.futures`` shape)."""

    def cancelled(self) -> bool: ...
    def exception(self, timeout: float | None = ...) -> BaseException | None: ...
    def result(self, timeout: float | None = ...) -> Any: ...


class _Flushable(Protocol):
    @property
    def closed(self) -> bool: ...

    def flush(self, timeout: float | None = ...) -> Any: ...
    def close(self, timeout: float | None = ...) -> Any: ...


_S = TypeVar("_S", bound=_Flushable)


class BridgedProducer(Generic[_S]):
    """An asyncio producer over a threaded one, ``sync``, whose futures it bridges.

    Subclasses queue a record with ``sync`` and pass its future to
    :meth:`_bridge`; they may override :meth:`_settled` to count what left.
    """

    def __init__(self, runner: Runner, producer: _S, loop: asyncio.AbstractEventLoop) -> None:
        self._runner = runner
        self.sync = producer
        self._loop = loop
        self._lock = threading.Lock()
        self._done: list[tuple[asyncio.Future[RecordMetadata], _Resolvable]] = []

    def _bridge(self, fut: Any) -> asyncio.Future[RecordMetadata]:
        """An asyncio future resolved, on the loop, as ``fut`` is (``fut`` has
        ``add_done_callback``, called from any thread)."""
        afut: asyncio.Future[RecordMetadata] = self._loop.create_future()
        fut.add_done_callback(lambda f: self._resolved(afut, f))
        return afut

    def _settled(self, n: int) -> None:
        """Called under the lock when ``n`` bridged records leave the list (hook)."""

    def _resolved(self, afut: asyncio.Future[RecordMetadata], fut: _Resolvable) -> None:
        # the resolving thread: batch the hand-over to the loop
        with self._lock:
            first = not self._done
            self._done.append((afut, fut))
        if first:
            try:
                self._loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # the loop is closed: nobody awaits these any more
                with self._lock:
                    self._settled(len(self._done))
                    self._done.clear()

    def _deliver(self) -> None:
        with self._lock:
            done, self._done = self._done, []
            self._settled(len(done))
        for afut, fut in done:
            copy_outcome(fut, afut)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every record queued so far is committed (``timeout`` in seconds).

        Raises
        ------
        As the threaded producer's ``flush`` (e.g. ``TimeoutError``).
        """
        await self._runner.run(self.sync.flush, timeout)

    async def close(self, timeout: float | None = None) -> None:
        """Flush and stop (``timeout`` in seconds for the flush).  Idempotent."""
        await self._runner.run(self.sync.close, timeout)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self.sync.closed

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def copy_outcome(src: Any, dst: asyncio.Future[Any]) -> None:
    """Give the loop's future ``dst`` the outcome of the resolved thread future ``src``
    (its result, exception or cancellation); nothing if ``dst`` is done already (the
    awaiting task was cancelled).  On the loop's thread."""
    if dst.done():
        return
    if src.cancelled():
        dst.cancel()
        return
    exc = src.exception(0)
    if exc is not None:
        dst.set_exception(exc)
    else:
        dst.set_result(src.result(0))
