"""Subscriber runtimes: one fetch thread per subscriber, lanes of handlers, commits.

(An ``async def`` subscriber's "fetch thread" is a task on the App's loop that
fetches through ``mqlite.aio``, and its jobs run inline or as tasks: D33, D40.)

Contract (what every subscriber guarantees):

* **Stream mode.**  The fetch thread owns the group consumer (``commit="manual"``)
  and polls in batches.  Messages are split into one *lane* per partition; a
  lane runs its messages one at a time, in offset order, as one job on the
  subscriber's thread pool (sync handlers) or the App's event loop (``async
  def``).  At most ``concurrency`` lanes run at once.  A lane reports the next
  offset after its last *finished* message (handled, skipped as a duplicate,
  dead-lettered or dropped); only the fetch thread commits, and only such
  offsets, so a commit never passes a message that failed and is still being
  retried, nor one that was never handled.  Transient failures are retried
  **in place** (the lane waits out the backoff; later messages of that
  partition wait, other partitions move on), see docs/decisions.md D29.
* **Queue mode.**  The fetch thread receives deliveries and hands chunks to up
  to ``concurrency`` jobs.  A transient failure is a ``nack(delay=backoff)`` (the
  message comes back later, possibly to another worker, with its delivery
  count raised: attempts survive crashes); a job acks its finished deliveries
  in one transaction together with their outputs.  When the topic is deleted
  (and maybe created again) the subscriber does not stop: it waits for the
  topic to exist, then receives from it with a new queue consumer (D84).  The
  deliveries it held went with the old topic: their settles are dropped,
  together with the outputs that were to be written with them.
* **Outputs** (``ctx.publish``, a publisher's return value, a reply, a dead
  letter) are held until the handler succeeds and written in one transaction
  per job flush, *before* the offsets that cover them are committed (or, with
  ``exactly_once=True`` / in queue mode, in the same transaction as the commit
  / acks).
* **Stop.**  Lanes stop between messages; what was not handled is neither
  committed nor acked, so the group's next owner gets it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue as _queue_mod
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple

from mqlite._core import LANE_DONE, LANE_RAISED, LANE_REPLY, LANE_SUSPENDED, LaneFlag, run_lane
from mqlite.app.backend import async_stream_consumer
from mqlite.app.codec import PayloadError, encode_value, fast_decoder
from mqlite.app.context import (
    CTX_EXACTLY_ONCE,
    CTX_NO_SCHEDULE,
    H_CORRELATION,
    H_REPLY_TO,
    Context,
    Output,
    context_maker,
)
from mqlite.app.exceptions import Reject, Retry, TimeLimitExceeded
from mqlite.errors import (
    AlreadyProcessedError,
    ClosedError,
    CommitFailedError,
    MqliteError,
    StaleDeliveryError,
    TopicNotFoundError,
)
from mqlite.queue import deadletters as _dl
from mqlite.types import TopicPartition

if TYPE_CHECKING:
    from mqlite._core import Message
    from mqlite.app.backend import Backend
    from mqlite.app.subscriber import SubscriberSpec

__all__ = ["STATUSES", "HandlerEvent", "QueueRunner", "Runner", "StreamRunner"]

log = logging.getLogger("mqlite.app")

#: Headers of a message on a retry topic (``retry_topic=``): the attempt it is for, the
#: group that retries it, and where it was first read.
H_RETRY_ATTEMPT = "x-mqlite-retry-attempt"
H_RETRY_GROUP = "x-mqlite-retry-group"
H_RETRY_TOPIC = "x-mqlite-retry-topic"
H_RETRY_PARTITION = "x-mqlite-retry-partition"
H_RETRY_OFFSET = "x-mqlite-retry-offset"
_RETRY_PREFIX = "x-mqlite-retry-"

#: Outcome statuses reported to listeners (``HandlerEvent.status``).
STATUSES = ("ok", "retry", "dead_letter", "error", "skipped")
_MAX_ERROR = 1000

#: Waiting for a deleted topic to exist again (D84, D89): the first look after this many
#: seconds, doubling up to ``_TOPIC_WAIT_MAX`` (a stop or a job's report ends a wait early).
_TOPIC_WAIT_MIN = 0.05
_TOPIC_WAIT_MAX = 1.0


class HandlerEvent(NamedTuple):
    """What a listener (``App(listeners=...)`` / ``app.add_listener``) is told.

    ``status`` is ``None`` when a handler call starts, then one of ``"ok"``,
    ``"retry"`` (failed, will be tried again), ``"dead_letter"`` (sent to the
    dead-letter topic), ``"error"`` (failed for good with no dead-letter topic:
    dropped) or ``"skipped"`` (an idempotency key seen before).  ``seconds``
    is the handler's wall time (0 at start).
    """

    subscriber: str
    group: str
    topic: str
    partition: int
    offset: int
    attempt: int
    status: str | None
    seconds: float
    error: BaseException | None
    payload: Any


class _Halt(Exception):
    """A lane stops early (stop, revoke, lost partition)."""


class _Item:
    """The finished part of one message in a job: outputs, claim, delivery to ack."""

    __slots__ = ("claim", "delivery", "outputs")

    def __init__(self, outputs: list[Output], claim: Any, delivery: Any) -> None:
        self.outputs = outputs
        self.claim = claim
        self.delivery = delivery


class _Acc:
    """What a job has finished and not yet flushed."""

    __slots__ = ("done", "items", "keys", "pos")

    def __init__(self) -> None:
        self.pos = 0  # messages of the job finished so far
        self.items: list[_Item] = []
        self.done: int | None = None  # stream: next offset to commit
        self.keys: set[Any] = set()  # idempotency keys claimed by this job (flushed or not)


class _Done(NamedTuple):
    """A lane's report to the fetch thread."""

    key: Any                 # TopicPartition (stream) or job id (queue)
    done: int | None         # next offset to commit (stream)
    rewind: int | None       # first offset not handled, to read again (stream)
    size: int                # messages the job was given
    final: bool              # False: progress report, the job goes on


class _Attempt:
    """One handler call of a message: context, start time, and what decoding gave."""

    __slots__ = ("ctx", "key", "payload", "t0")

    def __init__(self, ctx: Context | None, t0: float) -> None:
        self.ctx = ctx
        self.t0 = t0
        self.payload: Any = None
        self.key: Any = None


def _where(msgs: list[Any], i: int) -> tuple[str, int, int]:
    m = msgs[min(i, len(msgs) - 1)]
    return m.topic, m.partition, m.offset


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_MAX_ERROR]


def dead_letter_output(dlq: str, m: Message, group: str, attempts: int,
                       exc: BaseException, reason: str) -> Output:
    """The dead letter of ``m``: its value, key and headers plus ``x-*`` provenance headers.

    The header names are those of queue mode's dead letters, so ``broker.dead_letters``,
    ``broker.redrive`` and ``mqlite dlq`` work on them; ``x-error-type`` is added.
    """
    now = str(time.time_ns() // 1_000_000).encode()
    hs = [(n, v) for n, v in m.headers if n not in _dl.DLQ_HEADERS]
    hs += [(_dl.H_TOPIC, m.topic.encode()), (_dl.H_PARTITION, str(m.partition).encode()),
           (_dl.H_OFFSET, str(m.offset).encode()), (_dl.H_GROUP, group.encode()),
           (_dl.H_COUNT, str(attempts).encode()),
           (_dl.H_ERROR, _error_text(exc).encode("utf-8", "replace")),
           (_dl.H_ERROR_TYPE, type(exc).__qualname__.encode()),
           (_dl.H_REASON, reason.encode()), (_dl.H_TIME, now)]
    return Output(dlq, m.value if m.value is not None else b"", m.key, hs, None)


class Runner:
    """Common machinery of a subscriber runtime (internal)."""

    def __init__(self, spec: SubscriberSpec, backend: Backend, app: Any) -> None:
        self.spec = spec
        self.backend = backend
        self.app = app
        self.ready = False
        self.failed: BaseException | None = None
        self.handled = 0
        #: Why the subscriber is not fetching (all of its topics) although running (``None``:
        #: it is): a subscriber whose topic was deleted waits for it (D84, D89); shown by
        #: ``app.health()``.
        self.waiting: str | None = None
        self._gone: list[str] = []  # the subscribed topics found deleted, waited for
        self._woken = threading.Event()  # a stop or a report, for a sync topic wait
        self._stop_flag = LaneFlag()  # read as a C field by run_lane before each message
        self._done_q: _queue_mod.SimpleQueue[_Done] = _queue_mod.SimpleQueue()
        self._running = 0
        self._buffered = 0
        self._thread: threading.Thread | None = None
        self._task: Future[None] | None = None  # the loop-driven subscriber's task
        self._pool: Executor | None = None
        #: Sync handler calls past their ``time_limit`` whose thread has not returned (D88).
        self.overdue = 0
        self._scope = f"{spec.group}:{spec.name}"
        # what ctx.publish may do (D88): delayed sends need a dedup id under exactly_once;
        # none on a backend without delayed sends (Kafka: delayed_sends = False)
        self._ctx_flags = (CTX_EXACTLY_ONCE if spec.exactly_once else 0) | (
            0 if getattr(backend, "delayed_sends", True) else CTX_NO_SCHEDULE)
        # async handlers: fetching (mqlite.aio) and handling both run on the App's loop, with
        # jobs inline (concurrency=1) or as tasks beside the fetch task (D33, D40); queue mode
        # needs the backend's async_queue, else a fetch thread as for sync handlers
        self._loop_driven = spec.is_async and (spec.mode == "stream" or
                                               hasattr(backend, "async_queue"))
        self._tasks: set[asyncio.Task[Any]] = set()  # loop-driven jobs running as tasks
        self._report_evt: asyncio.Event | None = None  # set on a job's report (loop-driven)
        self._evt_loop: asyncio.AbstractEventLoop | None = None

    @property
    def _stopping(self) -> bool:
        """Stop requested (:meth:`request_stop`): fetching ends, lanes stop between
        messages."""
        return self._stop_flag.on

    @_stopping.setter
    def _stopping(self, on: bool) -> None:
        self._stop_flag.on = on

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self._loop_driven:  # no fetch thread: the subscriber is one task on the App loop
            self._task = asyncio.run_coroutine_threadsafe(self._amain(), self.app._event_loop())
            return
        if not self.spec.is_async and self.spec.concurrency > 1 and self._pool is None:
            self._pool = ThreadPoolExecutor(self.spec.concurrency,
                                            thread_name_prefix=f"mqlite-{self.spec.name}")
        self._thread = threading.Thread(target=self._main, name=f"mqlite-fetch-{self.spec.name}",
                                        daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Stop fetching; lanes stop between messages (any thread)."""
        self._stopping = True
        self._wake()

    def join(self, timeout: float | None) -> bool:
        """Wait for the fetch thread to finish its shutdown; True when it did."""
        if self._task is not None:
            try:
                self._task.result(timeout)
            except TimeoutError:
                return False
            except BaseException as exc:  # noqa: BLE001 - _amain logged it, in self.failed
                log.debug("subscriber %s ended with %r", self.spec.name, exc)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        return True

    def busy(self) -> bool:
        """Messages fetched and not finished, or a job running."""
        return self._running > 0 or self._buffered > 0

    def lag(self) -> int:
        raise NotImplementedError

    def _wake(self) -> None:
        raise NotImplementedError

    def _main(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            if not self._stopping:
                log.exception("subscriber %s stopped on an error", self.spec.name)
            self.failed = exc
        finally:
            self.ready = False
            self.app._notify_progress()

    async def _amain(self) -> None:
        try:
            await self._aloop()
        except BaseException as exc:
            if not self._stopping:
                log.exception("subscriber %s stopped on an error", self.spec.name)
            self.failed = exc
        finally:
            self.ready = False
            self.app._notify_progress()

    def _loop(self) -> None:
        raise NotImplementedError

    async def _aloop(self) -> None:
        raise NotImplementedError

    # -- a deleted topic (D84, D89): the wait both modes share ---------------------------------
    def _missing(self, topics: list[str]) -> list[str]:
        """Those of ``topics`` that do not exist now (a backend without ``topic_exists``:
        none; opening a consumer then tells)."""
        exists = getattr(self.backend, "topic_exists", None)
        if exists is None:
            return []
        return [t for t in topics if not exists(t)]

    def _note_gone(self, topics: list[str], then: str) -> None:
        """``topics`` (subscribed) do not exist: show the wait in health (the subscriber is
        not ready) and log one warning per topic newly found deleted; ``then`` says what
        the subscriber does once they exist again."""
        for t in topics:
            if t not in self._gone:
                log.warning("subscriber %s (group %r): topic %r was deleted; waiting for it "
                            "to be created again, then %s", self.spec.name, self.spec.group,
                            t, then)
        if self._gone == topics and self.waiting is not None:
            return
        self._gone = list(topics)
        names = " and ".join(repr(t) for t in topics)
        self.ready = True  # it joined once: health shows the wait, not a start-up
        self.waiting = (f"topic {names} was deleted; waiting for it to be created again "
                        f"(the App does not create it while running)" if len(topics) == 1 else
                        f"topics {names} were deleted; waiting for them to be created again "
                        f"(the App does not create them while running)")
        self.app._notify_progress()

    def _note_back(self, what: str) -> None:
        """Every subscribed topic exists again and is read (``what``: how): one INFO line."""
        if self.waiting is None:
            return
        gone, self._gone, self.waiting = self._gone, [], None
        log.info("subscriber %s: topic %s exists again; %s", self.spec.name,
                 " and ".join(repr(t) for t in gone), what)
        self.app._notify_progress()

    def _pause_sync(self, delay: float) -> float:
        """Wait ``delay`` s, or less when a stop (or a job's report) comes; the next delay
        (doubled, up to :data:`_TOPIC_WAIT_MAX`).  Fetch thread; clear ``_woken`` before
        the look this pause follows."""
        self._woken.wait(delay)
        return min(2 * delay, _TOPIC_WAIT_MAX)

    async def _pause_async(self, delay: float) -> float:
        """:meth:`_pause_sync` for the fetch task, on the App's loop."""
        await self._wait_report(delay)
        return min(2 * delay, _TOPIC_WAIT_MAX)

    # -- jobs ------------------------------------------------------------------------------
    def _submit(self, job: Callable[[], Any], coro: Callable[[], Coroutine[Any, Any, Any]]
                ) -> None:
        self._running += 1
        if self.spec.is_async:
            fut = asyncio.run_coroutine_threadsafe(coro(), self.app._event_loop())
        elif self._pool is None:
            # concurrency=1, sync: run on the fetch thread (no hand-off; with the GIL a
            # second thread would not run a CPU-bound handler any sooner)
            job()
            return
        else:
            fut = self._pool.submit(job)
        fut.add_done_callback(self._job_crashed)

    def _job_crashed(self, fut: Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.error("subscriber %s: a job failed: %r", self.spec.name, fut.exception())

    def _report(self, d: _Done) -> None:
        self._done_q.put(d)
        if self._loop_driven:
            if self.spec.concurrency > 1:
                self._wake()  # jobs run as tasks while the fetch task waits
        elif threading.current_thread() is not self._thread:
            self._wake()  # inline jobs (on the fetch thread) need no wake-up

    # -- loop-driven subscribers: jobs as tasks ----------------------------------------------
    def _drain(self, timeout: float) -> None:
        """Take the jobs' reports (waiting up to ``timeout`` seconds for the first)."""
        got = False
        while True:
            try:
                d = self._done_q.get(timeout=timeout) if timeout > 0 and not got else \
                    self._done_q.get_nowait()
            except _queue_mod.Empty:
                break
            got = True
            self._took(d)
        if got:
            self.app._notify_progress()

    def _took(self, d: _Done) -> None:
        """Account for one job's report (the subclass's bookkeeping)."""
        raise NotImplementedError

    def _kick(self) -> None:
        """End the fetch task's :meth:`_wait_report` now (any thread)."""
        evt, loop = self._report_evt, self._evt_loop
        if evt is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(evt.set)

    async def _wait_report(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for a job's report or a stop request (fetch task, on
        the loop; it yields to the loop unless a report is already waiting)."""
        evt = self._report_evt
        if evt is None:  # first wait: made on the loop
            evt = self._report_evt = asyncio.Event()
            self._evt_loop = asyncio.get_running_loop()
        evt.clear()
        if self._done_q.empty():
            try:
                await asyncio.wait_for(evt.wait(), timeout)
            except TimeoutError:
                pass

    def _spawn(self, job: Coroutine[Any, Any, Any]) -> None:
        """Run ``job`` as a task beside the fetch task (loop-driven, concurrency > 1)."""
        task = asyncio.get_running_loop().create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("subscriber %s: a job failed: %r", self.spec.name, task.exception())

    def _emit(self, m: Message, attempt: int, status: str | None, seconds: float,
              error: BaseException | None, payload: Any) -> None:
        ev = HandlerEvent(self.spec.name, self.spec.group, m.topic, m.partition, m.offset,
                          attempt, status, seconds, error, payload)
        for fn in self.app._listeners:
            try:
                fn(ev)
            except Exception:
                log.exception("listener %r failed", fn)

    def _halted(self, lane: Any) -> bool:
        return self._stopping or lane.revoked

    # -- one message: before, after ------------------------------------------------------
    def _success(self, acc: _Acc, m: Message, ctx: Context | None, result: Any, claim: Any,
                 delivery: Any, reply: bool = True) -> None:
        spec = self.spec
        outputs = ctx._outputs if ctx is not None else []
        if result is not None and spec.publishers:
            value = encode_value(result)
            outputs = outputs + [Output(t, value, m.key, None, None) for t in spec.publishers]
        if reply and m.headers:  # a request: reply even with None (JSON null)
            reply_to = corr = None
            for n, v in m.headers:
                if n == H_REPLY_TO:
                    reply_to = v.decode()
                elif n == H_CORRELATION:
                    corr = v
            if reply_to is not None:
                outputs = outputs + [Output(reply_to, encode_value(result), None,
                                            [(H_CORRELATION, corr or b"")], None)]
        manual_skip = spec.ack == "manual" and (ctx is None or not ctx._acks)
        if claim is not None:
            acc.keys.add(claim)
        if outputs or claim is not None or (delivery is not None and not manual_skip):
            acc.items.append(_Item(outputs, claim, None if manual_skip else delivery))
        if delivery is None and not manual_skip:
            acc.done = m.offset + 1

    def _give_up(self, acc: _Acc, m: Message, attempt: int, exc: BaseException,
                 permanent: bool, delivery: Any) -> str:
        spec = self.spec
        if isinstance(exc, PayloadError):
            reason = "invalid payload"
        elif isinstance(exc, Reject):
            reason = f"rejected: {exc.reason}"[:_MAX_ERROR]
        elif permanent:
            reason = "permanent error"
        else:
            reason = "retries exhausted"
        if spec.dead_letter is not None:
            src = _original(m) if spec.retry_topic is not None else m
            out = dead_letter_output(spec.dead_letter, src, spec.group, attempt, exc, reason)
            acc.items.append(_Item([out], None, delivery))
            status = "dead_letter"
            log.warning("%s: %s[%d]@%d dead-lettered to %s after %d attempt(s): %s",
                        spec.name, m.topic, m.partition, m.offset, spec.dead_letter, attempt,
                        _error_text(exc))
        else:
            if delivery is not None:
                acc.items.append(_Item([], None, delivery))
            status = "error"
            log.error("%s: %s[%d]@%d dropped after %d attempt(s) (no dead_letter topic): %s",
                      spec.name, m.topic, m.partition, m.offset, attempt, _error_text(exc))
        if delivery is None:
            acc.done = m.offset + 1
        return status

    def _failure(self, acc: _Acc, m: Message, attempt: int, exc: BaseException,
                 delivery: Any, t0: float, payload: Any) -> float | None:
        """Classify a failed attempt; returns a delay to retry in place, else ``None``."""
        spec = self.spec
        permanent = isinstance(exc, spec.permanent_types)
        obs = self.app._listeners
        if not permanent and attempt <= spec.retries:
            if isinstance(exc, Retry) and exc.delay is not None:
                delay = exc.delay
            else:
                delay = spec.backoff.delay(attempt)
            if obs:
                self._emit(m, attempt, "retry", time.perf_counter() - t0, exc, payload)
            if delivery is not None and spec.ack != "before":
                try:
                    delivery.nack(delay=delay, error=_error_text(exc))
                except (StaleDeliveryError, ClosedError, TopicNotFoundError):
                    pass  # redelivered elsewhere already / shutting down / topic deleted
                return None
            if spec.retry_topic is not None:  # the partition moves on; the retry comes later
                acc.items.append(_Item([_retry_output(spec.retry_topic, spec.group, m,
                                                      attempt + 1, delay)], None, None))
                acc.done = m.offset + 1
                return None
            return delay
        status = self._give_up(acc, m, attempt, exc, permanent, delivery)
        if obs:
            self._emit(m, attempt, status, time.perf_counter() - t0, exc, payload)
        return None

    # -- flushing ----------------------------------------------------------------------------
    def _needs_io(self, acc: _Acc) -> bool:
        return bool(acc.items) or (self.spec.exactly_once and acc.done is not None)

    def _flush(self, lane: Any, acc: _Acc) -> None:
        """Write the finished part of a job; report committable progress (job thread)."""
        items, done = acc.items, acc.done
        acc.items, acc.done = [], None
        if items or (self.spec.exactly_once and done is not None):
            self._apply(lane, items, done)
        if done is not None and lane is not None:
            lane.done = done

    def _apply(self, lane: Any, items: list[_Item], done: int | None) -> None:
        spec = self.spec
        offsets = None
        if spec.exactly_once and done is not None and lane is not None:
            offsets = (self._consumer_for_tx(), {lane.tp: done})
        for tries in range(len(items) + 2):
            if tries:  # delayed messages went out before the failed transaction (D88)
                _drop_scheduled(items)
            outputs = [o for it in items for o in it.outputs]
            claims = [(it.claim, self._scope, spec.idempotency_ttl) for it in items
                      if it.claim is not None]
            acks = [it.delivery for it in items if it.delivery is not None]
            try:
                self.backend.apply(outputs, claims, offsets, acks)
                return
            except AlreadyProcessedError as exc:
                # Another worker handled that event first: drop its outputs, keep the rest.
                key = exc.event_id
                for it in items:
                    if it.claim is not None and (it.claim == key or (
                            isinstance(it.claim, str) and it.claim.encode() == key)):
                        it.outputs, it.claim = [], None
                        break
                else:
                    raise
            except StaleDeliveryError:
                # A visibility timeout ran out: apply delivery by delivery, skip stale ones.
                _drop_scheduled(items)
                for it in items:
                    try:
                        self.backend.apply(it.outputs, [] if it.claim is None else
                                           [(it.claim, self._scope, spec.idempotency_ttl)],
                                           None, [] if it.delivery is None else [it.delivery])
                    except (StaleDeliveryError, AlreadyProcessedError):
                        pass
                return
            except CommitFailedError:
                log.warning("%s: lost %s while committing; its new owner handles it",
                            spec.name, lane.tp if lane is not None else "?")
                if lane is not None:
                    lane.revoked = True
                raise _Halt from None
            except TopicNotFoundError:
                if not acks or not self._settles_gone(lane):
                    raise  # an output topic is missing (auto_create_topics=False): retried
                # The subscribed topic was deleted under these deliveries (D84): they went
                # with it, nobody gets them again, and what was to be written with their
                # settles is dropped with them (one transaction, all or nothing).
                kept = [it for it in items if it.delivery is None]
                log.warning("%s: %d finished deliveries of deleted topic %r could not be "
                            "settled; their outputs were dropped with them", spec.name,
                            len(items) - len(kept), spec.topics[0])
                items = kept
                if not items:
                    return

    def _consumer_for_tx(self) -> Any:
        raise NotImplementedError

    def _settles_gone(self, lane: Any) -> bool:
        """Whether the deliveries of ``lane``'s job went with a deleted topic (queue mode)."""
        return False

    # -- the job bodies --------------------------------------------------------------------
    def _prepare(self, m: Message) -> tuple[Any, Any]:
        """Decode; with ``idempotency_key``, return the key (raise _Skip when seen)."""
        payload = self.spec.decode(m.value)
        key = None
        if self.spec.idempotency_key is not None:
            key = self.spec.idempotency_key(payload)
            if key is not None and not isinstance(key, (str, bytes)):
                key = str(key)
        return payload, key

    def _fast(self) -> bool:
        """Whether a job may take the lean path (per message only the call, and a
        ``ctx`` when the handler takes one; a message with something to send goes
        back to Python)."""
        spec = self.spec
        return (not self.app._listeners
                and spec.idempotency_key is None and not spec.exactly_once
                and spec.mode == "stream" and spec.ack != "manual"
                and spec.retry_topic is None)

    def _lean_args(self) -> tuple[int, Callable[[Any], Context] | None, bool, Any]:
        """``run_lane``'s ``mode``, ``make_ctx``, ``ctx_first`` and ``fast_decode``
        for this handler: a handler that takes a ``ctx`` gets a new Context per
        message (attempt 1: the lean path has no retry topic), made in the C loop;
        a JSON payload is decoded by msgspec directly (D45)."""
        spec = self.spec
        mode = 0 if spec.raw_bytes else (1 if spec.takes_payload else 2)
        fast = fast_decoder(spec.decode) if mode == 1 else None
        if spec.ctx_param is None:
            return mode, None, False, fast
        return (mode, context_maker(1, spec.group, spec.name, self._ctx_flags), spec.ctx_first,
                fast)

    def _fast_done(self, acc: _Acc, m: Message, ctx: Context | None, result: Any) -> None:
        """Lean path: a handled message with headers (a request wants its reply),
        whose ``ctx`` published, or whose result a publisher sends: settled as the
        full path settles it."""
        self._success(acc, m, ctx, result, None, None)

    def _run_sync(self, lane: Any, msgs: list[Any], attempt_of: Callable[[Any], int]) -> int:
        """Handle ``msgs`` in order on this thread; returns how many were finished."""
        return self._guarded_sync(lane, msgs, lambda acc: self._handle_sync(lane, msgs, acc,
                                                                            attempt_of))

    def _handle_sync(self, lane: Any, msgs: list[Any], acc: _Acc,
                     attempt_of: Callable[[Any], int]) -> None:
        first_exc = self._lean_sync(lane, msgs, acc) if self._fast() else None
        n = len(msgs)
        while acc.pos < n and not self._halted(lane):
            self._one_sync(lane, acc, msgs[acc.pos], attempt_of, first_exc)
            first_exc = None
            acc.pos += 1

    def _lean_sync(self, lane: Any, msgs: list[Any], acc: _Acc) -> Exception | None:
        """The lean path (:meth:`_fast`): the handler on each message in a C loop
        (``_core.run_lane``) until the end, a stop, or an error, which is returned
        for :meth:`_one_sync` to classify as the message's first attempt."""
        spec, i = self.spec, 0
        mode, make_ctx, ctx_first, fast = self._lean_args()
        while True:
            i, outcome, obj, ctx = run_lane(spec.handler, msgs, i, mode, False, spec.decode,
                                            self._stop_flag, lane.revoked_flag, make_ctx,
                                            ctx_first, bool(spec.publishers), fast)
            if outcome != LANE_REPLY:
                break
            self._fast_done(acc, msgs[i], ctx, obj)  # a reply, ctx outputs or a result out
            i += 1
        if i:
            acc.pos, acc.done = i, msgs[i - 1].offset + 1
        return obj if outcome == LANE_RAISED else None

    def _guarded_sync(self, lane: Any, msgs: list[Any], body: Callable[[_Acc], None]) -> int:
        """Run a job's ``body``, which advances ``acc.pos`` past each finished message,
        then flush.  A halt flushes what was finished; any other error is logged and
        the job pauses 1 s (its unfinished messages are read again).  Returns
        ``acc.pos``."""
        acc = _Acc()
        try:
            body(acc)
            self._flush(lane, acc)
        except _Halt:
            self._flush_halted(lane, acc)
        except Exception:  # noqa: BLE001 - logged with its traceback, then handled again
            self._log_failed_job(msgs, acc.pos)
            self._wait(lane, 1.0)
        self.handled += acc.pos
        return acc.pos

    async def _guarded_async(self, lane: Any, msgs: list[Any],
                             body: Callable[[_Acc], Coroutine[Any, Any, None]]) -> int:
        """:meth:`_guarded_sync` on the App's loop (flushes off it when they write)."""
        acc = _Acc()
        try:
            await body(acc)
            await self._flush_async(lane, acc)
        except _Halt:
            await self._flush_halted_async(lane, acc)
        except Exception:  # noqa: BLE001 - logged with its traceback, then handled again
            self._log_failed_job(msgs, acc.pos)
            await self._wait_async(lane, 1.0)
        self.handled += acc.pos
        return acc.pos

    def _begin(self, m: Any, attempt: int) -> _Attempt:
        """Start one attempt of ``m``: its context, start time and the listeners' event."""
        spec = self.spec
        at = _Attempt(Context(m, attempt, spec.group, spec.name, self._ctx_flags)
                      if spec.ctx_param else None,
                      time.perf_counter())
        if self.app._listeners:
            self._emit(m, attempt, None, 0.0, None, None)
        return at

    def _ready(self, acc: _Acc, m: Any, attempt: int, at: _Attempt, delivery: Any,
               pending: Exception | None) -> bool:
        """Raise the error the lean path already met (``pending``), decode ``m`` into
        ``at`` and check its idempotency key; False when ``m`` is a duplicate, settled
        as skipped, so the handler is not called."""
        if pending is not None:
            raise pending
        if self.spec.retry_topic is not None and m.topic == self.spec.retry_topic and \
                _header(m, H_RETRY_GROUP) != self.spec.group.encode():
            self._success(acc, m, None, None, None, delivery, reply=False)
            return False  # another group's retry on a shared retry topic
        at.payload, at.key = self._prepare(m)
        if at.key is not None and (at.key in acc.keys or
                                   self.backend.is_processed(at.key, self._scope)):
            self._success(acc, m, None, None, None, delivery, reply=False)
            if self.app._listeners:
                self._emit(m, attempt, "skipped", 0.0, None, at.payload)
            return False
        return True

    def _done(self, acc: _Acc, m: Any, attempt: int, at: _Attempt, result: Any,
              delivery: Any) -> None:
        """The handler returned ``result``: settle ``m`` and tell the listeners."""
        self._success(acc, m, at.ctx, result, at.key, delivery)
        if self.app._listeners:
            self._emit(m, attempt, "ok", time.perf_counter() - at.t0, None, at.payload)

    def _one_sync(self, lane: Any, acc: _Acc, m: Any, attempt_of: Callable[[Any], int],
                  first_exc: Exception | None) -> None:
        """One message through attempts, retries, dead letter (raises _Halt when stopped)."""
        spec = self.spec
        delivery = m if spec.mode == "queue" and spec.ack != "before" else None
        attempt = attempt_of(m)
        while True:
            at = self._begin(m, attempt)
            pending, first_exc = first_exc, None
            try:
                if not self._ready(acc, m, attempt, at, delivery, pending):
                    return
                if spec.time_limit is None:
                    result = spec.call(at.payload, at.ctx)
                else:
                    result = self._call_timed(lane, acc, m, attempt, at, delivery)
            except _Halt:
                raise  # abandoned at its time limit (D88): settled by the heartbeat
            except Exception as exc:  # noqa: BLE001 - every handler error is classified
                delay = self._failure(acc, m, attempt, exc, delivery, at.t0, at.payload)
                if delay is None:
                    return
                self._flush(lane, acc)
                self._report_progress(lane)
                if self._wait(lane, delay):
                    raise _Halt from None
                attempt += 1
                continue
            self._done(acc, m, attempt, at, result, delivery)
            return

    async def _run_async(self, lane: Any, msgs: list[Any],
                         attempt_of: Callable[[Any], int]) -> int:
        """The :meth:`_run_sync` of ``async def`` handlers, on the App's loop."""
        async def body(acc: _Acc) -> None:
            first_exc = await self._lean_async(lane, msgs, acc) if self._fast() else None
            n = len(msgs)
            while acc.pos < n and not self._halted(lane):
                await self._one_async(lane, acc, msgs[acc.pos], attempt_of, first_exc)
                first_exc = None
                acc.pos += 1
        return await self._guarded_async(lane, msgs, body)

    async def _lean_async(self, lane: Any, msgs: list[Any], acc: _Acc) -> Exception | None:
        """:meth:`_lean_sync` for ``async def`` handlers: a coroutine that returns
        without waiting finishes inside the C loop; one that waits is awaited here
        (:func:`_resume`), then the loop goes on."""
        spec, i = self.spec, 0
        mode, make_ctx, ctx_first, fast = self._lean_args()
        while True:
            i, outcome, obj, ctx = run_lane(spec.handler, msgs, i, mode, True, spec.decode,
                                            self._stop_flag, lane.revoked_flag, make_ctx,
                                            ctx_first, bool(spec.publishers), fast)
            if outcome == LANE_DONE or outcome == LANE_RAISED:
                break
            if outcome != LANE_REPLY:  # it waits: finish it on the loop
                try:
                    obj = await (_resume(*obj) if outcome == LANE_SUSPENDED else obj)
                except Exception as exc:  # noqa: BLE001 - classified by _one_async
                    outcome, obj = LANE_RAISED, exc
                    break
                if not msgs[i].headers and not (ctx is not None and ctx._outputs) and not (
                        obj is not None and spec.publishers):
                    i += 1
                    continue
            self._fast_done(acc, msgs[i], ctx, obj)  # a reply, ctx outputs or a result out
            i += 1
        if i:
            acc.pos, acc.done = i, msgs[i - 1].offset + 1
        return obj if outcome == LANE_RAISED else None


    async def _one_async(self, lane: Any, acc: _Acc, m: Any,
                         attempt_of: Callable[[Any], int], first_exc: Exception | None) -> None:
        """:meth:`_one_sync` for ``async def`` handlers."""
        spec = self.spec
        delivery = m if spec.mode == "queue" and spec.ack != "before" else None
        attempt = attempt_of(m)
        while True:
            at = self._begin(m, attempt)
            pending, first_exc = first_exc, None
            try:
                if not self._ready(acc, m, attempt, at, delivery, pending):
                    return
                if spec.time_limit is None:
                    result = await spec.call(at.payload, at.ctx)
                else:
                    limit = asyncio.timeout(spec.time_limit)
                    try:
                        async with limit:
                            result = await spec.call(at.payload, at.ctx)
                    except TimeoutError:
                        if not limit.expired():
                            raise  # the handler's own TimeoutError
                        self._log_overdue(m, attempt, "it was cancelled")
                        raise TimeLimitExceeded(spec.time_limit, spec.name) from None
            except Exception as exc:  # noqa: BLE001 - every handler error is classified
                delay = self._failure(acc, m, attempt, exc, delivery, at.t0, at.payload)
                if delay is None:
                    return
                await asyncio.get_running_loop().run_in_executor(
                    self.app._io_pool(), self._flush, lane, acc)
                self._report_progress(lane)
                if await self._wait_async(lane, delay):
                    raise _Halt from None
                attempt += 1
                continue
            self._done(acc, m, attempt, at, result, delivery)
            return

    def _report_progress(self, lane: Any) -> None:
        pass

    def _call_timed(self, lane: Any, acc: _Acc, m: Any, attempt: int, at: _Attempt,
                    delivery: Any) -> Any:
        """A sync handler call under ``time_limit`` (queue mode, D88): see
        :meth:`QueueRunner._abandon`."""
        raise NotImplementedError

    def _log_overdue(self, m: Any, attempt: int, what: str) -> None:
        log.warning("%s: %s[%d]@%d (attempt %d) ran longer than its time_limit of %g s; %s, "
                    "and the attempt counts as failed (TimeLimitExceeded)", self.spec.name,
                    m.topic, m.partition, m.offset, attempt, self.spec.time_limit, what)

    def _flush_halted(self, lane: Any, acc: _Acc) -> None:
        """Flush what a halted job finished; a second halt while flushing is ignored."""
        try:
            self._flush(lane, acc)
        except _Halt:
            pass

    async def _flush_async(self, lane: Any, acc: _Acc) -> None:
        """:meth:`_flush` from the loop: inline unless it has storage work (may fsync)."""
        if self._needs_io(acc):
            await asyncio.get_running_loop().run_in_executor(
                self.app._io_pool(), self._flush, lane, acc)
        else:
            self._flush(lane, acc)

    async def _flush_halted_async(self, lane: Any, acc: _Acc) -> None:
        """:meth:`_flush_halted` from the loop (always off it: a halt may be a stop)."""
        try:
            await asyncio.get_running_loop().run_in_executor(
                self.app._io_pool(), self._flush, lane, acc)
        except _Halt:
            pass

    def _log_failed_job(self, msgs: list[Any], i: int) -> None:
        log.exception("subscriber %s: job failed; handling again from %s[%s]@%s in 1 s",
                      self.spec.name, *_where(msgs, i))

    def _wait(self, lane: Any, delay: float) -> bool:
        """Wait ``delay`` seconds before a retry; True when stopped or revoked meanwhile."""
        end = time.monotonic() + delay
        while not self._halted(lane):
            left = end - time.monotonic()
            if left <= 0:
                return False
            self.app._stop_event.wait(min(left, 0.1))
        return True

    async def _wait_async(self, lane: Any, delay: float) -> bool:
        end = time.monotonic() + delay
        while not self._halted(lane):
            left = end - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(left, 0.1))
        return True


class _Lane:
    """One partition's queue of fetched batches (stream mode)."""

    __slots__ = ("batches", "done", "revoked_flag", "running", "tp")

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.batches: deque[list[Any]] = deque()
        self.running = False
        self.revoked_flag = LaneFlag()  # read as a C field by run_lane before each message
        self.done: int | None = None

    @property
    def revoked(self) -> bool:
        """The partition was revoked: its job stops between messages."""
        return self.revoked_flag.on

    @revoked.setter
    def revoked(self, on: bool) -> None:
        self.revoked_flag.on = on


def _runs(msgs: list[Any]) -> list[tuple[tuple[str, int], list[Any]]]:
    """Split a poll's messages into per-partition runs, in order.

    ``poll`` returns each partition's messages as one run of dense offsets, so
    a run's end is found by binary search on "same partition, offset = first +
    index" (a few attribute reads per run instead of one per message).
    """
    out: list[tuple[tuple[str, int], list[Any]]] = []
    by: dict[tuple[str, int], list[Any]] = {}
    s, n = 0, len(msgs)
    while s < n:
        f = msgs[s]
        t, p, o = f.topic, f.partition, f.offset
        lo, hi = s, n - 1  # msgs[lo] is in the run; find the last index in it
        while lo < hi:
            mid = (lo + hi + 1) // 2
            m = msgs[mid]
            if m.offset == o + (mid - s) and m.partition == p and m.topic == t:
                lo = mid
            else:
                hi = mid - 1
        run = msgs[s:lo + 1]
        key = (t, p)
        prev = by.get(key)
        if prev is None:
            by[key] = run
            out.append((key, run))
        else:
            prev.extend(run)
        s = lo + 1
    return out


@types.coroutine
def _resume(coro: Any, yielded: Any) -> Generator[Any, Any, Any]:
    """The rest of ``await coro`` for a coroutine that already ran until it first
    waited, on ``yielded`` (``run_lane`` started it): what the task sends or throws
    goes on to the coroutine, as ``await`` would pass it."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # noqa: BLE001 - a cancellation: the coroutine's to handle
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


def _drop_scheduled(items: list[_Item]) -> None:
    """Remove delayed outputs: sent on their own before a transaction that then failed
    (they cannot be part of it), so not sent again when it is tried again."""
    for it in items:
        if any(o.scheduled for o in it.outputs):
            it.outputs = [o for o in it.outputs if not o.scheduled]


def _first_attempt(m: Any) -> int:
    return 1


def _header(m: Any, name: str) -> bytes | None:
    for n, v in m.headers:
        if n == name:
            return bytes(v)
    return None


def _retry_attempt(m: Any) -> int:
    """The attempt a message is for: 1, or what its retry-topic header says."""
    v = _header(m, H_RETRY_ATTEMPT)
    try:
        return max(1, int(v)) if v is not None else 1
    except ValueError:
        return 1


def _retry_output(topic: str, group: str, m: Any, attempt: int, delay: float) -> Output:
    """``m`` to retry through ``topic`` after ``delay`` s, for ``attempt`` (keeps its key)."""
    hs = [(n, v) for n, v in m.headers if not n.startswith(_RETRY_PREFIX)]
    if _header(m, H_RETRY_TOPIC) is None:
        origin = [(H_RETRY_TOPIC, m.topic.encode()), (H_RETRY_PARTITION, str(m.partition).encode()),
                  (H_RETRY_OFFSET, str(m.offset).encode())]
    else:
        origin = [(n, v) for n, v in m.headers
                  if n in (H_RETRY_TOPIC, H_RETRY_PARTITION, H_RETRY_OFFSET)]
    hs += origin + [(H_RETRY_ATTEMPT, str(attempt).encode()), (H_RETRY_GROUP, group.encode())]
    return Output(topic, m.value if m.value is not None else b"", m.key, hs, None,
                  max(0.0, float(delay)))


def _original(m: Any) -> Any:
    """``m`` as first read (its original topic, partition, offset) when it came by a retry topic."""
    t = _header(m, H_RETRY_TOPIC)
    if t is None:
        return m
    from mqlite._core import Message

    try:
        p = int(_header(m, H_RETRY_PARTITION) or b"0")
        o = int(_header(m, H_RETRY_OFFSET) or b"0")
    except ValueError:
        return m
    hs = [(n, v) for n, v in m.headers if not n.startswith(_RETRY_PREFIX)]
    return Message(t.decode(), p, o, m.timestamp_ms, m.key, m.value, hs)


class StreamRunner(Runner):
    """Stream mode (Kafka-style ordered group): see the module docstring."""

    def __init__(self, spec: SubscriberSpec, backend: Backend, app: Any) -> None:
        super().__init__(spec, backend, app)
        self._consumer: Any = None
        self._aconsumer: Any = None  # loop-driven: the asyncio consumer (backend seam)
        self._lanes: dict[TopicPartition, _Lane] = {}
        self._ready_lanes: deque[_Lane] = deque()
        self._to_commit: dict[TopicPartition, int] = {}
        self._rewinds: dict[TopicPartition, int] = {}
        self._max_buffered = spec.batch * (spec.concurrency + 3)
        self._fetch_topics = spec.topics + ([spec.retry_topic] if spec.retry_topic else [])
        self._attempt_of = _retry_attempt if spec.retry_topic else _first_attempt
        self._next_commit = 0.0  # monotonic time before which _commit() waits (interval)
        self._look = _TOPIC_WAIT_MIN  # while topics are waited for: the next look's delay ...
        self._next_look = 0.0  # ... and its monotonic time (D89)
        self._last_look = 0.0
        self._idle = False  # the last poll returned nothing

    def _wake(self) -> None:
        c = self._aconsumer if self._loop_driven else self._consumer
        if c is not None:
            c.wakeup()
        self._woken.set()
        self._kick()

    def _consumer_for_tx(self) -> Any:
        return self._consumer

    def lag(self) -> int:
        try:
            lag = self.backend.stream_lag(self.spec.group, self._fetch_topics)
        except TopicNotFoundError:  # one was deleted (the fetch loop waits for it): the rest
            lag = 0
            for t in self._fetch_topics:
                try:
                    lag += self.backend.stream_lag(self.spec.group, [t])
                except TopicNotFoundError:
                    pass
        scheduled = getattr(self.backend, "scheduled", None)
        if self.spec.retry_topic is not None and scheduled is not None:
            lag += scheduled(self.spec.retry_topic)  # retries waiting out their delay
        return lag

    # -- a deleted topic (D89) ---------------------------------------------------------------
    def _subscribe(self, make: Callable[..., Any]) -> Any:
        """``make(topics, group, ...)``: a consumer of the subscribed topics that exist now,
        or None when none does (or one went while it joined: look again later).  Topics
        missing are shown as waited for; when none is, the wait is over."""
        spec = self.spec
        missing = self._missing(self._fetch_topics)
        present = [t for t in self._fetch_topics if t not in missing]
        if missing:
            self._note_gone(missing, "reading it from its first message (or by "
                            "auto_offset_reset), never from an offset of the deleted topic")
        if not present:
            return None
        try:
            c = make(present, spec.group, auto_offset_reset=spec.auto_offset_reset,
                     batch=spec.batch, on_revoke=self._on_revoke)
        except TopicNotFoundError:
            if not self._gone:  # a backend without topic_exists: name them all
                self._note_gone(self._fetch_topics, "reading it again")
            return None
        if not missing:
            self._note_back("reading it" if len(present) == 1 else "reading them")
        return c

    def _open_sync(self) -> Any:
        """A consumer of the subscribed topics that exist, waiting (bounded backoff, a stop
        ends it) while none does; None when stopped meanwhile (fetch thread)."""
        delay = _TOPIC_WAIT_MIN
        while not self._stopping:
            self._woken.clear()
            self._drain(0.0)
            c = self._consumer = self._subscribe(self.backend.stream_consumer)
            if c is not None:
                if self._stopping:
                    c.wakeup()  # a stop that came before the consumer existed
                self._looked()
                return c
            delay = self._pause_sync(delay)
        return None

    def _changed(self, idle: bool) -> bool:
        """Whether the consumer's topics are no longer the ones to read: one of them was
        deleted, or (while some are waited for) one of those exists again (fetch thread /
        task).  A poll does not always raise for a deleted topic (a member whose partitions
        of it were revoked by the deletion reads none of it), so the catalog is looked at
        after a poll that returned nothing (at most every 50 ms: a deletion wakes the poll)
        and at least every second; while topics are waited for, with the bounded backoff."""
        now = time.monotonic()
        if now < self._next_look and not (idle and now >= self._last_look + _TOPIC_WAIT_MIN):
            return False
        self._last_look = now
        if self._gone:
            self._look = min(2 * self._look, _TOPIC_WAIT_MAX)
            self._next_look = now + self._look
        else:
            self._next_look = now + _TOPIC_WAIT_MAX
        return set(self._missing(self._fetch_topics)) != set(self._gone)

    def _looked(self) -> None:
        """A consumer was opened: the first look for topics still missing in 50 ms."""
        self._look = _TOPIC_WAIT_MIN
        self._next_look = time.monotonic() + self._look

    def _retire(self) -> None:
        """Done with the consumer (its topics changed, D89): lanes of deleted topics stop
        between messages and their offsets are dropped (they would name partitions of a
        topic that is gone, or of a new one of that name); the other lanes finish and their
        offsets are committed, so the next consumer resumes right after them."""
        missing = set(self._missing(self._fetch_topics))
        for lane in self._lanes.values():
            if lane.tp.topic in missing:
                lane.revoked = True
        self._finish_lanes()
        self._to_commit = {tp: o for tp, o in self._to_commit.items()
                           if tp.topic not in missing}
        self._commit()
        self._to_commit.clear()
        self._lanes.clear()
        self._ready_lanes.clear()
        self._rewinds.clear()

    def _loop(self) -> None:
        spec = self.spec
        c = self._open_sync()
        try:
            while not self._stopping:
                if c is None:
                    c = self._open_sync()
                    continue
                if self._changed(self._idle):
                    self._retire()
                    c.close()
                    c = None
                    continue
                self._drain(0.0)
                self._apply_rewinds()
                self._schedule()
                self._commit(force=False)
                if self._buffered >= self._max_buffered:
                    self._drain(0.5)
                    continue
                if self._stopping or not self._done_q.empty():
                    continue  # a stop or report came during commit(), which took its wake-up
                try:
                    msgs = c.poll(max_records=spec.batch, timeout=1e-6) if self._to_commit \
                        else []
                    if not msgs and self._to_commit:
                        self._commit()  # caught up: commit before waiting
                        if self._stopping or not self._done_q.empty():
                            continue
                    if not msgs:
                        msgs = c.poll(max_records=spec.batch, timeout=self._poll_wait())
                except TopicNotFoundError:  # a subscribed topic was deleted: wait for it
                    self._retire()
                    c.close()
                    c = None
                    continue
                self._idle = not msgs
                if not self.ready:
                    self.ready = True
                    self.app._notify_progress()
                if msgs:
                    self._dispatch(msgs)
            self._shutdown()
        finally:
            if c is not None:
                c.close()

    def _poll_wait(self) -> float:
        """How long a poll with nothing to do waits: 1 s, 10 ms before the first poll
        returned, or until the next look for a deleted topic."""
        if not self.ready:
            return 0.01
        if self._gone:
            return max(0.001, min(1.0, self._next_look - time.monotonic()))
        return 1.0

    async def _aloop(self) -> None:
        """The fetch loop of a loop-driven subscriber: one task, like a hand-written loop.

        Polls through the backend's asyncio consumer (``mqlite.aio``: reads
        inline on the loop, waits on the loop's doorbell, no thread held while
        waiting); commits on the loop, at most every ``commit_interval`` while
        messages keep coming (a commit handed to a thread each time measured
        ~2x the CPU per message).  With ``concurrency=1`` it handles each
        partition's run inline (``await``), so lanes never run during a poll
        and a revocation never waits; with more, up to ``concurrency`` lanes
        run as tasks while it polls, and their reports wake its waits.  A
        revocation (in a poll round, in an aio worker thread) then waits for
        the revoked lanes as the fetch thread of a sync subscriber does.
        """
        spec = self.spec
        loop = asyncio.get_running_loop()
        io = self.app._io_pool()
        ac = await self._open_async()
        try:
            while not self._stopping:
                if ac is None:
                    ac = await self._open_async()
                    continue
                if self._changed(self._idle):
                    await self._retire_async(ac)
                    ac = None
                    continue
                self._drain(0.0)
                self._apply_rewinds()
                if self._to_commit and time.monotonic() >= self._next_commit:
                    self._commit(False)
                while (self._ready_lanes and not self._stopping
                       and self._running < spec.concurrency):
                    lane = self._ready_lanes.popleft()
                    if lane.running or lane.revoked or not lane.batches:
                        continue
                    batch = lane.batches.popleft()
                    while lane.batches and len(batch) < 4 * spec.batch:
                        batch = batch + lane.batches.popleft()
                    lane.running = True
                    self._running += 1
                    if spec.concurrency == 1:
                        await self._job_async(lane, batch)
                        self._drain(0.0)
                    else:
                        self._spawn(self._job_async(lane, batch))
                if self._stopping:
                    break
                if self._buffered >= self._max_buffered:  # lanes behind: wait for one
                    await self._wait_report(0.5)
                    continue
                try:
                    msgs = await ac.poll(spec.batch, 1e-6) if self.ready else []
                    if not msgs and not self._stopping:
                        if self._to_commit:  # caught up: commit before waiting
                            self._commit()
                        msgs = await ac.poll(spec.batch, self._poll_wait() if self.ready
                                             else 1.0)
                except TopicNotFoundError:  # a subscribed topic was deleted: wait for it
                    await self._retire_async(ac)
                    ac = None
                    continue
                self._idle = not msgs
                if not self.ready:
                    self.ready = True
                    self.app._notify_progress()
                if msgs:
                    self._dispatch(msgs)
            await loop.run_in_executor(io, self._shutdown)
        finally:
            if ac is not None:
                await ac.close()

    async def _open_async(self) -> Any:
        """:meth:`_open_sync` for the fetch task: an asyncio consumer (backend seam), or None."""
        delay = _TOPIC_WAIT_MIN
        while not self._stopping:
            self._drain(0.0)
            ac = self._aconsumer = self._subscribe(functools.partial(async_stream_consumer,
                                                                     self.backend))
            if ac is not None:
                self._consumer = ac.sync
                if self._stopping:
                    ac.wakeup()  # a stop that came before the consumer existed
                self._looked()
                return ac
            delay = await self._pause_async(delay)
        return None

    async def _retire_async(self, ac: Any) -> None:
        """:meth:`_retire` (in a worker thread: lanes may be tasks on this loop), then close."""
        await asyncio.get_running_loop().run_in_executor(self.app._io_pool(), self._retire)
        await ac.close()

    def _dispatch(self, msgs: list[Any]) -> None:
        if self.spec.ack == "before":
            ends: dict[TopicPartition, int] = {}
            for m in msgs:
                ends[TopicPartition(m.topic, m.partition)] = m.offset + 1
            try:
                self._consumer.commit(ends)
            except CommitFailedError:
                return  # lost them already: the new owner reads them
            except TopicNotFoundError:
                return  # a topic was deleted: the next poll finds out and waits (D89)
        for (t, p), batch in _runs(msgs):
            tp = TopicPartition(t, p)
            lane = self._lanes.get(tp)
            if lane is None:
                lane = self._lanes[tp] = _Lane(tp)
            lane.batches.append(batch)
            self._buffered += len(batch)
            if not lane.running and len(lane.batches) == 1:
                self._ready_lanes.append(lane)
        self._schedule()

    def _schedule(self) -> None:
        if self._loop_driven:
            return  # _aloop runs the lanes itself
        while self._running < self.spec.concurrency and self._ready_lanes and not self._stopping:
            lane = self._ready_lanes.popleft()
            if lane.running or lane.revoked or not lane.batches:
                continue
            batch = lane.batches.popleft()
            while lane.batches and len(batch) < 4 * self.spec.batch:
                batch = batch + lane.batches.popleft()  # fewer, larger jobs when behind
            lane.running = True
            self._submit(functools.partial(self._job, lane, batch),
                         functools.partial(self._job_async, lane, batch))

    def _job(self, lane: _Lane, batch: list[Any]) -> None:
        n = 0
        try:
            if self.spec.batch_handler:
                n = self._run_batches_sync(lane, batch)
            else:
                n = self._run_sync(lane, batch, self._attempt_of)
        finally:
            self._finish(lane, batch, n)

    async def _job_async(self, lane: _Lane, batch: list[Any]) -> None:
        n = 0
        try:
            if self.spec.batch_handler:
                n = await self._run_batches_async(lane, batch)
            else:
                n = await self._run_async(lane, batch, self._attempt_of)
        finally:
            self._finish(lane, batch, n)

    # -- batch handlers (batch=True) ---------------------------------------------------------
    def _batch_start(self, acc: _Acc, chunk: list[Any]) -> tuple[list[Any], list[Any]]:
        """Decode ``chunk``: (payloads, their messages); undecodable ones are given up."""
        decode, obs = self.spec.decode, self.app._listeners
        payloads: list[Any] = []
        good: list[Any] = []
        for m in chunk:
            try:
                payloads.append(decode(m.value))
            except PayloadError as exc:
                status = self._give_up(acc, m, 1, exc, True, None)
                if obs:
                    self._emit(m, 1, status, 0.0, exc, None)
                continue
            good.append(m)
        if obs:
            for m in good:
                self._emit(m, 1, None, 0.0, None, None)
        return payloads, good

    def _batch_outcome(self, acc: _Acc, good: list[Any], attempt: int,
                       exc: BaseException | None, t0: float) -> float | None:
        """Settle one call of a batch handler; a delay to retry the whole batch, else None."""
        spec, obs = self.spec, self.app._listeners
        dt = time.perf_counter() - t0
        if exc is None:
            if obs:
                for m in good:
                    self._emit(m, attempt, "ok", dt, None, None)
            return None
        permanent = isinstance(exc, spec.permanent_types)
        if not permanent and attempt <= spec.retries:
            if obs:
                for m in good:
                    self._emit(m, attempt, "retry", dt, exc, None)
            if isinstance(exc, Retry) and exc.delay is not None:
                return exc.delay
            return spec.backoff.delay(attempt)
        for m in good:
            status = self._give_up(acc, m, attempt, exc, permanent, None)
            if obs:
                self._emit(m, attempt, status, dt, exc, None)
        return None

    def _run_batches_sync(self, lane: _Lane, msgs: list[Any]) -> int:
        """Hand ``msgs`` to a sync batch handler in lists of up to ``max_records``."""
        spec = self.spec

        def body(acc: _Acc) -> None:
            while acc.pos < len(msgs) and not self._halted(lane):
                chunk = msgs[acc.pos:acc.pos + spec.batch]
                payloads, good = self._batch_start(acc, chunk)
                attempt = 1
                while payloads:
                    t0 = time.perf_counter()
                    try:
                        spec.handler(payloads)
                        err: Exception | None = None
                    except Exception as exc:  # noqa: BLE001 - every handler error is classified
                        err = exc
                    delay = self._batch_outcome(acc, good, attempt, err, t0)
                    if delay is None:
                        break
                    self._flush(lane, acc)
                    self._report_progress(lane)
                    if self._wait(lane, delay):
                        raise _Halt from None
                    attempt += 1
                acc.done = chunk[-1].offset + 1
                acc.pos += len(chunk)
        return self._guarded_sync(lane, msgs, body)

    async def _run_batches_async(self, lane: _Lane, msgs: list[Any]) -> int:
        """:meth:`_run_batches_sync` for an ``async def`` batch handler, on the App's loop."""
        spec = self.spec
        loop = asyncio.get_running_loop()
        io = self.app._io_pool()

        async def body(acc: _Acc) -> None:
            while acc.pos < len(msgs) and not self._halted(lane):
                chunk = msgs[acc.pos:acc.pos + spec.batch]
                payloads, good = self._batch_start(acc, chunk)
                attempt = 1
                while payloads:
                    t0 = time.perf_counter()
                    try:
                        await spec.handler(payloads)
                        err: Exception | None = None
                    except Exception as exc:  # noqa: BLE001 - every handler error is classified
                        err = exc
                    delay = self._batch_outcome(acc, good, attempt, err, t0)
                    if delay is None:
                        break
                    await loop.run_in_executor(io, self._flush, lane, acc)
                    self._report_progress(lane)
                    if await self._wait_async(lane, delay):
                        raise _Halt from None
                    attempt += 1
                acc.done = chunk[-1].offset + 1
                acc.pos += len(chunk)
        return await self._guarded_async(lane, msgs, body)


    def _finish(self, lane: _Lane, batch: list[Any], n: int) -> None:
        rewind = batch[n].offset if n < len(batch) else None
        done, lane.done = lane.done, None
        self._report(_Done(lane.tp, done, rewind, len(batch), True))

    def _report_progress(self, lane: Any) -> None:
        done, lane.done = lane.done, None
        if done is not None:
            self._report(_Done(lane.tp, done, None, 0, False))

    def _took(self, d: _Done) -> None:
        lane = self._lanes.get(d.key)
        if d.done is not None and not self.spec.exactly_once:
            self._to_commit[d.key] = d.done
        if not d.final:
            return
        self._running -= 1
        self._buffered -= d.size
        if lane is None:
            return
        lane.running = False
        if d.rewind is not None and not lane.revoked and not self._stopping:
            self._rewinds[lane.tp] = d.rewind
            for b in lane.batches:
                self._buffered -= len(b)
            lane.batches.clear()
        elif lane.batches:
            self._ready_lanes.append(lane)

    def _apply_rewinds(self) -> None:
        while self._rewinds:
            tp, off = self._rewinds.popitem()
            if tp in self._lanes:
                try:
                    self._consumer.seek(tp, off)
                except ValueError:
                    pass  # no longer assigned

    def _commit(self, force: bool = True) -> None:
        """Commit the lanes' finished offsets; ``force=False``: only once the
        subscriber's ``commit_interval`` has passed since the last commit."""
        if not self._to_commit:
            return
        if not force:
            now = time.monotonic()
            if now < self._next_commit:
                return
            self._next_commit = now + self.spec.commit_interval
        todo, self._to_commit = self._to_commit, {}
        self._commit_some(todo)
        self.app._notify_progress()

    def _commit_some(self, todo: dict[TopicPartition, int]) -> None:
        """Commit ``todo``; partitions lost to a rebalance, or of a deleted topic (D89:
        the next poll finds out and the subscriber waits for it), are dropped."""
        try:
            self._consumer.commit(todo)
            return
        except CommitFailedError:
            # Some partition moved: commit the others, drop the lost ones.
            owned = set(self._consumer.assignment())
            rest = {tp: o for tp, o in todo.items() if tp in owned}
        except TopicNotFoundError:
            gone = set(self._missing(sorted({tp.topic for tp in todo})))
            rest = {tp: o for tp, o in todo.items() if tp.topic not in gone}
            if len(rest) == len(todo):
                return  # deleted and created again meanwhile: nothing is sure, drop them
        if rest:
            try:
                self._consumer.commit(rest)
            except (CommitFailedError, TopicNotFoundError):
                pass

    def _wait_lanes(self, lanes: list[_Lane], timeout: float) -> None:
        end = time.monotonic() + timeout
        while any(lane.running for lane in lanes):
            left = end - time.monotonic()
            if left <= 0:
                log.warning("%s: handlers still running after %.1f s; leaving them",
                            self.spec.name, timeout)
                return
            self._drain(min(left, 0.5))

    def _on_revoke(self, tps: list[TopicPartition]) -> None:
        lanes = []
        for tp in tps:
            lane = self._lanes.get(tp)
            if lane is None:
                continue
            lane.revoked = True
            for b in lane.batches:
                self._buffered -= len(b)
            lane.batches.clear()
            lanes.append(lane)
        self._wait_lanes(lanes, self.app.graceful_timeout)
        self._commit()
        for tp in tps:
            self._lanes.pop(tp, None)
            self._rewinds.pop(tp, None)

    def _finish_lanes(self) -> None:
        """Drop every lane's buffered batches, wait (at most ``graceful_timeout``) for the
        messages running, and take their reports."""
        for lane in self._lanes.values():
            for b in lane.batches:
                self._buffered -= len(b)
            lane.batches.clear()
        self._wait_lanes(list(self._lanes.values()), self.app.graceful_timeout)
        self._drain(0.0)

    def _shutdown(self) -> None:
        self._finish_lanes()
        self._commit()


#: Sync calls abandoned at their ``time_limit`` whose threads still run beside a queue
#: subscriber's ``concurrency`` jobs (D88; at least ``concurrency``); each one more takes a
#: job slot, so handlers that hang on every message stall the subscriber, not the process.
_OVERDUE_FREE = 16


class QueueRunner(Runner):
    """Queue mode (competing consumers, per-message acks): see the module docstring.

    A deleted topic (D84): a receive (or an ack before handling) raises
    ``TopicNotFoundError``; the fetch loop logs a warning, sets :attr:`waiting`
    (``app.health()`` shows it, the subscriber is not ready), keeps the old queue
    consumer open until the jobs holding its deliveries finished (their settles
    are dropped, :meth:`Runner._apply`), looks for the topic with a bounded
    backoff (:data:`_TOPIC_WAIT_MIN` to :data:`_TOPIC_WAIT_MAX` seconds; a stop
    ends the wait at once) and, once it exists, opens a new queue consumer of
    the same group and receives again.  It never creates the topic itself.
    """

    def __init__(self, spec: SubscriberSpec, backend: Backend, app: Any) -> None:
        super().__init__(spec, backend, app)
        self._queue: Any = None
        self._aqueue: Any = None  # loop-driven: the mqlite.aio queue (backend.async_queue)
        self._old: list[Any] = []  # queue consumers of a deleted topic, closed once idle
        self._jobs = 0
        self.revoked = False  # the "lane" of a queue job is the runner itself
        # Running jobs' deliveries, kept invisible by the heartbeat thread (_keep_visible)
        self._held: set[_Extender] = set()
        self._held_cv = threading.Condition()
        self._heart: threading.Thread | None = None
        self._heart_stop = False
        self._heart_wake = 0.0  # monotonic time the heartbeat waits until (0: no timed wait)

    def start(self) -> None:
        if self.spec.time_limit is not None and not self.spec.is_async:
            # a sync call past its limit keeps its thread: jobs run on daemon threads that
            # are replaced when abandoned (never inline on the fetch thread), D88
            self._pool = _DaemonPool(f"mqlite-{self.spec.name}")
        super().start()

    def _wake(self) -> None:
        q = self._aqueue if self._loop_driven else self._queue
        if q is not None:
            q.wakeup()
        self._woken.set()
        self._kick()

    def _consumer_for_tx(self) -> Any:
        return None

    def _settles_gone(self, lane: Any) -> bool:
        q = getattr(lane, "queue", None)
        if q is None:
            return False
        try:
            q.lag()  # reads the topic it joined: raises once that was deleted
        except TopicNotFoundError:
            return True
        except ClosedError:
            return False
        return False

    def lag(self) -> int:
        q = self._queue
        if q is None or self.waiting is not None:
            return 0
        try:
            return int(q.lag())
        except TopicNotFoundError:
            return 0  # deleted: the fetch loop finds out and waits for it

    def _queue_options(self) -> dict[str, Any]:
        """The queue consumer's options: retries as ``max_deliveries``, the DLQ."""
        spec = self.spec
        return {"visibility_timeout": spec.visibility_timeout,
                "max_deliveries": None if spec.ack == "before" else spec.retries + 1,
                "dead_letter": spec.dead_letter}

    def _received(self) -> None:
        """A receive round returned: the subscriber is ready (once)."""
        if not self.ready:
            self.ready = True
            self.app._notify_progress()

    def _parts(self, ds: list[Any], free: int) -> list[list[Any]]:
        """``ds`` dealt round-robin into at most ``free`` jobs, counted as buffered."""
        chunks = min(free, len(ds))
        parts = [ds[k::chunks] for k in range(chunks)]
        self._buffered += len(ds)
        return parts

    # -- a deleted topic (D84) ---------------------------------------------------------------
    def _lost(self) -> None:
        """The topic went away under the queue consumer: wait for it (fetch thread / task)."""
        if self._queue is not None:
            self._old.append(self._aqueue if self._loop_driven else self._queue)
        self._queue = self._aqueue = None
        self._note_gone([self.spec.topics[0]], "receiving from it (deliveries in flight went "
                        "with the old topic)")

    def _found(self, q: Any, aq: Any = None) -> None:
        """A queue consumer of the topic is open (again)."""
        self._queue, self._aqueue = q, aq
        self._note_back("receiving from it")

    def _topic_back(self) -> bool:
        """Whether the topic exists (a backend without ``topic_exists``: assume so)."""
        return not self._missing([self.spec.topics[0]])

    def _open_sync(self) -> Any:
        """A queue consumer of the topic, waiting while it does not exist; None when
        stopped meanwhile (fetch thread)."""
        spec = self.spec
        delay = _TOPIC_WAIT_MIN
        while True:
            if self.waiting is not None:
                self._woken.clear()
                self._drain(0.0)
                self._close_old_sync()
                if self._stopping:
                    return None
                if not self._topic_back():
                    delay = self._pause_sync(delay)
                    continue
            try:
                q = self.backend.queue(spec.topics[0], spec.group, **self._queue_options())
            except TopicNotFoundError:
                if self.waiting is None:
                    self._lost()
                else:  # deleted again since it was seen: look again later
                    delay = self._pause_sync(delay)
                continue
            self._found(q)
            if self._stopping:
                q.wakeup()  # a stop that came before the consumer existed
            return q

    def _close_old_sync(self) -> None:
        if self._running == 0:
            while self._old:
                self._old.pop().close()

    def _loop(self) -> None:
        spec = self.spec
        per_job = max(1, spec.batch // spec.concurrency)
        q = self._open_sync()
        try:
            while not self._stopping:
                if q is None:
                    q = self._open_sync()
                    continue
                self._drain(0.0)
                self._close_old_sync()
                # abandoned calls (D88) run beside new jobs, up to _OVERDUE_FREE; more take slots
                free = spec.concurrency - self._running - max(
                    0, self.overdue - max(_OVERDUE_FREE, spec.concurrency))
                if free <= 0:
                    self._drain(0.5)
                    continue
                if self._stopping or not self._done_q.empty():
                    continue  # a stop or report came during another call (took its wake-up)
                try:
                    ds = q.receive(max_messages=min(spec.batch, free * per_job),
                                   timeout=1.0 if self.ready else 0.01)
                    self._received()
                    if ds and spec.ack == "before":
                        q.ack(ds)
                except TopicNotFoundError:
                    self._lost()
                    q = None
                    continue
                if not ds:
                    continue
                for part in self._parts(ds, free):
                    self._submit(functools.partial(self._job, part),
                                 functools.partial(self._job_async, part))
            end = time.monotonic() + self.app.graceful_timeout
            while self._running > 0 and time.monotonic() < end:
                self._drain(min(0.5, max(0.0, end - time.monotonic())))
        finally:
            self._stop_heart()
            if q is not None:
                q.close()
            while self._old:
                self._old.pop().close()

    async def _open_async(self) -> Any:
        """:meth:`_open_sync` for the fetch task: a started asyncio queue consumer, or None."""
        spec = self.spec
        make = self.backend.async_queue  # type: ignore[attr-defined]
        delay = _TOPIC_WAIT_MIN
        while True:
            if self.waiting is not None:
                self._drain(0.0)
                await self._close_old_async()
                if self._stopping:
                    return None
                if not self._topic_back():
                    delay = await self._pause_async(delay)
                    continue
            try:
                aq = await make(spec.topics[0], spec.group, **self._queue_options())
            except TopicNotFoundError:
                if self.waiting is None:
                    self._lost()
                else:  # deleted again since it was seen: look again later
                    delay = await self._pause_async(delay)
                continue
            self._found(aq.sync, aq)
            if self._stopping:
                aq.wakeup()
            return aq

    async def _close_old_async(self) -> None:
        if self._running == 0:
            while self._old:
                await self._old.pop().close()

    async def _aloop(self) -> None:
        """:meth:`_loop` on the App's loop, for ``async def`` handlers (D40).

        Receives through the backend's asyncio queue (``mqlite.aio``: each
        receive round in a worker thread, waits on the loop's doorbell, no
        thread held while waiting); runs a job inline with ``concurrency=1``,
        else up to ``concurrency`` jobs as tasks while it receives.
        """
        spec = self.spec
        loop = asyncio.get_running_loop()
        per_job = max(1, spec.batch // spec.concurrency)
        aq = await self._open_async()
        try:
            while not self._stopping:
                if aq is None:
                    aq = await self._open_async()
                    continue
                self._drain(0.0)
                await self._close_old_async()
                free = spec.concurrency - self._running
                if free <= 0:
                    await self._wait_report(0.5)
                    continue
                try:
                    got = await aq.receive(max_messages=min(spec.batch, free * per_job),
                                           timeout=1.0 if self.ready else 0.01)
                    self._received()
                    if got and spec.ack == "before":
                        await aq.ack(got)
                except TopicNotFoundError:
                    self._lost()
                    aq = None
                    continue
                if not got:
                    continue
                # plain deliveries: the jobs settle them with sync calls, in worker threads
                for part in self._parts([d.sync for d in got], free):
                    self._running += 1
                    if spec.concurrency == 1:
                        await self._job_async(part)
                        self._drain(0.0)
                    else:
                        self._spawn(self._job_async(part))
            end = loop.time() + self.app.graceful_timeout
            while self._running > 0 and loop.time() < end:
                await self._wait_report(min(0.5, max(0.0, end - loop.time())))
                self._drain(0.0)
        finally:
            await loop.run_in_executor(None, self._stop_heart)
            if aq is not None:
                await aq.close()
            while self._old:
                await self._old.pop().close()

    def _attempt_of(self, d: Any) -> int:
        return int(d.delivery_count)

    def _job(self, ds: list[Any]) -> None:
        ext = self._extender(ds)
        try:
            self._run_sync(ext, ds, self._attempt_of)
        finally:
            self._release(ext)
            if ext.abandoned:  # its slot was given back at the time limit (_abandon)
                with self._held_cv:
                    self.overdue -= 1
                log.info("%s: a handler call abandoned at its time_limit returned; what it "
                         "did was discarded", self.spec.name)
            else:
                self._report(_Done(None, None, None, len(ds), True))

    async def _job_async(self, ds: list[Any]) -> None:
        ext = self._extender(ds)
        try:
            await self._run_async(ext, ds, self._attempt_of)
        finally:
            self._release(ext)
            self._report(_Done(None, None, None, len(ds), True))

    def _extender(self, ds: list[Any]) -> _Extender:
        ext = _Extender(self, ds)
        with self._held_cv:
            self._held.add(ext)
            if self._heart is None:
                self._heart = threading.Thread(target=self._keep_visible, daemon=True,
                                               name=f"mqlite-visibility-{self.spec.name}")
                self._heart.start()
            self._held_cv.notify()
        return ext

    def _release(self, ext: _Extender) -> None:
        with self._held_cv:
            self._held.discard(ext)

    def _stop_heart(self) -> None:
        with self._held_cv:
            self._heart_stop = True
            self._held_cv.notify()
        if self._heart is not None and self._heart is not threading.current_thread():
            self._heart.join(5.0)

    def _keep_visible(self) -> None:
        """The heartbeat: extends each running job's deliveries every half visibility timeout.

        A handler may run longer than ``visibility_timeout`` (a sync handler holds its
        thread, an async one may await for minutes): without this, its messages became
        visible again mid-job and another worker ran them too (D86).  One thread per
        queue subscriber, started with its first job, idle (no timed wake-up) while no
        job runs; it ends with the subscriber's fetch loop.
        """
        vt = self.spec.visibility_timeout
        cv = self._held_cv
        while True:
            with cv:
                self._heart_wake = 0.0
                while not self._held and not self._heart_stop:
                    cv.wait()
                if self._heart_stop:
                    return
                now = time.monotonic()
                # a sync call past its time_limit (D88): given up here, under the lock
                over = []
                for e, call in [(e, e.call) for e in self._held
                                if e.call is not None and e.call.deadline <= now]:
                    if call is None:
                        continue
                    e.call, e.abandoned = None, True
                    self._held.discard(e)
                    self.overdue += 1
                    # what the job finished before it and has not written: taken now, while
                    # its thread is provably inside the handler (it reads `abandoned` first)
                    items, call.acc.items = call.acc.items, []
                    over.append((e, call, items, call.acc.pos))
                due = [e for e in self._held if e.next_extend <= now]
                if not due and not over:
                    self._heart_wake = min(min(e.next_extend for e in self._held),
                                           min((e.call.deadline for e in self._held
                                                if e.call is not None), default=now + vt))
                    cv.wait(self._heart_wake - now)
                    continue
                for e in due:
                    e.next_extend = now + vt / 2
            for e in due:  # outside the lock: a write transaction each
                e.extend(vt)
            for e, call, items, pos in over:
                self._abandon(e, call, items, pos)

    def _call_timed(self, lane: Any, acc: _Acc, m: Any, attempt: int, at: _Attempt,
                    delivery: Any) -> Any:
        """Call the sync handler with the heartbeat watching its ``time_limit`` (D88).

        Whoever ends the call first under the heartbeat's lock settles it: this
        thread (the call returned or raised in time) or the heartbeat (the limit
        passed: :meth:`_abandon`).  A call that was abandoned raises :class:`_Halt`
        when it returns at last: its result and the job's other messages were
        given up, nothing more is written for them.
        """
        call = _Call(m, attempt, at, delivery, acc,
                     time.monotonic() + (self.spec.time_limit or 0.0))
        cv = self._held_cv
        with cv:
            lane.call = call
            if self._heart_wake and call.deadline < self._heart_wake:
                cv.notify()  # the heartbeat waits past this deadline: wake it to re-plan
        try:
            result = self.spec.call(at.payload, at.ctx)
        except BaseException:
            with cv:
                lane.call = None
                gone = lane.abandoned
            if gone:
                raise _Halt from None
            raise
        with cv:
            lane.call = None
            gone = lane.abandoned
        if gone:
            raise _Halt
        return result

    def _abandon(self, ext: _Extender, call: _Call, finished: list[_Item], pos: int) -> None:
        """The heartbeat gives up a sync call past its time limit (its thread runs on).

        The attempt fails with :class:`TimeLimitExceeded` through the subscriber's
        policy (a ``nack`` with the backoff, or the dead-letter topic); the job's
        messages finished before it are settled with their outputs now; its
        messages not started yet are made visible to other workers at once
        (``extend(0)``: their delivery count rises on the next receive); the job's
        slot is given back, so the subscriber takes new jobs on another thread.
        """
        spec = self.spec
        m, at = call.message, call.at
        self._log_overdue(m, call.attempt, "its thread cannot be stopped and is abandoned "
                          "(what it returns is discarded)")
        exc = TimeLimitExceeded(spec.time_limit or 0.0, spec.name)
        acc = _Acc()
        acc.items = finished  # finished before it, not yet written
        if call.delivery is not None:
            self._failure(acc, m, call.attempt, exc, call.delivery, call.at.t0, at.payload)
        else:  # ack="before": already acked, nothing to give back; no retry in place
            status = self._give_up(acc, m, call.attempt, exc, False, None)
            if self.app._listeners:
                self._emit(m, call.attempt, status, time.perf_counter() - at.t0, exc,
                           at.payload)
        try:
            self._apply(ext, acc.items, None)
        except Exception:  # a full map, a deleted topic: their messages come back later
            log.exception("%s: settling the messages of an abandoned job failed; they are "
                          "delivered again after visibility_timeout", spec.name)
        rest = ext.rest(pos + 1)
        if rest and ext.queue is not None:
            try:
                ext.queue.extend(rest, 0)
            except MqliteError:
                pass  # settled or gone meanwhile: visible again after the timeout anyway
        self._report(_Done(None, None, None, len(ext.ds), True))

    def _took(self, d: _Done) -> None:
        self._running -= 1
        self._buffered -= d.size


class _Extender:
    """The "lane" of a queue job: its deliveries, kept invisible while it runs.

    The runner's heartbeat thread (:meth:`QueueRunner._keep_visible`) extends them
    every half ``visibility_timeout``, also while one long handler call runs.
    ``queue`` is the sync queue consumer that received them (a later one of the
    subscriber, after its topic was deleted and created again, cannot settle them).
    """

    __slots__ = ("_runner", "abandoned", "call", "done", "ds", "next_extend", "queue", "tp")

    def __init__(self, runner: QueueRunner, ds: list[Any]) -> None:
        self._runner = runner
        self.ds = ds
        self.queue = runner._queue
        self.next_extend = time.monotonic() + runner.spec.visibility_timeout / 2
        self.done: int | None = None
        self.tp = None
        #: The sync handler call running under ``time_limit`` (set and cleared under the
        #: runner's ``_held_cv``); ``abandoned``: the heartbeat gave it up (D88).
        self.call: _Call | None = None
        self.abandoned = False

    def rest(self, start: int) -> list[Any]:
        """The job's deliveries from index ``start`` on (not started yet)."""
        return self.ds[start:]

    @property
    def revoked(self) -> bool:
        return False

    def extend(self, vt: float) -> None:
        """Extend the job's deliveries by ``vt`` s; settled (stale) ones are skipped."""
        if self.queue is None:
            return
        try:
            self.queue.extend(self.ds, vt)
        except (StaleDeliveryError, ClosedError):
            pass  # acked, nacked or dead-lettered meanwhile: no longer ours; the rest applied
        except MqliteError as exc:  # a deleted topic, a full map: the job's own settle says
            log.debug("%s: extending the visibility of a running job failed: %s",
                      self._runner.spec.name, exc)


class _Call:
    """A sync handler call under ``time_limit``, watched by the heartbeat (D88)."""

    __slots__ = ("acc", "at", "attempt", "deadline", "delivery", "message")

    def __init__(self, message: Any, attempt: int, at: _Attempt, delivery: Any, acc: _Acc,
                 deadline: float) -> None:
        self.message = message
        self.attempt = attempt
        self.at = at
        self.delivery = delivery
        self.acc = acc
        self.deadline = deadline


class _DaemonPool(Executor):
    """Daemon threads for the jobs of a sync queue subscriber with a ``time_limit`` (D88).

    Idle threads are reused; a job finding none starts a new one, so a thread
    held by an abandoned handler call is replaced, and (daemon) it does not
    keep the process from exiting.  ``shutdown`` ends the idle threads.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: _queue_mod.SimpleQueue[Any] = _queue_mod.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        with self._lock:
            if self._idle:
                self._idle -= 1
                spawn = False
            else:
                spawn = True
                self._threads += 1
                n = self._threads
        self._jobs.put((fut, functools.partial(fn, *args, **kwargs)))
        if spawn:
            threading.Thread(target=self._work, name=f"{self._name}-{n}", daemon=True).start()
        return fut

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            fut, fn = item
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - handed to the future
                    fut.set_exception(exc)
            with self._lock:
                self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            idle, self._idle = self._idle, 0
        for _ in range(idle):
            self._jobs.put(None)
