"""``AsyncQueue`` and ``AsyncDelivery``: queue mode with coroutines.

Semantics and errors are :class:`mqlite.Queue`'s (it does the work).
Receiving writes (pending entries, cursors: an fsync under
``durability="sync"``), so each round of ``receive``
(:meth:`mqlite.Queue.receive_step`) runs in the broker's worker threads;
between rounds the task waits on the topic's wake-up word through the loop's
doorbell (no thread held).  Acks, nacks, extends and dead-letters run in the
workers too.

The underlying queue consumer is created (registered with its group, in a
write transaction) by the first coroutine call, or by ``await queue.start()``
to see errors such as :class:`~mqlite.TopicNotFoundError` early; argument
errors raise at construction.

Cancelling a ``receive`` ends its wait at once.  A round already running in
a worker finishes in the background; deliveries it took are made visible
again at once (``extend(0)``), so they are not held for a visibility
timeout.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, Self

from mqlite.aio._bell import threadsafe_setter
from mqlite.aio._future import InlineFuture
from mqlite.config import require_int, require_positive_number, validate_topic_name
from mqlite.errors import ClosedError
from mqlite.queue import Delivery, Queue, QueuePolicy
from mqlite.queue.receive import WOKEN, ReceiveStep

if TYPE_CHECKING:
    from mqlite.aio.broker import AsyncBroker

__all__ = ["AsyncDelivery", "AsyncQueue"]


class AsyncDelivery(Delivery):
    """A received message and its delivery state, settled with coroutines.

    A :class:`mqlite.queue.Delivery` (its fields, and a sync queue's settling
    calls take it as one) whose ``ack``, ``nack``, ``dead_letter`` and
    ``extend`` are coroutines, run off the event loop.  Built directly by the
    receive (no wrapper per message, D43).
    """

    __slots__ = ("_aq",)
    _aq: AsyncQueue

    @property
    def sync(self) -> Delivery:
        """A plain :class:`mqlite.queue.Delivery` of the same delivery (sync settling)."""
        d = Delivery(self.topic, self.partition, self.offset, self.timestamp_ms, self.key,
                     self.value, self.headers)
        d._r = self._r
        return d

    async def ack(self) -> None:  # type: ignore[override]
        """As :meth:`mqlite.queue.Delivery.ack` (raises :class:`StaleDeliveryError`)."""
        await self._aq._run(Delivery.ack, self)

    async def nack(self, delay: float | None = None,  # type: ignore[override]
                   error: str | None = None) -> None:
        """As :meth:`mqlite.queue.Delivery.nack`: visible again after ``delay`` seconds."""
        await self._aq._run(Delivery.nack, self, delay, error)

    async def dead_letter(self, reason: str = "rejected") -> None:  # type: ignore[override]
        """As :meth:`mqlite.queue.Delivery.dead_letter`."""
        await self._aq._run(Delivery.dead_letter, self, reason)

    async def extend(self, seconds: float) -> None:  # type: ignore[override]
        """As :meth:`mqlite.queue.Delivery.extend` (seconds from now, 0 to 43200)."""
        await self._aq._run(Delivery.extend, self, seconds)

    def __repr__(self) -> str:
        return "Async" + Delivery.__repr__(self)


def _unwrap(deliveries: Delivery | Iterable[Delivery]) -> list[Delivery]:
    if isinstance(deliveries, Delivery):
        return [deliveries]
    return list(deliveries)


class AsyncQueue:
    """A competing-consumer queue like :class:`mqlite.Queue`, with coroutines.

    Made by :meth:`mqlite.aio.AsyncBroker.queue` (see the module docstring).
    Any number of tasks may receive and settle through one queue.
    """

    def __init__(self, broker: AsyncBroker, make: Callable[[], Queue], topic: str,
                 group: str) -> None:
        validate_topic_name(topic)
        self._broker = broker
        self._make = make
        self._queue: Queue | None = None
        self._starting: asyncio.Future[Queue] | None = None
        self.topic = topic
        self.group = group
        self._closed = False
        self._lock = threading.Lock()
        self._waits: set[asyncio.Future[bool]] = set()
        self._wake_gen = 0
        self._wake_pending = False
        self._buffer: list[AsyncDelivery] = []

    @property
    def sync(self) -> Queue:
        """The underlying :class:`mqlite.Queue` (after :meth:`start` or a first call)."""
        if self._queue is None:
            raise ClosedError("this queue is not started yet: await queue.start() first")
        return self._queue

    @property
    def closed(self) -> bool:
        return self._closed

    async def start(self) -> Self:
        """Create the queue consumer (register with the group) now; idempotent.

        Raises
        ------
        TopicNotFoundError, QueueConfigConflictError, ClosedError
        """
        await self._get()
        return self

    async def _get(self) -> Queue:
        if self._queue is not None:
            return self._queue
        if self._closed:
            raise ClosedError("this queue consumer is closed")
        if self._starting is None:
            self._starting = self._broker._runner.submit(self._make)
        try:
            q: Queue = await asyncio.shield(self._starting)
        except BaseException:
            if self._starting.done():
                self._starting = None
            raise
        self._queue = q
        return q

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._broker._runner.run(fn, *args)

    # -- receiving -------------------------------------------------------------------------
    async def receive(self, max_messages: int = 10, timeout: float = 1.0,
                      visibility_timeout: float | None = None) -> list[AsyncDelivery]:
        """Take up to ``max_messages`` messages, waiting up to ``timeout`` s for some.

        As :meth:`mqlite.Queue.receive`; the wait holds no thread.

        Raises
        ------
        ClosedError, TopicNotFoundError, CorruptRecordError, TypeError, ValueError
        """
        require_int(max_messages, "max_messages", minimum=1)
        require_positive_number(timeout, "timeout")
        q = await self._get()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        bell = self._broker._bell(loop)
        with self._lock:
            gen = self._wake_gen
            woken, self._wake_pending = self._wake_pending, False
        first = True
        while True:
            step = await self._step(q, max_messages, visibility_timeout, first)
            first = False
            if step.done:
                out: list[AsyncDelivery] = step.deliveries  # type: ignore[assignment]
                for d in out:
                    d._aq = self
                return out
            remaining = deadline - loop.time()
            if remaining <= 0 or woken:
                return []
            fut: asyncio.Future[bool] = InlineFuture(loop)  # the ring resumes us inline
            with self._lock:
                if self._wake_gen != gen:
                    # a wakeup() during the round ends this receive, and only this one:
                    # it found no wait and left the flag for the next receive (D77)
                    self._wake_pending = False
                    return []
                self._waits.add(fut)
            span = min(remaining, step.wait)
            reg = bell.arm(step.slot, step.seq, span, fut) if bell.armable else None
            # A doorbell takes no wake-up from anyone (every armed loop is rung); a wait
            # without one sleeps in a worker thread and may take the one a bump gives
            # (D67): leaving without a round, it passes it on (D69), only when a
            # wake-up really took its slice off the futex queue (WOKEN, D76, D77).
            how = 0
            try:
                if reg is not None:  # armed inline: a cancel unwinds this frame only
                    await fut
                else:  # (a cancelled slice passes its wake-up on itself)
                    # only the group's word wakes one waiter; the topic's (no group
                    # word was free, D74) wakes all, so nothing is taken from anyone
                    how = await bell.wait_woken(step.slot, step.seq, span, fut,
                                                one=step.one)
            finally:
                if reg is not None:
                    bell.disarm(reg)
                # No lock (D77): the discard comes before the read of the generation,
                # so a wakeup() either finds this wait registered (and has moved the
                # generation before this read) or does not, and then this receive
                # sees it here or at the locked check before its next wait.
                self._waits.discard(fut)
                if self._wake_gen != gen:
                    woken = True
            if woken or self._closed:
                if how == WOKEN:
                    bell.pass_on(step.slot)
                if woken:
                    return []
                raise ClosedError("this queue consumer is closed")

    async def _step(self, q: Queue, max_messages: int, vt: float | None,
                    first: bool) -> ReceiveStep:
        job = self._broker._runner.submit(
            lambda: q.receive_step(max_messages, vt, first=first, cls=AsyncDelivery))
        try:
            return await job
        except asyncio.CancelledError:
            # The round runs to its end in the worker; what it took is released then.
            job.outcome_later().add_done_callback(self._put_back)
            raise

    def _put_back(self, fut: asyncio.Future[Any]) -> None:
        """A round whose receive was cancelled finished: release what it took."""
        if fut.cancelled() or fut.exception() is not None:
            return
        step: ReceiveStep = fut.result()
        if step.deliveries and self._queue is not None and not self._closed:
            q = self._queue
            task = self._broker._runner.submit(q.extend, step.deliveries, 0)
            task.add_done_callback(_ignore_outcome)

    def __aiter__(self) -> AsyncIterator[AsyncDelivery]:
        return self

    async def __anext__(self) -> AsyncDelivery:
        """The next delivery, receiving in 1 s waits; stops when the queue is closed."""
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            try:
                self._buffer = await self.receive(timeout=1.0)
            except ClosedError:
                raise StopAsyncIteration from None
            self._buffer.reverse()
        return self._buffer.pop()

    def wakeup(self) -> None:
        """Make the waiting :meth:`receive` calls return now (empty).  Any thread.

        When none is waiting, the next one returns without waiting.
        """
        with self._lock:
            self._wake_gen += 1
            waits = list(self._waits)
            if not waits:
                self._wake_pending = True
        for fut in waits:
            threadsafe_setter(fut.get_loop(), fut)()

    # -- settling --------------------------------------------------------------------------
    async def ack(self, deliveries: AsyncDelivery | Iterable[AsyncDelivery]) -> int:
        """Acknowledge many deliveries in one transaction (as :meth:`mqlite.Queue.ack`)."""
        q = await self._get()
        return int(await self._run(q.ack, _unwrap(deliveries)))

    async def nack(self, deliveries: AsyncDelivery | Iterable[AsyncDelivery],
                   delay: float | None = None, error: str | None = None) -> int:
        """As :meth:`mqlite.Queue.nack` (``delay`` in seconds)."""
        q = await self._get()
        return int(await self._run(q.nack, _unwrap(deliveries), delay, error))

    async def dead_letter(self, deliveries: AsyncDelivery | Iterable[AsyncDelivery],
                          reason: str = "rejected") -> int:
        """As :meth:`mqlite.Queue.dead_letter`."""
        q = await self._get()
        return int(await self._run(q.dead_letter, _unwrap(deliveries), reason))

    async def extend(self, deliveries: AsyncDelivery | Iterable[AsyncDelivery],
                     seconds: float) -> int:
        """As :meth:`mqlite.Queue.extend` (seconds from now, 0 to 43200)."""
        q = await self._get()
        return int(await self._run(q.extend, _unwrap(deliveries), seconds))

    # -- inspection ------------------------------------------------------------------------
    async def pending(self) -> list[dict[str, Any]]:
        """As :meth:`mqlite.Queue.pending`."""
        q = await self._get()
        result: list[dict[str, Any]] = await self._run(q.pending)
        return result

    async def lag(self) -> int:
        """As :meth:`mqlite.Queue.lag`."""
        q = await self._get()
        return int(await self._run(q.lag))

    async def policy(self) -> QueuePolicy:
        """The group's retry / dead-letter policy in force."""
        q = await self._get()
        return q.policy

    # -- lifecycle -------------------------------------------------------------------------
    async def close(self) -> None:
        """Stop; messages still held become visible to others at once.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.wakeup()
        if self._starting is not None and self._queue is None:
            try:
                self._queue = await asyncio.shield(self._starting)
            except Exception:  # noqa: BLE001 - it never started: nothing to close
                return
        if self._queue is not None:
            await self._run(self._queue.close)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<mqlite.aio.AsyncQueue {self.topic!r} group={self.group!r}>"


def _ignore_outcome(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved: no "never retrieved" warning
