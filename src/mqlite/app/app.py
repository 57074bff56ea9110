"""``mqlite.App``: register handlers on topics; the App runs the poll loops.

>>> app = mqlite.App("data/")                                  # doctest: +SKIP
>>> @app.subscriber("order-created", group="payments", retries=3,
...                 dead_letter="order-created.dlq")
... @app.publisher("payment-processed")
... async def pay(order: Order, ctx: mqlite.Context) -> Payment: ...
>>> app.run(workers=3)                                          # or: mqlite run mod:app

Everything here is written against :class:`mqlite.app.backend.Backend`, the
public broker surface the App needs, so the same App runs on another backend.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime
import inspect
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, NamedTuple, Self, TypeVar

from mqlite.app.backend import LocalBackend, is_target, open_backend
from mqlite.app.context import H_CORRELATION, H_REPLY_TO, make_output
from mqlite.app.periodic import PeriodicJob, make_handler, make_job, tick_ttl
from mqlite.app.runner import HandlerEvent, QueueRunner, Runner, StreamRunner
from mqlite.app.subscriber import SubscriberSpec, make_spec
from mqlite.config import validate_topic_name
from mqlite.errors import ClosedError, MqliteError, TimeoutError
from mqlite.queue import DeadLetterCursor
from mqlite.retry import Backoff
from mqlite.types import RecordMetadata

__all__ = ["App", "Health", "load_app"]

log = logging.getLogger("mqlite.app")
F = TypeVar("F", bound=Callable[..., Any])
_UNSET: Any = object()


class Health(NamedTuple):
    """``app.health()``: ready when every subscriber has joined and none has failed."""

    ready: bool
    subscribers: dict[str, dict[str, Any]]


class _Replies:
    """Reads the reply topic and resolves the futures of pending requests (one thread)."""

    def __init__(self, app: App, topic: str) -> None:
        self.topic = topic
        self._pending: dict[str, Future[bytes | None]] = {}
        self._lock = threading.Lock()
        self._reader = app._backend_now().reader(topic)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="mqlite-replies", daemon=True)
        self._thread.start()

    def expect(self, cid: str) -> Future[bytes | None]:
        fut: Future[bytes | None] = Future()
        with self._lock:
            self._pending[cid] = fut
        return fut

    def forget(self, cid: str) -> None:
        with self._lock:
            self._pending.pop(cid, None)

    def _run(self) -> None:
        r = self._reader
        try:
            while not self._stop:
                for m in r.poll(max_records=500, timeout=1.0):
                    cid = None
                    for n, v in m.headers:
                        if n == H_CORRELATION:
                            cid = v.decode("utf-8", "replace")
                    if cid is None:
                        continue
                    with self._lock:
                        fut = self._pending.pop(cid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(m.value)
        except ClosedError:
            pass
        finally:
            r.close()

    def close(self) -> None:
        self._stop = True
        self._reader.wakeup()
        self._thread.join(10)


class App:
    """A service: subscribers (handlers) and publishers on one broker.

    Parameters
    ----------
    broker
        A broker directory (``str`` / ``os.PathLike``; opened at :meth:`start`
        or at the first publish), a ``kafka://`` URL, or an open
        :class:`mqlite.Broker` or :class:`mqlite.kafka.KafkaBroker` (the App
        does not close it; a Kafka client does not survive a fork, so an App on
        a ``KafkaBroker`` runs with ``run(workers=1)``: give the URL for more).
    name
        The service name: default groups are ``"{name}.{handler}"``; 1-200
        characters of ``[A-Za-z0-9._-]``.
    durability
        ``"sync"`` (default), ``"lazy"`` or ``"none"`` when ``broker`` is a path
        (see ``mqlite.open``).
    partitions
        Partitions of topics the App creates at startup when they are missing
        (subscribed, published, dead-letter topics); 1 to 10,000, default 1.
        An existing topic is used as it is.  Per subscriber: ``partitions=``.
    graceful_timeout
        Seconds a stop (``stop()``, SIGTERM, SIGINT) waits for running handlers
        before leaving them; also the longest a rebalance waits for the
        handlers of a revoked partition.  0 to 3600, default 30.
    reply_topic
        Topic where replies to :meth:`request` arrive (created with 1 partition
        on the first request).
    auto_create_topics
        ``True`` (default, as Kafka's ``allowAutoTopicCreation``): a publish
        (``app.publish``, ``ctx.publish``, a reply) to a missing topic creates it
        with ``partitions`` partitions.  ``False``: it raises
        :class:`mqlite.TopicNotFoundError` (a handler's publish then fails the
        job, which is retried).  Subscribed, publisher and dead-letter topics
        are created at :meth:`start` either way.
    listeners
        Callables given a :class:`HandlerEvent` when a handler starts
        (``status=None``) and when it finishes (``"ok"``, ``"retry"``,
        ``"dead_letter"``, ``"error"``, ``"skipped"``); for metrics and tests.

    Raises
    ------
    TypeError, ValueError
        Bad option types or values.
    """

    def __init__(self, broker: Any, *, name: str = "app", durability: str = "sync",
                 partitions: int = 1, graceful_timeout: float = 30.0,
                 reply_topic: str = "mqlite.replies", auto_create_topics: bool = True,
                 listeners: Sequence[Callable[[HandlerEvent], Any]] = ()) -> None:
        if not is_target(broker):
            raise TypeError(f"App() takes a broker directory (str / PathLike), a kafka:// URL, "
                            f"a mqlite.Broker or a mqlite.kafka.KafkaBroker, not "
                            f"{type(broker).__name__}")
        validate_topic_name(name, "app name")
        if len(name) > 200:
            raise ValueError("name must be at most 200 characters")
        if durability not in ("sync", "lazy", "none"):
            raise ValueError(f"durability must be 'sync', 'lazy' or 'none', got {durability!r}")
        if not isinstance(partitions, int) or isinstance(partitions, bool):
            raise TypeError("partitions must be an int")
        if not 1 <= partitions <= 10_000:
            raise ValueError(f"partitions must be 1 to 10000, got {partitions}")
        if not isinstance(graceful_timeout, (int, float)) or isinstance(graceful_timeout, bool):
            raise TypeError("graceful_timeout must be a number of seconds")
        if not 0 <= graceful_timeout <= 3600:
            raise ValueError(f"graceful_timeout is in seconds and must be 0 to 3600, got "
                             f"{graceful_timeout!r}")
        validate_topic_name(reply_topic)
        self.target = broker
        self.name = name
        self.durability = durability
        self.partitions = partitions
        self.graceful_timeout = float(graceful_timeout)
        self.reply_topic = reply_topic
        if not isinstance(auto_create_topics, bool):
            raise TypeError("auto_create_topics must be a bool")
        self.auto_create_topics = auto_create_topics
        self.subscribers: list[SubscriberSpec] = []
        self._publishers: dict[int, list[str]] = {}
        self.periodic_jobs: dict[str, PeriodicJob] = {}
        self._startup: list[Callable[..., Any]] = []
        self._shutdown: list[Callable[..., Any]] = []
        self._listeners: list[Callable[[HandlerEvent], Any]] = []
        for fn in listeners:
            self.add_listener(fn)
        self._backend: LocalBackend | None = None
        self._runners: list[Runner] = []
        self._lock = threading.RLock()
        self._progress = threading.Condition()
        self._stop_event = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._replies: _Replies | None = None
        self._state = "new"

    def __repr__(self) -> str:
        return f"<mqlite.App {self.name!r} {len(self.subscribers)} subscriber(s) {self._state}>"

    # -- registration ----------------------------------------------------------------------
    def subscriber(self, topics: str | Sequence[str], *, group: str | None = None,
                   mode: str = "stream", ack: str = "after", exactly_once: bool = False,
                   idempotency_key: Callable[[Any], Any] | None = None,
                   idempotency_ttl: float = 7 * 24 * 3600.0, retries: int = 3,
                   backoff: Backoff | float | None = _UNSET, dead_letter: str | None = None,
                   permanent: Sequence[type[BaseException]] = (), concurrency: int = 1,
                   batch: int | bool = 500, partitions: int | None = None,
                   auto_offset_reset: str = "earliest", visibility_timeout: float = 30.0,
                   name: str | None = None, commit_interval: float = 0.1,
                   max_records: int | None = None,
                   retry_topic: bool | str = False,
                   time_limit: float | None = _UNSET) -> Callable[[F], F]:
        """Register the decorated function (``def`` or ``async def``) as a handler.

        The handler takes the decoded payload (typed by its annotation, see
        :mod:`mqlite.app.codec`) and optionally ``ctx: mqlite.Context``.

        Parameters
        ----------
        topics
            Topic name or names (queue mode: exactly one).
        group
            Consumer group (default ``"{app name}.{handler name}"``).  Every
            group sees every message; the members of one group share them.
        mode
            ``"stream"`` (default): Kafka-style ordered partitions, each owned
            by one member of the group.  ``"queue"``: competing consumers with
            per-message acks, any number of workers, no order.
        ack
            ``"after"`` (default, at-least-once: commit / ack once handled),
            ``"before"`` (at-most-once: commit / ack when fetched, before the
            handler runs) or ``"manual"`` (the handler calls ``ctx.commit()`` /
            ``ctx.ack()``).
        exactly_once
            Commit the handler's outputs and the offset commit (queue: the
            ack) in one transaction: a crash anywhere leaves each input with
            exactly one set of outputs.  Needs ``ack="after"``.
        idempotency_key
            ``payload -> str | bytes | None``: an event id; an id already
            processed in this subscriber's scope (by any process, within
            ``idempotency_ttl``) is skipped, and the claim is recorded in the
            same transaction as the handler's outputs.
        idempotency_ttl
            Seconds an id is remembered: 0.001 to 366 days, default 7 days.
        retries
            Extra attempts after a transient failure: 0 to 1000, default 3.
        backoff
            Delay before a retry: a :class:`mqlite.Backoff`, a number of
            seconds (fixed; 0 to 86400) or ``None`` (at once).  Default
            exponential from 0.5 s, doubling, capped at 30 s, 50% jitter.
            ``raise mqlite.Retry(delay=...)`` overrides it for one attempt.
        dead_letter
            Topic that receives messages that failed for good (permanent error,
            or transient after ``retries``), with provenance headers.  ``None``
            (default): they are logged and dropped.
        permanent
            Exception types that are permanent (no retry): added to
            :class:`mqlite.Reject` and payload validation errors.
        concurrency
            Handlers of this subscriber running at once in this process: 1 to
            1024.  Stream mode: that many partitions in parallel, one message
            at a time within each.  Queue mode: that many messages at once.
        batch
            Messages fetched per poll / receive: 1 to 10,000, default 500.
            ``batch=True`` makes a *batch handler* (stream mode): it takes
            ``list[T]``, the decoded payloads of up to ``max_records``
            consecutive messages of one partition, in order, and is retried,
            dead-lettered and committed as a whole (a payload that does not
            decode is dead-lettered alone and left out of the list).  Its
            return value is ignored, so no ``@app.publisher``; no ``ctx``,
            ``exactly_once``, ``idempotency_key`` or ``ack="manual"``.
        max_records
            Messages fetched per poll, as ``batch=N`` (for batch handlers:
            the largest list): 1 to 10,000, default 500.
        retry_topic
            Stream mode: ``True`` retries through ``"<topic>.retry"`` (or a
            topic name given here) instead of in place, as Spring Kafka's
            retry topics do.  A transient failure sends the message there with
            ``delay=`` the backoff and the partition moves on; the subscriber
            also reads the retry topic (skipping other groups' retries); after
            ``retries`` it goes to ``dead_letter`` with its original topic,
            partition and offset.  Per-key order is NOT kept for a message
            that failed.  Default ``False``: retry in place (order kept, the
            partition waits).  Not with ``exactly_once`` or ``batch=True``.
        commit_interval
            Stream mode: seconds between offset commits while messages keep
            coming, 0 to 60, default 0.1.  The App always commits when it
            has caught up (before it waits), on a rebalance and at stop, so
            this only bounds how much a *killed* worker's successor handles
            again (at-least-once).  0 commits after every fetched batch.
            ``exactly_once=True`` commits with each job's outputs regardless.
        partitions
            Partitions of this subscriber's topics when the App creates them
            (default: the App's ``partitions``).
        auto_offset_reset
            Stream mode, a group with no committed offset: ``"earliest"``
            (default) or ``"latest"``.
        visibility_timeout
            Queue mode: seconds a received message stays invisible to other
            workers (extended while its job runs): > 0 to 43200, default 30.
        time_limit
            Queue mode: seconds one handler call may run, > 0 to 604800 (7 days),
            or ``None`` for no limit; default 3600 (1 hour).  Past it the call
            counts as failed with :class:`mqlite.TimeLimitExceeded` (a WARNING
            names the subscriber and the message), retried per ``retries`` and
            ``backoff``, then dead-lettered like any error.  An ``async def``
            handler is cancelled.  A plain ``def`` handler cannot be stopped: its
            thread is abandoned (it runs on; what it returns is discarded), the
            job's other messages are released to other workers, and a new
            thread takes the subscriber's next jobs.  Stream mode takes no limit
            (a ``ValueError``).
        name
            The subscriber's name in logs, events and health (default: the
            function's ``__name__``).

        Raises
        ------
        TypeError, ValueError
            At decoration time, for any bad option or handler signature.
        """
        if backoff is _UNSET:
            from mqlite.app.subscriber import DEFAULT_BACKOFF
            backoff = DEFAULT_BACKOFF

        def register(fn: F) -> F:
            if self._state != "new":
                raise RuntimeError("register subscribers before the App starts")
            spec = make_spec(
                fn, topics, group=group, app_name=self.name, name=name, mode=mode, ack=ack,
                exactly_once=exactly_once, idempotency_key=idempotency_key,
                idempotency_ttl=idempotency_ttl, retries=retries, backoff=backoff,
                dead_letter=dead_letter, permanent=permanent, concurrency=concurrency,
                batch=batch, partitions=partitions, auto_offset_reset=auto_offset_reset,
                visibility_timeout=visibility_timeout, commit_interval=commit_interval,
                max_records=max_records, retry_topic=retry_topic,
                **({} if time_limit is _UNSET else {"time_limit": time_limit}))
            spec.publishers.extend(self._publishers.get(id(fn), []))
            if any(s.name == spec.name for s in self.subscribers):
                raise ValueError(f"a subscriber named {spec.name!r} exists; pass name=")
            self.subscribers.append(spec)
            return fn
        return register

    def publisher(self, topic: str) -> Callable[[F], F]:
        """Publish the decorated handler's return value to ``topic`` (``None``: nothing).

        Stack it under (or over) ``@app.subscriber``; several publishers
        publish the value to each topic.  The output keeps the input message's
        key (so one customer's events stay in order downstream too).  The value is encoded as by
        :meth:`publish` and sent with the handler's outcome (see
        ``Context.publish``).
        """
        validate_topic_name(topic)

        def register(fn: F) -> F:
            for spec in self.subscribers:
                job = getattr(spec.handler, "mqlite_periodic_job", None)
                if spec.handler is fn or (job is not None and job.fn is fn):
                    spec.publishers.append(topic)
                    return fn
            self._publishers.setdefault(id(fn), []).append(topic)
            return fn
        return register

    def periodic(self, every: float | datetime.timedelta, *, offset: float | datetime.timedelta = 0,
                 name: str | None = None, topic: str | None = None, group: str | None = None,
                 retries: int = 3, backoff: Backoff | float | None = _UNSET,
                 dead_letter: str | None = None,
                 permanent: Sequence[type[BaseException]] = (),
                 visibility_timeout: float = 30.0) -> Callable[[F], F]:
        """Run the decorated function (``def`` or ``async def``) once per tick, in ONE
        worker of the whole service (Celery beat, APScheduler's interval trigger).

        Ticks are at UNIX time ``offset + k * every`` (so ``every=3600`` runs on the
        hour, ``every=86400, offset=3 * 3600`` daily at 03:00 UTC), the same grid in
        every process.  Each tick is a delayed message with a deterministic dedup id
        on the job's tick topic, received by a queue-mode subscriber: whatever the
        number of worker processes and restarts, each tick is handled once, with the
        App's retries, dead letters, listeners, metrics and health (the job's
        subscriber has the job's ``name``).  At-least-once as any queue job: a worker
        killed mid-run hands the tick to another.  A tick missed while no worker ran
        is run once, late, at the next start; later missed ticks are not (as Celery
        beat).  A run longer than ``every`` overlaps the next tick's run (in another
        worker or thread).  The function takes ``()``, ``(tick)``,
        ``(ctx)`` or ``(tick, ctx)``; ``tick`` is a :class:`mqlite.app.Tick`
        (``job``, ``at``, ``every``, ``late``).  Its return value goes to any
        ``@app.publisher``.

        Parameters
        ----------
        every
            Seconds between ticks (or a ``datetime.timedelta``): 0.1 s to 366 days,
            millisecond precision.
        offset
            Seconds (or ``timedelta``) added to the grid: ``0 <= offset < every``,
            default 0.
        name
            The job's name (default: the function's ``__name__``), 1-200 characters;
            names the subscriber, the default topic, group and the ticks' dedup ids.
        topic
            Tick topic (default ``"{app name}.periodic.{name}"``).
        group
            Queue group (default ``"{app name}.{name}"``).
        retries, backoff, dead_letter, permanent, visibility_timeout
            As :meth:`subscriber` in queue mode.

        Raises
        ------
        TypeError, ValueError
            At decoration time: a bad interval, offset, option or signature.
        RuntimeError
            The App already started.
        """
        if backoff is _UNSET:
            from mqlite.app.subscriber import DEFAULT_BACKOFF
            backoff = DEFAULT_BACKOFF

        def register(fn: F) -> F:
            if self._state != "new":
                raise RuntimeError("register periodic jobs before the App starts")
            job = make_job(fn, every=every, offset=offset, name=name, topic=topic,
                           app_name=self.name)
            handler = make_handler(job, self._backend_now)
            self.subscriber(job.topic, group=group, mode="queue", name=job.name,
                            idempotency_key=job.key, idempotency_ttl=tick_ttl(job.every_ms),
                            retries=retries, backoff=backoff, dead_letter=dead_letter,
                            permanent=permanent, visibility_timeout=visibility_timeout,
                            batch=1, partitions=1)(handler)
            self.subscribers[-1].publishers.extend(self._publishers.get(id(fn), []))
            self.periodic_jobs[job.name] = job
            return fn
        return register

    def on_startup(self, fn: F) -> F:
        """Run ``fn()`` (sync or async) at :meth:`start`, before subscribers start."""
        self._startup.append(fn)
        return fn

    def on_shutdown(self, fn: F) -> F:
        """Run ``fn()`` (sync or async) at :meth:`stop`, after subscribers stopped."""
        self._shutdown.append(fn)
        return fn

    def add_listener(self, fn: Callable[[HandlerEvent], Any]) -> None:
        """Call ``fn(event)`` for every handler start and finish (see :class:`HandlerEvent`).

        Listeners run on the handler's thread (or loop) and must be quick;
        an exception in one is logged and ignored.
        """
        if not callable(fn):
            raise TypeError("a listener must be callable")
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[HandlerEvent], Any]) -> None:
        """Stop calling ``fn`` (added by :meth:`add_listener`); a no-op if it is not there.

        Events already being delivered to it on another thread may still reach it.
        """
        with contextlib.suppress(ValueError):
            self._listeners.remove(fn)

    @property
    def state(self) -> str:
        """``"new"`` (never started, or given back by :class:`~mqlite.app.TestApp`),
        ``"running"``, ``"stopping"`` or ``"stopped"``."""
        return self._state

    # -- infrastructure for runners --------------------------------------------------------
    def _backend_now(self) -> LocalBackend:
        with self._lock:
            if self._backend is None:
                self._backend = open_backend(self.target, self.durability,
                                             self.auto_create_topics, self.partitions)
            return self._backend

    @property
    def broker(self) -> Any:
        """The :class:`mqlite.Broker` the App uses (opened on first access)."""
        return self._backend_now().broker

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                t = threading.Thread(target=loop.run_forever, name="mqlite-app-loop",
                                     daemon=True)
                t.start()
                self._loop, self._loop_thread = loop, t
            return self._loop

    def _io_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(4, thread_name_prefix="mqlite-app-io")
            return self._pool

    def _notify_progress(self) -> None:
        with self._progress:
            self._progress.notify_all()

    def _call_hook(self, fn: Callable[..., Any]) -> None:
        if inspect.iscoroutinefunction(fn):
            asyncio.run_coroutine_threadsafe(fn(), self._event_loop()).result()
        else:
            res = fn()
            if inspect.isawaitable(res):
                asyncio.run_coroutine_threadsafe(res, self._event_loop()).result()  # type: ignore[arg-type]

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Create missing topics, run ``on_startup`` hooks, start every subscriber.

        Returns once the subscribers' threads run (not once they joined their
        groups: see :meth:`wait_ready`).  Idempotent while running.

        Raises
        ------
        RuntimeError
            The App was stopped (an App starts once).
        """
        with self._lock:
            if self._state == "running":
                return
            if self._state != "new":
                raise RuntimeError("this App was stopped; create a new App to start again")
            backend = self._backend_now()
            for job in self.periodic_jobs.values():
                job.ensure_topic(backend)
            for spec in self.subscribers:
                if spec.batch_handler and spec.publishers:
                    raise ValueError(f"subscriber {spec.name!r}: a batch=True handler's return "
                                     "value is not published; remove @app.publisher")
                n = spec.partitions or self.partitions
                for t in spec.topics:
                    backend.ensure_topic(t, n)
                if spec.retry_topic is not None:
                    backend.ensure_topic(spec.retry_topic, n)
                for t in spec.publishers:
                    backend.ensure_topic(t, self.partitions)
                if spec.dead_letter is not None:
                    backend.ensure_topic(spec.dead_letter, 1)
                if spec.mode == "stream":
                    _record_dead_letter(backend, spec)
                fence = getattr(backend, "prepare_exactly_once", None)  # optional (Kafka)
                if fence is not None and spec.exactly_once and spec.mode == "stream":
                    fence(spec.group)
            now = time.time()
            for job in self.periodic_jobs.values():
                job.schedule(backend, now)  # merges with the other workers' schedules
            for fn in self._startup:
                self._call_hook(fn)
            self._stop_event.clear()
            self._runners = [
                (QueueRunner if s.mode == "queue" else StreamRunner)(s, backend, self)
                for s in self.subscribers]
            self._state = "running"
            for r in self._runners:
                r.start()

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Wait until every subscriber polled once (joined its group); True when ready."""
        end = time.monotonic() + timeout
        with self._progress:
            while not self.health().ready:
                left = end - time.monotonic()
                if left <= 0 or any(r.failed for r in self._runners):
                    return False
                self._progress.wait(min(left, 0.5))
        return True

    def stop(self, timeout: float | None = None) -> None:
        """Stop gracefully: stop fetching, let running handlers finish (up to
        ``graceful_timeout``), commit what finished, leave the groups, run the
        ``on_shutdown`` hooks, close what the App opened.  Idempotent.

        ``timeout`` (seconds) bounds the wait for each subscriber's shutdown
        (default ``graceful_timeout + 10``).
        """
        with self._lock:
            if self._state in ("stopped", "new"):
                self._state = "stopped" if self._state == "new" else self._state
                if self._backend is not None and not self._runners:
                    self._close_rest()
                return
            self._state = "stopping"
        self._stop_event.set()
        for r in self._runners:
            r.request_stop()
        limit = self.graceful_timeout + 10 if timeout is None else timeout
        for r in self._runners:
            if not r.join(limit):
                log.warning("subscriber %s did not stop within %.1f s", r.spec.name, limit)
        for fn in self._shutdown:
            try:
                self._call_hook(fn)
            except Exception:
                log.exception("on_shutdown hook %r failed", fn)
        self._close_rest()
        self._state = "stopped"
        self._notify_progress()

    def _rearm(self) -> None:
        """Make a stopped App startable again (for :class:`mqlite.app.TestApp` only).

        A stopped App has closed everything it opened (:meth:`stop`); this forgets
        its old subscribers' runners so that :meth:`start` builds new ones, as for
        a new App.  Production code creates a new App instead.

        Raises
        ------
        RuntimeError
            The App is running or stopping.
        """
        with self._lock:
            if self._state not in ("new", "stopped"):
                raise RuntimeError(f"cannot re-arm a {self._state} App; stop it first")
            self._runners = []
            self._stop_event = threading.Event()
            self._state = "new"

    def _after_fork(self) -> None:
        """In a forked worker: forget the parent's threads, loop and handles (never used)."""
        self._lock = threading.RLock()
        self._progress = threading.Condition()
        self._stop_event = threading.Event()
        self._backend = None
        self._loop = self._loop_thread = None
        self._pool = None
        self._replies = None

    def _close_rest(self) -> None:
        if self._replies is not None:
            self._replies.close()
            self._replies = None
        if self._loop is not None:
            aclose = getattr(self._backend, "aclose", None)
            if aclose is not None and self._loop.is_running():
                try:  # the asyncio side of the backend (doorbell, threads) lives on the loop
                    asyncio.run_coroutine_threadsafe(aclose(), self._loop).result(10)
                except Exception:
                    log.exception("closing the App's asyncio broker handle failed")
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(10)
            if not self._loop.is_running():
                self._loop.close()
            self._loop = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run(self, workers: int = 1, *, health_port: int | None = None,
            health_host: str = "127.0.0.1", metrics_port: int | None = None,
            metrics_host: str = "127.0.0.1") -> int:
        """Run until SIGTERM / SIGINT (see :func:`mqlite.app.run.run_app`); returns an exit code.

        ``workers`` > 1 forks that many worker processes that share the groups
        (1 to 256).  ``health_port`` serves ``GET /health`` (200 ready, 503 not).
        ``metrics_port`` (0 to 65535) serves Prometheus ``GET /metrics``: broker
        state plus the handler metrics of all workers (needs ``prometheus_client``,
        the ``[metrics]`` extra).
        """
        from mqlite.app.run import run_app

        return run_app(self, workers=workers, health_port=health_port, health_host=health_host,
                       metrics_port=metrics_port, metrics_host=metrics_host)

    # -- state ---------------------------------------------------------------------------------
    def health(self) -> Health:
        """Ready when running, every subscriber joined (polled once), none failed and
        none is waiting.

        Each subscriber's entry has ``ready``, ``mode``, ``group``, ``topics``,
        ``handled`` (messages finished in this process), ``error`` (why it stopped,
        else ``None``) and ``waiting``: ``None``, or why a running subscriber is not
        fetching (a queue subscriber whose topic was deleted waits for it to be
        created again, D84).  ``overdue``: sync handler calls past their
        ``time_limit`` whose thread still runs (abandoned, D88; 0 normally).
        """
        subs = {}
        ready = self._state == "running" and bool(self._runners)
        for r in self._runners:
            waiting = r.waiting
            ok = r.ready and r.failed is None and waiting is None
            ready = ready and ok
            subs[r.spec.name] = {"ready": ok, "mode": r.spec.mode, "group": r.spec.group,
                                 "topics": list(r.spec.topics), "handled": r.handled,
                                 "error": None if r.failed is None else repr(r.failed),
                                 "waiting": waiting, "overdue": r.overdue}
        if self._state == "running" and not self._runners:
            ready = True  # an App with no subscribers (a pure publisher) is ready once started
        return Health(ready, subs)

    def idle(self) -> bool:
        """No message fetched and unfinished, and every subscriber's group caught up."""
        for r in self._runners:
            if r.failed is not None:
                continue
            if r.busy() or not r.ready or r.lag() > 0:
                return False
        return True

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until :meth:`idle` (every published message handled and committed).

        Messages waiting for a retry delay count as not handled yet.

        Raises
        ------
        mqlite.TimeoutError
            Not idle after ``timeout`` seconds.
        """
        end = time.monotonic() + timeout
        with self._progress:
            while not self.idle():
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the App was not idle after {timeout} s")
                self._progress.wait(min(left, 0.05))

    # -- publishing ---------------------------------------------------------------------------
    def publish(self, topic: str, payload: Any, *, key: Any = None, headers: Any = None,
                partition: int | None = None, delay: float | None = None,
                deliver_at: float | None = None,
                dedup_id: str | bytes | None = None) -> RecordMetadata:
        """Publish one message now (its own transaction) and return where it was stored.

        ``payload``: bytes as they are; anything else JSON through msgspec
        (dict, list, ``msgspec.Struct``, dataclass, pydantic model...).
        ``key``: str (UTF-8), bytes, int or ``None``; ``headers``: a dict or
        ``(name, value)`` pairs with str or bytes values.  Works before
        :meth:`start` (opens the broker).  A missing topic is created when
        ``auto_create_topics`` (the default), else ``TopicNotFoundError``.

        ``delay`` (seconds, 0 to 10 years) or ``deliver_at`` (UNIX seconds, at most 10
        years ahead; a past time is due at once): a
        scheduled job (Celery's ``countdown`` / ``eta``): the message is durable
        now and appended to the topic, visible to handlers, only when due; the
        returned metadata then has ``offset == -1``.  ``dedup_id``: an idempotent
        send (a repeat within the topic's dedup window appends nothing and returns
        the first send's metadata), as ``broker.send(dedup_id=)``.  On Kafka, all
        three raise ``NotSupportedError``.

        Raises
        ------
        TopicNotFoundError, TypeError, ValueError, MessageTooLargeError, StorageFullError,
        NotSupportedError
        """
        out = make_output(topic, payload, key, headers, partition)
        if delay is not None or deliver_at is not None or dedup_id is not None:
            out = out._replace(delay=delay, deliver_at=deliver_at, dedup_id=dedup_id)
        return self._backend_now().send(out)

    async def publish_async(self, topic: str, payload: Any, *, key: Any = None,
                            headers: Any = None, partition: int | None = None,
                            delay: float | None = None, deliver_at: float | None = None,
                            dedup_id: str | bytes | None = None) -> RecordMetadata:
        """:meth:`publish` for async code: the write runs off the event loop."""
        out = make_output(topic, payload, key, headers, partition)
        if delay is not None or deliver_at is not None or dedup_id is not None:
            out = out._replace(delay=delay, deliver_at=deliver_at, dedup_id=dedup_id)
        backend = self._backend_now()
        return await asyncio.get_running_loop().run_in_executor(None, backend.send, out)

    # -- request / reply -------------------------------------------------------------------------
    def _replies_now(self) -> _Replies:
        with self._lock:
            if self._replies is None:
                self._backend_now().ensure_topic(self.reply_topic, 1)
                self._replies = _Replies(self, self.reply_topic)
            return self._replies

    def _send_request(self, topic: str, payload: Any, key: Any, headers: Any
                      ) -> tuple[str, Future[bytes | None]]:
        replies = self._replies_now()
        cid = uuid.uuid4().hex
        hs = list((headers.items() if isinstance(headers, dict) else headers) or [])
        hs += [(H_REPLY_TO, replies.topic), (H_CORRELATION, cid)]
        fut = replies.expect(cid)
        try:
            self._backend_now().send(make_output(topic, payload, key, hs, None))
        except BaseException:
            replies.forget(cid)
            raise
        return cid, fut

    def request_sync(self, topic: str, payload: Any, *, timeout: float = 10.0, key: Any = None,
                     headers: Any = None, raw: bool = False) -> Any:
        """Publish a request and wait for the handler's return value (NestJS ``send``).

        The request carries ``x-reply-to`` (the App's ``reply_topic``) and
        ``x-correlation-id``; the subscriber that handles it publishes its
        return value there.  Returns the reply decoded from JSON (``raw=True``:
        the bytes).

        Raises
        ------
        mqlite.TimeoutError
            No reply within ``timeout`` seconds (the request stays published).
        """
        cid, fut = self._send_request(topic, payload, key, headers)
        try:
            value = fut.result(timeout)
        except FutureTimeout:
            self._replies_now().forget(cid)
            raise TimeoutError(f"no reply to the request on {topic!r} within {timeout} s") \
                from None
        return value if raw else _decode_reply(value)

    async def request(self, topic: str, payload: Any, *, timeout: float = 10.0, key: Any = None,
                      headers: Any = None, raw: bool = False) -> Any:
        """``await app.request(topic, payload, timeout=)``: see :meth:`request_sync`."""
        loop = asyncio.get_running_loop()
        cid, fut = await loop.run_in_executor(None, self._send_request, topic, payload, key,
                                              headers)
        try:
            value = await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
        except builtins.TimeoutError:
            self._replies_now().forget(cid)
            raise TimeoutError(f"no reply to the request on {topic!r} within {timeout} s") \
                from None
        return value if raw else _decode_reply(value)

    # -- dead letters --------------------------------------------------------------------------
    def dead_letters(self, topic: str, limit: int = 1000,
                     where: Callable[[Any], bool] | None = None) -> list[Any]:
        """Dead letters in ``topic`` not yet redriven or purged (``mqlite.DeadLetter``).

        At most ``limit``; with ``where`` (e.g. a :class:`mqlite.DeadLetterFilter`)
        only those it accepts, reading stopping at the ``limit``-th match, as
        :meth:`mqlite.Broker.dead_letters`.  On Kafka: :class:`NotSupportedError`
        (a Kafka dead-letter topic is a plain topic: read it with a consumer).
        """
        backend = self._backend_now()
        if where is None:
            return backend.dead_letters(topic, limit)
        return backend.dead_letters(topic, limit, where)

    def redrive(self, topic: str, where: Callable[[Any], bool] | None = None,
                limit: int | None = None, to_topic: str | None = None, *,
                cursor: DeadLetterCursor | None = None) -> int:
        """Send dead letters of ``topic`` back to their original topic (or ``to_topic``).

        Each goes back with its key, value and original headers (the ``x-*``
        dead-letter headers removed), to its original partition, and is
        marked done in the same transaction (a crash never redrives twice).
        The subscriber's group reads it again as a new message.  Returns how
        many were redriven.  ``where`` and ``limit`` as in
        :meth:`mqlite.Broker.redrive`; to redrive in chunks pass one
        :class:`mqlite.DeadLetterCursor` to every call (each resumes where the
        last stopped).  Also ``mqlite dlq redrive DIR TOPIC``.  On Kafka:
        :class:`NotSupportedError`.
        """
        backend = self._backend_now()
        if cursor is None:
            return backend.redrive(topic, where, limit, to_topic)
        return backend.redrive(topic, where, limit, to_topic, cursor=cursor)


def _record_dead_letter(backend: Any, spec: SubscriberSpec) -> None:
    """Record in the broker where a stream subscriber's failures go (D87), so operators'
    tools in other processes show it; ``dead_letter=None`` forgets a recorded one.

    Informational: a failure to record (a full broker, say) is logged, and the
    subscriber starts anyway.  Backends without ``record_dead_letter`` are skipped.
    """
    record = getattr(backend, "record_dead_letter", None)
    if record is None:
        return
    try:
        record(spec.group, list(spec.topics), spec.dead_letter)
    except MqliteError as exc:
        log.warning("subscriber %s: could not record its dead-letter topic %r in group %r: %s",
                    spec.name, spec.dead_letter, spec.group, exc)


def _decode_reply(value: bytes | None) -> Any:
    import msgspec

    if value is None:
        return None
    try:
        return msgspec.json.decode(value)
    except msgspec.DecodeError:
        return value


def load_app(spec: str) -> App:
    """Import ``"module:attribute"`` (attribute default ``app``) from the current directory.

    Raises
    ------
    ValueError
        ``spec`` is malformed, the module or attribute does not exist.
    TypeError
        The attribute is not a :class:`mqlite.App`.
    """
    import importlib
    import sys

    if not isinstance(spec, str) or not spec or spec.count(":") > 1:
        raise ValueError(f"expected module:attribute (e.g. service:app), got {spec!r}")
    mod_name, _, attr = spec.partition(":")
    attr = attr or "app"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"cannot import {mod_name!r}: {exc}") from None
    obj = getattr(mod, attr, None)
    if obj is None:
        raise ValueError(f"module {mod_name!r} has no attribute {attr!r}")
    if not isinstance(obj, App):
        raise TypeError(f"{spec} is a {type(obj).__name__}, not a mqlite.App")
    return obj
