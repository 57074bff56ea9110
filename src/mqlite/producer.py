"""Batching producer with group commit.

``Producer.send()`` validates the record, picks its partition and queues it;
it returns a :class:`~mqlite.SendFuture` that resolves to the record's
:class:`~mqlite.RecordMetadata` once the transaction holding it has
committed (or to the error that record hit).  A background flusher takes
everything queued — from any number of threads — after ``linger_ms`` (default 0; or at
once when ``batch_bytes`` are queued or :meth:`Producer.flush` is called)
and appends it in **one** LMDB transaction: under ``durability="sync"`` many
records share one fsync, which is what makes concurrent durable sends scale.

A failed record fails only its own future: records that do not encode (wrong
type, too large) are isolated before the transaction; a storage failure of
the transaction fails every record in it (nothing of it was stored).
"""

from __future__ import annotations

import os
import threading
import time
from threading import get_ident
from typing import TYPE_CHECKING, Any, Self

from mqlite._core import self_pid
from mqlite._engine import RING_OK, TopicRecord, now_ms
from mqlite._headers import HeadersArg, normalize_headers
from mqlite.config import (
    MAX_DELAY_S,
    MAX_I64,
    MAX_LINGER_MS,
    require_int,
    require_milliseconds,
    require_seconds,
    validate_topic_name,
)
from mqlite.errors import ClosedError, MqliteError, PartitionNotFoundError, TopicNotFoundError
from mqlite.future import SendFuture
from mqlite.partitioner import resolve_partitioner
from mqlite.types import RecordMetadata

if TYPE_CHECKING:
    from mqlite._engine import Engine

__all__ = ["Producer", "SendItem", "append_items", "encode_items"]


class SendItem:
    """One queued record (internal)."""

    __slots__ = (
        "auto_ts",
        "dedup",
        "future",
        "headers",
        "key",
        "partition",
        "sender",
        "size",
        "topic",
        "ts",
        "value",
    )

    def __init__(self, topic: str, value: Any, key: Any, headers: Any, partition: int,
                 ts: int, dedup: bytes | None, future: Any, sender: int = 0,
                 auto_ts: bool = False) -> None:
        self.topic = topic
        self.value = value
        self.key = key
        self.headers = headers
        self.partition = partition
        self.ts = ts
        self.dedup = dedup
        self.future = future
        self.sender = sender  # the sending thread's id (adaptive gathering)
        self.size = (len(value) if value is not None else 0) + (len(key) if key else 0)
        self.auto_ts = auto_ts  # ts is the send's clock, not the caller's timestamp_ms


class _Group:
    __slots__ = ("batches", "items", "partition", "topic")

    def __init__(self, topic: str, partition: int, batches: list[bytes],
                 items: list[SendItem]) -> None:
        self.topic = topic
        self.partition = partition
        self.batches = batches
        self.items = items


def _fail(item: SendItem, exc: BaseException) -> None:
    if item.future is not None and not item.future.done():
        item.future.set_exception(exc)


def _encode(engine: Engine, rec: TopicRecord, items: list[SendItem]) -> list[bytes]:
    return engine.encode(
        rec,
        [i.value for i in items],
        [i.key for i in items] if any(i.key is not None for i in items) else None,
        [i.headers for i in items] if any(i.headers is not None for i in items) else None,
        [i.ts for i in items],
    )


def _encodes_alone(engine: Engine, rec: TopicRecord, item: SendItem) -> bool:
    try:
        _encode(engine, rec, [item])
        return True
    except (TypeError, ValueError, MqliteError) as exc:
        _fail(item, exc)
        return False


def encode_items(engine: Engine, items: list[SendItem], *,
                 isolate: bool = True) -> list[_Group]:
    """Group items by (topic, partition) in arrival order and encode each group.

    With ``isolate`` a group that fails to encode is re-encoded item by item
    and failing items get their error on their future (and are dropped);
    without it the first error is raised.  Items with a dedup id form groups
    of their own (their append may be skipped).
    """
    order: dict[tuple[str, int, int], list[SendItem]] = {}
    for n, it in enumerate(items):
        gk = (it.topic, it.partition, n if it.dedup is not None else -1)
        order.setdefault(gk, []).append(it)
    groups: list[_Group] = []
    for (topic, part, _), its in order.items():
        try:
            rec = engine.topic_cached(topic)
        except MqliteError as exc:  # e.g. the topic was deleted meanwhile
            if not isolate:
                raise
            for it in its:
                _fail(it, exc)
            continue
        try:
            groups.append(_Group(topic, part, _encode(engine, rec, its), its))
        except (TypeError, ValueError, MqliteError):
            if not isolate:
                raise
            good = [it for it in its if _encodes_alone(engine, rec, it)]
            if good:
                groups.append(_Group(topic, part, _encode(engine, rec, good), good))
    return groups


def append_items(engine: Engine, txn: Any, groups: list[_Group], now: int,
                 results: list[tuple[SendItem, RecordMetadata]]) -> set[str]:
    """Append encoded groups inside ``txn``; collect (item, metadata); return topics written.

    Raises (aborting the whole transaction) on storage errors or when a topic
    vanished or shrank, so that no partial set of records is committed.
    """
    touched: set[str] = set()
    for g in groups:
        rec = engine.topic(txn, g.topic)
        if g.partition >= len(rec.pids):
            raise PartitionNotFoundError(
                f"partition {g.partition} out of range for {g.topic!r} (was it recreated?)")
        if g.items[0].dedup is not None:
            hit = engine.dedup_hit(txn, g.items[0].dedup, now)
            if hit is not None:
                results.append((g.items[0], RecordMetadata(g.topic, hit[1], hit[2], hit[3])))
                continue
        base, _ = engine.append_in(txn, rec, g.partition, g.batches)
        for i, it in enumerate(g.items):
            results.append((it, RecordMetadata(g.topic, g.partition, base + i, it.ts)))
        if g.items[0].dedup is not None:
            engine.dedup_store(txn, g.items[0].dedup, rec, g.partition, base, g.items[0].ts)
        touched.add(g.topic)
    return touched


# Adaptive gathering bounds: wait at most this share of the last commit's duration,
# never longer than _GATHER_MAX_SECONDS, for at most _GATHER_MAX_RECORDS records.
_GATHER_SHARE = 0.5
_GATHER_MAX_SECONDS = 0.005
_GATHER_MAX_RECORDS = 4096
# While the callers commit their own records (D49), the flusher is not woken per record:
# it wakes on its own every _CALLER_MODE_S seconds to commit what nobody waited for (a
# bound on a fire-and-forget record's delay, as Kafka's linger.ms 5), and after
# _CALLER_MODE_IDLE such wake-ups with nothing queued it goes back to being woken (D59).
_CALLER_MODE_S = 0.005
_CALLER_MODE_IDLE = 2


class Producer:
    """Thread-safe batching producer (see module docstring).

    Any number of threads may send through one producer.  ``broker.close()``
    flushes and closes it before anything else.

    Parameters
    ----------
    engine
        The engine of the broker to send to (``Broker.producer`` passes it).
    linger_ms
        Milliseconds (as Kafka's ``linger.ms``; ``0 <= linger_ms <= 60000``)
        the flusher waits after the first queued record for more.  Default 0:
        commit as soon as the flusher is free.  (While the threads waiting on
        their futures commit their own records, D49, the flusher is not woken
        per record: a record nobody waits for is then committed within about
        5 ms, D59.)  Batching happens anyway:
        records queued while a transaction commits (an fsync under
        ``"sync"``) all go into the next one.  A linger only helps when many
        records arrive in bursts faster than commits and nobody waits on
        their futures (docs/decisions.md D13).
    batch_bytes
        Commit at once when this many value/key bytes are queued (default 1 MiB).
    partitioner
        ``"murmur2"`` (default), ``"round_robin"``, ``"sticky"`` or a callable
        ``(key, value, partition_count) -> int``.
    max_queued
        Upper bound on queued records; ``send`` blocks (backpressure) above it.
    """

    def __init__(self, engine: Engine, *, linger_ms: float = 0.0, batch_bytes: int = 1 << 20,
                 partitioner: Any = None, max_queued: int = 1_000_000) -> None:
        require_milliseconds(linger_ms, "linger_ms", maximum=MAX_LINGER_MS)
        require_int(batch_bytes, "batch_bytes", minimum=1)
        require_int(max_queued, "max_queued", minimum=1)
        self._engine = engine
        engine.live_env()
        self._linger = linger_ms / 1000.0
        self._batch_bytes = batch_bytes
        # Built-in partitioners keep their round-robin / sticky state per topic (one
        # shared counter put every message of two alternating topics on one partition
        # each); a user callable is the user's and is shared as given.
        first = resolve_partitioner(partitioner, batch_bytes)  # validates the spec now
        self._partitioner_spec = partitioner
        self._shared_partitioner = first if callable(partitioner) else None
        self._partitioners: dict[str, Any] = {}
        self._max_queued = max_queued
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)  # flush() and backpressure waiters
        self._cv_waiters = 0  # threads in self._cv.wait(): notified only when there are (D78)
        self._wake = threading.Condition(self._lock)  # the flusher alone waits here
        self._queue: list[SendItem] = []
        self._queued_bytes = 0
        self._first_at = 0.0
        self._flush_now = False
        self._in_flight = 0
        self._closed = False
        self._pid = os.getpid()  # the flusher thread exists only in this process
        # adaptive gathering (docs/decisions.md D15): when k threads sent the last two
        # batches, the flusher waits for k queued records, at most half a commit's time
        self._gather_target = 0
        self._gather_for = 0.0
        self._last_senders: set[int] = set()
        # D59: the last commit was a waiting caller's (D49), so send() does not wake the
        # flusher; the flusher then waits with a timeout (_CALLER_MODE_S)
        self._caller_mode = False
        self._help = self._commit_here  # one bound method for every future
        self._thread = threading.Thread(target=self._run, name="mqlite-producer", daemon=True)
        self._thread.start()
        try:
            engine.adopt(self)  # broker.close() flushes and closes this producer first
        except BaseException:
            self.close()
            raise

    def send(self, topic: str, value: Any, key: Any = None,
             headers: HeadersArg = None, partition: int | None = None,
             timestamp_ms: int | None = None,
             dedup_id: str | bytes | None = None) -> SendFuture[RecordMetadata]:
        """Queue one record; the future resolves to its metadata after commit.

        Returns
        -------
        SendFuture
            ``result(timeout)`` blocks until the transaction holding the
            record committed (durable as the broker's ``durability`` says) and
            returns its :class:`~mqlite.RecordMetadata`, or raises the error
            the record hit; nothing of a failed record was stored.

        Raises
        ------
        TypeError, ValueError, InvalidTopicError, TopicNotFoundError, PartitionNotFoundError
            Argument errors that need no storage access raise here; encoding
            and storage errors arrive through the future.
        ClosedError
            The producer is closed.
        """
        if self._closed:
            raise ClosedError("this producer is closed")
        if self_pid() != self._pid:  # (the at-fork hook's pid: no system call per send)
            raise ClosedError(
                f"this producer was created in process {self._pid}; its flusher thread does "
                "not exist in a forked child: create a new producer in the child")
        if type(topic) is not str:
            validate_topic_name(topic)
        if isinstance(value, str) or isinstance(key, str):
            raise TypeError("value and key must be bytes-like, not str; encode them first")
        engine = self._engine
        rec = engine.topic_cached(topic)
        n = len(rec.pids)
        if partition is None:
            if n == 1:
                part = 0
            else:
                part = self._partitioner_for(topic)(key, value, n)
                if not isinstance(part, int) or not 0 <= part < n:
                    raise PartitionNotFoundError(
                        f"partitioner returned {part!r}; expected 0..{n - 1}")
        else:
            part = engine.choose_partition(rec, key, partition)
        ts = now_ms() if timestamp_ms is None else require_int(
            timestamp_ms, "timestamp_ms", minimum=0, maximum=MAX_I64)
        dkey = None if dedup_id is None else engine.dedup_key(topic, dedup_id)
        fut: SendFuture[RecordMetadata] = SendFuture(self._help)
        item = SendItem(topic, value, key,
                        None if headers is None else normalize_headers(headers), part, ts,
                        dkey, fut, get_ident(), timestamp_ms is None)
        with self._lock:  # the condition's lock, entered without a Python-level frame
            while len(self._queue) >= self._max_queued and not self._closed:
                self._cv_waiters += 1
                try:
                    self._cv.wait(0.1)
                finally:
                    self._cv_waiters -= 1
            if self._closed:
                raise ClosedError("this producer is closed")
            queue = self._queue
            queue.append(item)
            self._queued_bytes += item.size
            n_queued = len(queue)
            if n_queued == 1:
                self._first_at = time.monotonic()
                if not self._caller_mode:  # (else the flusher looks within _CALLER_MODE_S)
                    self._wake.notify()
            elif n_queued == self._gather_target or self._queued_bytes >= self._batch_bytes:
                self._wake.notify()
        return fut

    def flush(self, timeout: float | None = None) -> None:
        """Commit everything queued so far and wait for it.

        ``timeout`` is in seconds (``None``: no limit); :class:`mqlite.TimeoutError`
        when not done by then.
        """
        timeout = _timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            self._flush_now = True
            self._wake.notify()
            while self._queue or self._in_flight:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    from mqlite.errors import TimeoutError as MqTimeout

                    raise MqTimeout("flush() timed out with records still queued")
                self._cv_waiters += 1
                try:
                    self._cv.wait(remaining if remaining is not None else 0.5)
                finally:
                    self._cv_waiters -= 1

    def _commit_here(self) -> None:
        """A thread about to wait on a future commits what is queued itself (D49).

        Only when nothing is committing, no linger is asked for, and the queue
        is what the flusher would commit next without waiting: the last batches
        came from one thread (``_gather_target <= 1``: nobody else's record is
        about to join, D49), or the threads of the last batches have all sent
        again (the queue reached ``_gather_target``: the flusher's gather is
        over, D63).  Doing it here saves two thread hand-overs (the flusher's
        wake-up and this waiter's).  Otherwise the caller just waits.
        """
        if self._linger or self_pid() != self._pid:
            return
        with self._lock:  # (the condition's lock without its Python-level __enter__)
            target = self._gather_target
            if (self._in_flight or not self._queue or self._closed
                    or (target > 1 and len(self._queue) < target)):
                return
            items = self._take()
            if target > 1:
                # several threads: the flusher gathers for them whenever a batch falls
                # short, so it is woken per record (not caller mode's 5 ms looks, D59)
                self._caller_mode = False
            elif not self._caller_mode:
                # one thread commits its records now: stop waking the flusher per record,
                # and wake it this once so that it waits with a timeout from now on
                self._caller_mode = True
                self._wake.notify()
        self._commit_timed(items)

    def _take(self) -> list[SendItem]:
        """Take the queue to commit it (the lock held)."""
        items = self._queue
        self._queue = []
        self._queued_bytes = 0
        self._flush_now = False
        self._in_flight = len(items)
        if self._cv_waiters:
            self._cv.notify_all()  # room in the queue for a blocked send()
        return items

    def _commit_timed(self, items: list[SendItem]) -> None:
        """Commit ``items`` (taken by :meth:`_take`); then adapt the gathering."""
        started = time.monotonic()
        try:
            if len(items) != 1 or not self._commit_one(items[0]):
                self._commit(items)
        finally:
            took = time.monotonic() - started
            last = self._last_senders
            if len(items) == 1 and len(last) == 1 and items[0].sender in last:
                target = 1  # the one thread of the last batch again (no set to build)
            else:
                senders = {it.sender for it in items}
                # threads seen in the last two batches: N waiting senders that settled
                # into two alternating half-batches are gathered back into one
                target = len(senders | last)
                self._last_senders = senders
            with self._lock:
                self._in_flight = 0
                self._gather_target = min(target, _GATHER_MAX_RECORDS)
                self._gather_for = min(took * _GATHER_SHARE, _GATHER_MAX_SECONDS)
                if self._cv_waiters:
                    self._cv.notify_all()  # flush() waits for the end of this commit
                if self._queue or self._closed:
                    self._wake.notify()  # the flusher may wait for this commit's end

    def _run(self) -> None:
        cv, wake = self._cv, self._wake
        while True:
            with cv:
                # (a waiting sender may be committing: one commit at a time keeps
                # every sender's records in order)
                idle = 0
                while True:
                    if self._in_flight or (not self._queue and not self._closed):
                        if not self._caller_mode:
                            wake.wait()
                        elif (not wake.wait(_CALLER_MODE_S) and not self._queue
                              and not self._in_flight):
                            idle += 1
                            if idle >= _CALLER_MODE_IDLE:  # nobody sends: be woken again
                                self._caller_mode = False
                        continue
                    if (self._caller_mode and self._queue and not self._closed
                            and not self._flush_now and self._queued_bytes < self._batch_bytes):
                        # a caller about to wait commits its record itself: take only
                        # what nobody took within _CALLER_MODE_S
                        left = self._first_at + _CALLER_MODE_S - time.monotonic()
                        if left > 0:
                            wake.wait(left)
                            continue
                    break
                if not self._queue:  # closed, nothing in flight
                    return
                if len(self._queue) < self._gather_target:
                    # the threads of the last two batches are probably about to send
                    # again: one commit for all of them beats one for the first few
                    until = time.monotonic() + self._gather_for
                    while (len(self._queue) < self._gather_target and not self._flush_now
                           and not self._closed and self._queued_bytes < self._batch_bytes):
                        left = until - time.monotonic()
                        if left <= 0:
                            break
                        wake.wait(left)
                while (not self._flush_now and not self._closed
                       and self._queued_bytes < self._batch_bytes):
                    left = self._first_at + self._linger - time.monotonic()
                    if left <= 0:
                        break
                    wake.wait(left)
                if self._in_flight or not self._queue:
                    continue  # a waiting sender took the queue while this waited
                items = self._take()
                self._caller_mode = False  # nobody committed these: wake per record again
            self._commit_timed(items)

    def _commit(self, items: list[SendItem], retry: bool = True) -> None:
        """Commit ``items`` in one transaction (the ring's or this process's); resolve them.

        A failure fails every record of the transaction through its future.
        """
        engine = self._engine
        try:
            env = engine.live_env()
            groups = encode_items(engine, items)
            if not groups:
                return
            comb = env.combiner
            alone = -1
            if comb is not None:
                # an idle ring: commit alone, holding its lock (D43); else hand over
                alone = engine.ring_alone(comb)
                if alone < 0:
                    groups = self._commit_ring(comb, groups)
                    if not groups:
                        return
            ok = False
            try:
                self._commit_alone(env, items, groups, retry)
                ok = True
            finally:
                if alone >= 0:
                    engine.ring_alone_done(comb, alone, ok)
        except BaseException as exc:  # noqa: BLE001 - every record of the failed transaction fails
            for it in items:
                _fail(it, exc)

    def _commit_one(self, it: SendItem) -> bool:
        """A batch of one plain record goes the broker's single-send way (D49).

        ``Engine.send`` commits it through the compiled single-send path (or
        the commit ring when others are committing), a fifth of the Python
        batch path's instructions.  Its timestamp is then taken at the commit,
        microseconds after ``send()``.  ``False`` (nothing done) for a record
        with headers, a dedup id or a caller's timestamp.
        """
        if it.headers is not None or it.dedup is not None or not it.auto_ts:
            return False
        engine = self._engine
        try:
            part: int | None = it.partition
            if part == 0 and len(engine.topic_cached(it.topic).pids) == 1:
                part = None  # (the compiled path's common case)
            md = engine.send(it.topic, it.value, it.key, None, part)
        except BaseException as exc:  # noqa: BLE001 - the record failed; nothing was stored
            _fail(it, exc)
            return True
        it.future.set_result(md)
        return True

    def _commit_alone(self, env: Any, items: list[SendItem], groups: list[_Group],
                      retry: bool) -> None:
        """Commit ``groups`` in one write transaction of this process; resolve the futures.

        Raises what the transaction raised (the caller fails the records with it).
        """
        engine = self._engine
        results: list[tuple[SendItem, RecordMetadata]] = []
        txn = env.write_txn()
        try:
            total = sum(len(b) for g in groups for b in g.batches)
            engine.check_space(env, txn, total)
            touched = append_items(engine, txn, groups, now_ms(), results)
        except BaseException as exc:
            err = env.abort_with(txn, exc, "producer commit")
            if retry and isinstance(err, TopicNotFoundError):
                # Another process deleted a topic after its records were encoded
                # from the cache: encode again from fresh metadata, which fails
                # only that topic's records, not the whole batch.
                env.topic_cache.clear()
                again = encode_items(engine, items)
                if again:
                    self._commit_alone(env, items, again, retry=False)
                return
            if err is exc:
                raise
            raise err from exc
        env.commit(txn)
        env.notify_topics(touched)
        for it, md in results:
            it.future.set_result(md)  # a no-op on a future already resolved or cancelled

    def _commit_ring(self, comb: Any, groups: list[_Group]) -> list[_Group]:
        """Hand the encoded groups to the cross-process commit ring (one slot each).

        Resolves the futures of every group the ring committed or refused with
        an error; returns the groups left to commit alone (all of them when the
        ring could not take them, those whose topic changed meanwhile).
        """
        engine = self._engine
        payloads = []
        for g in groups:
            rec = engine.topic_cached(g.topic)
            first = g.items[0]
            payloads.append(engine.ring_payload(
                g.topic, g.partition, first.ts, rec.config["max_message_bytes"], g.batches,
                first.dedup))
        res = engine.ring_submit(comb, payloads)
        if res is None:
            return groups
        left = []
        for g, (st, part, base, ts) in zip(groups, res):
            if st == RING_OK:
                if g.items[0].dedup is not None:
                    g.items[0].future.set_result(RecordMetadata(g.topic, part, base, ts))
                    continue
                for i, it in enumerate(g.items):
                    it.future.set_result(RecordMetadata(g.topic, part, base + i, it.ts))
                continue
            try:
                engine.raise_ring_status(st, g.topic)
            except MqliteError as exc:
                for it in g.items:
                    _fail(it, exc)
                continue
            left.append(g)  # retry alone: the topic changed under the cache
        return left

    _CLOSE_RANK = 0  # broker.close() closes producers before consumers and queues

    def _partitioner_for(self, topic: str) -> Any:
        p = self._partitioners.get(topic)
        if p is None:
            p = self._shared_partitioner or resolve_partitioner(self._partitioner_spec,
                                                                self._batch_bytes)
            p = self._partitioners.setdefault(topic, p)
        return p

    def close(self, timeout: float | None = None) -> None:
        """Flush queued records and stop the flusher.  Idempotent; any thread.

        Every record sent before ``close()`` is committed (or failed through its
        future) when this returns, unless ``timeout`` passed first
        (:class:`mqlite.TimeoutError`; the flusher then finishes in the background).
        """
        if self._closed:
            return
        timeout = _timeout(timeout)
        if os.getpid() != self._pid:
            # A forked child: records queued at fork time are the parent's to commit.
            self._closed = True
            return
        if threading.current_thread() is self._thread:
            # From a future's callback: the flusher cannot wait for itself; it
            # commits what is queued and then stops.
            with self._cv:
                self._closed = True
                self._wake.notify()
            return
        try:
            self.flush(timeout)
        finally:
            with self._cv:
                self._closed = True
                self._wake.notify()
                self._cv.notify_all()
            self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _timeout(timeout: object) -> float | None:
    """A flush/close ``timeout``: ``None`` or 0 to 10 years of seconds (an ``inf`` or
    ``2**64`` would overflow the thread wait)."""
    return require_seconds(timeout, "timeout", maximum=MAX_DELAY_S, allow_zero=True,
                           allow_none=True)
