"""Atomic groups of sends, offset commits and acks: ``with broker.transaction() as tx``.

Operations are collected in memory while the ``with`` block runs and are
applied in **one** LMDB write transaction when it exits without an
exception (the write lock is never held across user code).  Either all of
them take effect or none does:

* consume -> process -> produce is exactly-once for local effects: the
  produced messages and the consumer's committed offsets (or the queue acks)
  commit together, so a crash cannot leave one without the other;
* ``tx.record_processed(event_id)`` remembers an external event id (with an
  expiry) in the same transaction, and ``broker.is_processed`` /
  ``tx.is_processed`` check it, for effects outside mqlite.

``tx.send`` returns a :class:`concurrent.futures.Future` resolved with the
record's metadata after the commit.  If the commit fails (a fenced offset
commit, a stale ack, a full store), the ``with`` statement raises and
nothing was applied.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from mqlite.config import require_int, require_positive_number, validate_topic_name
from mqlite.errors import ClosedError
from mqlite.types import RecordMetadata, TopicPartition

if TYPE_CHECKING:
    from mqlite.broker import Broker

__all__ = ["Transaction", "is_processed"]

_DEFAULT_TTL = 7 * 24 * 3600.0


def _processed_key(event_id: str | bytes, scope: str) -> bytes:
    if isinstance(event_id, str):
        raw = event_id.encode()
    elif isinstance(event_id, (bytes, bytearray)):
        raw = bytes(event_id)
    else:
        raise TypeError(f"event_id must be str or bytes, not {type(event_id).__name__}")
    if not raw or len(raw) > 256:
        raise ValueError("event_id must be 1-256 bytes")
    if not isinstance(scope, str) or not scope or "\x00" in scope or len(scope) > 100:
        raise ValueError("scope must be a non-empty str (max 100 chars, no NUL)")
    return b"p" + scope.encode() + b"\x00" + raw


def is_processed(broker: Broker, event_id: str | bytes, scope: str = "default") -> bool:
    """Whether ``event_id`` was recorded (and has not expired) in ``scope``."""
    key = _processed_key(event_id, scope)
    env = broker._live_env()
    with env.read_txn() as txn:
        raw = txn.get(key, db=env.dbs["dedup"])
    return raw is not None and int.from_bytes(bytes(raw)[:8], "big") >= time.time_ns() // 10**6


class Transaction:
    """Collects operations and applies them atomically on exit (see module docstring).

    Not thread-safe: one thread builds and commits a transaction (the ``with``
    block); other threads use transactions of their own.
    """

    def __init__(self, broker: Broker) -> None:
        broker._live_env()
        self._broker = broker
        self._items: list[Any] = []
        self._publishes: list[tuple[Any, ...]] = []
        self._offsets: list[tuple[Any, dict[TopicPartition, int]]] = []
        self._acks: list[tuple[Any, list[Any]]] = []
        self._processed: list[tuple[bytes, int]] = []
        self._publish_futures: list[Future] = []
        self._state = "open"

    # -- collecting ------------------------------------------------------------------------
    def _check(self) -> None:
        if self._state != "open":
            raise ClosedError(f"this transaction is {self._state}")

    def send(self, topic: str, value: Any, key: Any = None,
             headers: Sequence[tuple[str, Any]] | None = None, partition: int | None = None,
             timestamp_ms: int | None = None,
             dedup_id: str | bytes | None = None) -> Future[RecordMetadata]:
        """Queue a send; the future resolves to its metadata after commit."""
        from mqlite.broker import _dedup_key, now_ms
        from mqlite.producer import SendItem

        self._check()
        validate_topic_name(topic)
        if isinstance(value, str) or isinstance(key, str):
            raise TypeError("value and key must be bytes-like, not str; encode them first")
        rec = self._broker._topic_cached_fresh(topic)
        part = self._broker._choose_partition(rec, key, partition)
        ts = now_ms() if timestamp_ms is None else require_int(
            timestamp_ms, "timestamp_ms", minimum=0)
        fut: Future[RecordMetadata] = Future()
        dkey = None if dedup_id is None else _dedup_key(topic, dedup_id)
        self._items.append(SendItem(topic, value, key, headers, part, ts, dkey, fut))
        return fut

    def publish(self, exchange: str, routing_key: str, value: Any, *, key: Any = None,
                headers: Sequence[tuple[str, Any]] | None = None,
                mandatory: bool = False) -> Future[list[RecordMetadata]]:
        """Queue an exchange publish; the future resolves to the copies' metadata."""
        from mqlite.routing import _check_routing_key

        self._check()
        validate_topic_name(exchange, "exchange")
        _check_routing_key(routing_key)
        fut: Future[list[RecordMetadata]] = Future()
        self._publishes.append((exchange, routing_key, value, key, headers, mandatory, fut))
        return fut

    def commit_offsets(self, consumer: Any, offsets: Any = None) -> None:
        """Commit a group consumer's offsets with the transaction (fenced).

        ``offsets``: ``None`` (the consumer's current positions), a
        :class:`~mqlite.Message` (up to and including it) or
        ``{TopicPartition: next_offset}``.
        """
        from mqlite._core import Message

        self._check()
        group = getattr(consumer, "_group", None)
        if group is None:
            raise ValueError("commit_offsets needs a consumer created with group=")
        if offsets is None:
            pos = consumer._positions
            todo = {tp: pos[tp] for tp in group.owned if pos.get(tp, -1) >= 0}
        elif isinstance(offsets, Message):
            todo = {TopicPartition(offsets.topic, offsets.partition): offsets.offset + 1}
        elif isinstance(offsets, dict):
            todo = {TopicPartition(*tp): require_int(o, "offset", minimum=0)
                    for tp, o in offsets.items()}
        else:
            raise TypeError("offsets must be None, a Message or {TopicPartition: offset}")
        self._offsets.append((group, todo))

    def ack(self, deliveries: Any) -> None:
        """Acknowledge queue deliveries with the transaction (stale ones abort it)."""
        from mqlite.queue import Delivery

        self._check()
        ds = [deliveries] if isinstance(deliveries, Delivery) else list(deliveries)
        for d in ds:
            if not isinstance(d, Delivery):
                raise TypeError(f"expected Delivery objects, not {type(d).__name__}")
        by_queue: dict[int, tuple[Any, list[Any]]] = {}
        for d in ds:
            by_queue.setdefault(id(d._queue), (d._queue, []))[1].append(d)
        self._acks.extend(by_queue.values())

    def record_processed(self, event_id: str | bytes, scope: str = "default",
                         ttl: float = _DEFAULT_TTL) -> None:
        """Remember ``event_id`` as processed (for ``ttl`` seconds) with the transaction."""
        self._check()
        require_positive_number(ttl, "ttl", allow_zero=False)
        key = _processed_key(event_id, scope)
        self._processed.append((key, time.time_ns() // 10**6 + int(ttl * 1000)))

    def is_processed(self, event_id: str | bytes, scope: str = "default") -> bool:
        """Whether ``event_id`` is recorded (committed before, or queued in this transaction)."""
        key = _processed_key(event_id, scope)
        if any(k == key for k, _ in self._processed):
            return True
        return is_processed(self._broker, event_id, scope)

    # -- applying --------------------------------------------------------------------------
    def commit(self) -> None:
        """Apply everything in one LMDB transaction (all or nothing)."""
        from mqlite.broker import now_ms
        from mqlite.producer import append_items, encode_items
        from mqlite.routing import publish_in

        self._check()
        broker = self._broker
        env = broker._live_env()
        groups = encode_items(broker, self._items, isolate=False)
        results: list[tuple[Any, RecordMetadata]] = []
        pub_results: list[tuple[Future, list[RecordMetadata]]] = []
        touched: set[str] = set()
        now = now_ms()
        try:
            with broker._write() as txn:
                if groups or self._publishes:
                    total = sum(len(b) for g in groups for b in g.batches)
                    broker._maybe_check_space(env, txn, total)
                touched |= append_items(broker, txn, groups, now, results)
                for ex, rk, value, key, headers, mandatory, fut in self._publishes:
                    mds, t = publish_in(txn, broker, ex, rk, value, key=key, headers=headers,
                                        ts=now, mandatory=mandatory)
                    pub_results.append((fut, mds))
                    touched |= t
                for group, todo in self._offsets:
                    group.commit_in(txn, todo)
                for queue, ds in self._acks:
                    queue.ack_in(txn, ds)
                for key, expires in self._processed:
                    txn.put(key, expires.to_bytes(8, "big"), db=env.dbs["dedup"])
        except BaseException as exc:
            self._state = "aborted"
            for it in self._items:
                if not it.future.done():
                    it.future.set_exception(exc)
            for p in self._publishes:
                if not p[-1].done():
                    p[-1].set_exception(exc)
            raise
        self._state = "committed"
        if touched:
            env.notify_topics(touched)
        for it, md in results:
            it.future.set_result(md)
        for fut, mds in pub_results:
            fut.set_result(mds)
        for group, todo in self._offsets:
            group._committed.update(todo)

    def abort(self) -> None:
        """Discard everything collected.  Idempotent."""
        if self._state == "open":
            self._state = "aborted"
            for it in self._items:
                it.future.cancel()
            for p in self._publishes:
                p[-1].cancel()

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, et: Any, exc: Any, tb: Any) -> None:
        if et is not None:
            self.abort()
            return
        if self._state == "open":
            self.commit()
