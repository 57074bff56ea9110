"""``AsyncConsumer``: :class:`mqlite.Consumer` with coroutine ``poll`` / ``commit`` / ``close``.

Semantics and errors are the synchronous consumer's (it does the work); this
class decides where each round runs and how it waits:

* a round of ``poll`` (:meth:`mqlite.Consumer.loop_step`) that only reads
  (no group, or a joined member whose group is stable and that has nothing
  to commit) runs inline on the loop thread (a read transaction:
  microseconds); a round that must write (join, rebalance, automatic commit:
  an fsync under ``durability="sync"``; promote due delayed messages) runs in
  the broker's worker threads, and so do rebalance callbacks;
* between rounds it waits on the topic's wake-up word through the loop's
  doorbell (:mod:`mqlite.aio._bell`): no thread is held while waiting;
* cancelling a ``poll`` (``asyncio.timeout``, ``task.cancel()``) ends the wait
  at once.  A round already running in a worker finishes in the background;
  messages it fetched are put back (the positions rewound), so they are
  returned by the next ``poll`` rather than lost.

One task at a time: a second task polling while one is inside ``poll`` gets
:class:`~mqlite.ConcurrentAccessError`, as a second thread would with the
synchronous consumer.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Self, overload

from mqlite import _core
from mqlite.aio._bell import threadsafe_setter
from mqlite.aio._future import InlineFuture
from mqlite.config import require_int, require_positive_number
from mqlite.consumer import Consumer, PollStep
from mqlite.errors import ClosedError, ConcurrentAccessError
from mqlite.types import OffsetAndTimestamp, TopicPartition, TopicPartitionLike

if TYPE_CHECKING:
    from mqlite.aio.broker import AsyncBroker

__all__ = ["AsyncConsumer", "RebalanceCallback", "bridge_callback"]

#: A rebalance callback: a plain function or a coroutine function of the partitions.
RebalanceCallback = Callable[[list[TopicPartition]], Any | Awaitable[Any]]


def bridge_callback(cb: RebalanceCallback | None, loop: asyncio.AbstractEventLoop,
                    ) -> Callable[[list[TopicPartition]], Any] | None:
    """Wrap a rebalance callback for the synchronous consumer.

    Rebalances run inside poll rounds in a worker thread.  A plain callback
    runs there; one that returns an awaitable (a coroutine function) has it
    run on ``loop``, and the round waits for it, so partitions are revoked
    only once the coroutine finished (e.g. after committing).  Called on the
    loop thread itself (it cannot wait there), the coroutine is scheduled
    as a task instead.
    """
    if cb is None:
        return None
    if not callable(cb):
        raise TypeError(f"rebalance callbacks must be callable, not {type(cb).__name__}")
    loop_thread = threading.get_ident()

    def call(tps: list[TopicPartition]) -> Any:
        result = cb(tps)
        if inspect.isawaitable(result):
            if threading.get_ident() == loop_thread:
                return asyncio.ensure_future(result)
            return asyncio.run_coroutine_threadsafe(_awaited(result), loop).result()
        return result

    return call


async def _awaited(aw: Awaitable[Any]) -> Any:
    return await aw


class AsyncConsumer:
    """Reads messages like :class:`mqlite.Consumer`, with coroutines (module docstring).

    Made by :meth:`mqlite.aio.AsyncBroker.consumer`.  ``sync`` is the
    underlying consumer (do not call its blocking methods on the loop).
    """

    def __init__(self, broker: AsyncBroker, consumer: Consumer) -> None:
        self._broker = broker
        self.sync = consumer
        self._busy = False
        self._wait_fut: asyncio.Future[bool] | None = None
        self._wake_pending = False
        self._wake_lock = threading.Lock()
        self._inflight: asyncio.Future[Any] | None = None  # a round orphaned by a cancel
        self._buffer: list[_core.Message] = []
        self._last_max: int | None = None  # max_records of the last poll (the read-ahead's)

    # -- plain (non-blocking) calls --------------------------------------------------------
    @property
    def group(self) -> str | None:
        """The consumer group (``None``: no group)."""
        return self.sync.group

    @property
    def closed(self) -> bool:
        return self.sync.closed

    def subscribe(self, topics: str | Iterable[str]) -> None:
        """As :meth:`mqlite.Consumer.subscribe` (reads the catalog; no write)."""
        self.sync.subscribe(topics)

    def subscription(self) -> list[str]:
        return self.sync.subscription()

    def assign(self, partitions: Iterable[TopicPartitionLike]) -> None:
        """As :meth:`mqlite.Consumer.assign`."""
        self.sync.assign(partitions)

    def assignment(self) -> list[TopicPartition]:
        return self.sync.assignment()

    def seek(self, tp: TopicPartitionLike, offset: int) -> None:
        """As :meth:`mqlite.Consumer.seek` (in memory: not a coroutine, as in aiokafka)."""
        self.sync.seek(tp, offset)

    def positions(self) -> dict[TopicPartition, int]:
        return self.sync.positions()

    def wakeup(self) -> None:
        """Make a waiting :meth:`poll` return now (an empty list).  Any thread.

        When no poll is waiting, the next poll returns without waiting.
        """
        with self._wake_lock:
            self._wake_pending = True
            fut = self._wait_fut
        if fut is not None:
            threadsafe_setter(fut.get_loop(), fut)()

    # -- coroutines --------------------------------------------------------------------------
    async def poll(self, max_records: int | None = None,
                   timeout: float = 1.0) -> list[_core.Message]:
        """Up to ``max_records`` messages, waiting up to ``timeout`` seconds for some.

        As :meth:`mqlite.Consumer.poll`; the wait holds no thread.

        Raises
        ------
        ClosedError, TopicNotFoundError, OffsetOutOfRangeError, CorruptRecordError,
        ConcurrentAccessError (another task is polling), TypeError, ValueError
        """
        if max_records is not None:
            require_int(max_records, "max_records", minimum=1)
        require_positive_number(timeout, "timeout")
        if self._busy:
            raise ConcurrentAccessError(
                "this consumer is being polled by another task; a consumer serves one task "
                "at a time: create one consumer per task")
        self._busy = True
        self._last_max = max_records
        # One coroutine frame from here to the awaited future (the wait is armed inline,
        # not in a nested coroutine): cancelling a waiting poll unwinds only this frame.
        try:
            broker = self._broker
            loop = asyncio.get_running_loop()
            if self._inflight is not None:  # a cancelled round still running: let it finish
                await asyncio.wait([self._inflight])
            deadline = loop.time() + timeout
            with self._wake_lock:
                woken, self._wake_pending = self._wake_pending, False
            bell = broker._bell(loop)
            loop_step = self.sync.loop_step  # (bound once: the woken round looks up nothing)
            while True:
                step = loop_step(max_records)
                if step.needs_writes:
                    step = await self._step_in_worker(max_records)
                if step.done:
                    return step.messages
                remaining = deadline - loop.time()
                if remaining <= 0 or woken:
                    return []
                fut: asyncio.Future[bool] = InlineFuture(loop)  # the ring resumes us inline
                with self._wake_lock:
                    if self._wake_pending:
                        self._wake_pending = False
                        return []
                    self._wait_fut = fut
                span = min(remaining, step.wait)
                reg = (bell.arm(step.slot, step.seq, span, fut)
                       if bell.armable and not step.slots else None)
                try:
                    if reg is not None:
                        await fut
                    elif step.slots:  # several words (D64)
                        await bell.wait_any(step.slots, step.seqs, span, fut)
                    else:
                        await bell.wait(step.slot, step.seq, span, fut)
                finally:
                    if reg is not None:
                        bell.disarm(reg)
                    self._wait_fut = None
                    # The lock only when a wakeup() came (D72): one that comes after this
                    # read finds no wait and leaves _wake_pending set, which the next
                    # wait (above) or the next poll sees.
                    if self._wake_pending:
                        with self._wake_lock:
                            woken, self._wake_pending = self._wake_pending, False
                if woken:
                    return []
        finally:
            self._busy = False

    async def _step_in_worker(self, max_records: int | None) -> PollStep:
        job = self._broker._runner.submit(self.sync.poll_step, max_records)
        try:
            return await job
        except asyncio.CancelledError:
            # The round runs to its end in the worker; what it fetched is put back then.
            later = job.outcome_later()
            self._inflight = later
            later.add_done_callback(self._put_back)
            raise

    def _put_back(self, fut: asyncio.Future[Any]) -> None:
        """A round whose poll was cancelled finished: un-fetch what it fetched."""
        if self._inflight is fut:
            self._inflight = None
        if fut.cancelled() or fut.exception() is not None:
            return
        step: PollStep = fut.result()
        if not step.messages or self.sync.closed:
            return
        first: dict[TopicPartition, int] = {}
        for m in step.messages:
            tp = TopicPartition(m.topic, m.partition)
            if tp not in first:
                first[tp] = m.offset
        try:
            for tp, off in first.items():
                self.sync.rewind(tp, off)  # an offset of the id it was read from (D91)
        except (ValueError, ClosedError):
            pass  # no longer assigned: the new owner reads them

    def __aiter__(self) -> AsyncIterator[_core.Message]:
        return self

    async def __anext__(self) -> _core.Message:
        """The next message, polling in 1 s waits; stops when the consumer is closed."""
        while not self._buffer:
            if self.sync.closed:
                raise StopAsyncIteration
            try:
                self._buffer = await self.poll(timeout=1.0)
            except ClosedError:
                raise StopAsyncIteration from None
            self._buffer.reverse()
        return self._buffer.pop()

    async def commit(self, offsets: Any = None) -> None:
        """As :meth:`mqlite.Consumer.commit` (a write: runs in a worker thread).

        While the worker commits (an fsync under ``durability="sync"``), the
        loop reads the batch the next :meth:`poll` will return
        (:meth:`mqlite.Consumer.read_ahead`), so a ``poll`` + ``commit`` loop
        overlaps its read with the commit's sync.  The batch is returned only
        if it is still what that poll would read (no seek, rebalance or other
        ``max_records`` in between).
        """
        job = self._broker._runner.call(self.sync.commit, offsets)
        if not self._busy:  # (a poll waiting in another task reads for itself)
            self.sync.read_ahead(self._last_max)
        await job

    @overload
    async def committed(self, tp: TopicPartitionLike) -> int | None: ...

    @overload
    async def committed(self, tp: list[TopicPartition]) -> dict[TopicPartition, int | None]: ...

    async def committed(self, tp: TopicPartitionLike | list[TopicPartition]
                        ) -> int | None | dict[TopicPartition, int | None]:
        """As :meth:`mqlite.Consumer.committed`."""
        return await self._broker._runner.run(self.sync.committed, tp)

    async def position(self, tp: TopicPartitionLike) -> int:
        """As :meth:`mqlite.Consumer.position`."""
        return await self._broker._runner.run(self.sync.position, tp)

    async def seek_to_beginning(self, *tps: TopicPartitionLike) -> None:
        """As :meth:`mqlite.Consumer.seek_to_beginning`."""
        await self._broker._runner.run(self.sync.seek_to_beginning, *tps)

    async def seek_to_end(self, *tps: TopicPartitionLike) -> None:
        """As :meth:`mqlite.Consumer.seek_to_end`."""
        await self._broker._runner.run(self.sync.seek_to_end, *tps)

    async def lag(self) -> dict[TopicPartition, int]:
        """As :meth:`mqlite.Consumer.lag`."""
        return await self._broker._runner.run(self.sync.lag)

    async def beginning_offsets(self, tps: Iterable[TopicPartitionLike]) -> dict[TopicPartition, int]:
        """As :meth:`mqlite.Consumer.beginning_offsets`."""
        return await self._broker._runner.run(self.sync.beginning_offsets, list(tps))

    async def end_offsets(self, tps: Iterable[TopicPartitionLike]) -> dict[TopicPartition, int]:
        """As :meth:`mqlite.Consumer.end_offsets`."""
        return await self._broker._runner.run(self.sync.end_offsets, list(tps))

    async def offsets_for_times(self, timestamps: Mapping[TopicPartition, int]
                                ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """As :meth:`mqlite.Consumer.offsets_for_times`."""
        return await self._broker._runner.run(self.sync.offsets_for_times, dict(timestamps))

    async def close(self) -> None:
        """Leave the group (committing per policy) and stop.  Idempotent.

        A ``poll`` waiting in another task returns at once (an empty list).
        """
        if self.sync.closed:
            return
        self.wakeup()
        if self._inflight is not None:
            await asyncio.wait([self._inflight])
        await self._broker._runner.run(self.sync.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<mqlite.aio.AsyncConsumer {self.sync.subscription()} group={self.group!r}>"
