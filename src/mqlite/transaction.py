"""Atomic groups of sends, offset commits and acks: ``with broker.transaction() as tx``.

Operations are collected in memory while the ``with`` block runs and are
applied in **one** LMDB write transaction when it exits without an
exception (the write lock is never held across user code).  Either all of
them take effect or none does:

* consume -> process -> produce is exactly-once for local effects: the
  produced messages and the consumer's committed offsets (or the queue acks)
  commit together, so a crash cannot leave one without the other;
* ``tx.claim(event_id)`` claims an event id (with an expiry) in the same
  transaction, **exclusively**: the claim is checked inside the commit's write
  transaction, and LMDB has one writer at a time, so of two transactions
  claiming the same id only one commits; the other raises
  :class:`~mqlite.AlreadyProcessedError` and applies nothing.
  ``tx.record_processed`` is the same operation under its older name.
  ``broker.is_processed`` / ``tx.is_processed`` are fast, non-exclusive hints;
  ``broker.claim`` claims an id on its own, for effects outside mqlite
  (docs/exactly-once.md says what each pattern guarantees).

``tx.send`` returns a :class:`concurrent.futures.Future` resolved with the
record's metadata after the commit.  If the commit fails (a fenced offset
commit, a stale ack, an id already claimed, a full store), the ``with``
statement raises and nothing was applied.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, Self

from mqlite._headers import HeadersArg, normalize_headers
from mqlite._storage import processed as _processed
from mqlite.config import MAX_I64, require_int, validate_topic_name
from mqlite.errors import AlreadyProcessedError, ClosedError
from mqlite.types import RecordMetadata, TopicPartition

if TYPE_CHECKING:
    from mqlite._engine import Engine

__all__ = ["DEFAULT_CLAIM_TTL", "MAX_CLAIM_TTL", "Transaction", "claim", "is_processed"]

#: Default claim lifetime, in seconds (7 days).
DEFAULT_CLAIM_TTL = 7 * 24 * 3600.0
#: Shortest claim lifetime, in seconds (claims expire with millisecond resolution).
MIN_CLAIM_TTL = 0.001
#: Longest claim lifetime, in seconds (366 days): a larger ``ttl`` is most likely
#: milliseconds passed where seconds are expected.
MAX_CLAIM_TTL = 366 * 24 * 3600.0
#: Expired claims forgotten per claim made, so the store stays bounded.
_SWEEP_PER_CLAIM = 16


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _claim_key(event_id: object, scope: object) -> bytes:
    """Validate an event id and scope; return the storage key of their claim."""
    if isinstance(event_id, str):
        raw = event_id.encode()
    elif isinstance(event_id, (bytes, bytearray, memoryview)):
        raw = bytes(event_id)
    else:
        raise TypeError(f"event_id must be str or bytes, not {type(event_id).__name__}")
    if not 1 <= len(raw) <= _processed.MAX_ID_BYTES:
        raise ValueError(f"event_id must be 1-{_processed.MAX_ID_BYTES} bytes "
                         f"(UTF-8 for str), got {len(raw)}")
    if not isinstance(scope, str):
        raise TypeError(f"scope must be str, not {type(scope).__name__}")
    rscope = scope.encode()
    if not 1 <= len(rscope) <= _processed.MAX_SCOPE_BYTES or b"\x00" in rscope:
        raise ValueError(f"scope must be 1-{_processed.MAX_SCOPE_BYTES} bytes of UTF-8 "
                         f"without NUL, got {scope!r}")
    return _processed.claim_key(rscope, raw)


def _ttl_ms(ttl: object) -> int:
    """Validate a claim ``ttl`` in seconds; return it in whole milliseconds."""
    if not isinstance(ttl, (int, float)) or isinstance(ttl, bool):
        raise TypeError(f"ttl must be a number of seconds, not {type(ttl).__name__}")
    if math.isnan(ttl) or not MIN_CLAIM_TTL <= ttl <= MAX_CLAIM_TTL:
        hint = "; did you pass milliseconds?" if ttl > MAX_CLAIM_TTL else ""
        raise ValueError(f"ttl is in seconds and must be {MIN_CLAIM_TTL} to {MAX_CLAIM_TTL:.0f} "
                         f"(366 days), got {ttl!r}{hint}")
    return max(1, round(ttl * 1000))


def _already(event_id: str | bytes, scope: str,
             hit: _processed.Claim | None) -> AlreadyProcessedError:
    if hit is None:
        return AlreadyProcessedError(event_id, scope)
    return AlreadyProcessedError(event_id, scope, expires_ms=hit.expires_ms,
                                 claimed_ms=hit.claimed_ms if hit.claimed_ms >= 0 else None)


def is_processed(engine: Engine, event_id: str | bytes, scope: str = "default") -> bool:
    """Whether ``event_id`` is claimed (and not expired) in ``scope``: a hint, not a lock.

    See :meth:`mqlite.Broker.is_processed`.
    """
    key = _claim_key(event_id, scope)
    return _processed.read_live(engine.live_env(), key, _wall_ms()) is not None


def claim(engine: Engine, event_id: str | bytes, scope: str = "default", *,
          ttl: float = DEFAULT_CLAIM_TTL) -> bool:
    """Claim ``event_id`` in ``scope`` in a write transaction of its own.

    See :meth:`mqlite.Broker.claim`.
    """
    key = _claim_key(event_id, scope)
    ttl_ms = _ttl_ms(ttl)
    env = engine.live_env()
    with engine.write() as txn:
        now = _wall_ms()
        hit = _processed.lookup(txn, env.dbs, key, now)
        if hit is None:
            engine.admit_growth(txn)
            _processed.put(txn, env.dbs, key, now, now + ttl_ms)
        _processed.sweep(txn, env.dbs, now, _SWEEP_PER_CLAIM)
    return hit is None


class _PendingClaim(NamedTuple):
    key: bytes
    event_id: str | bytes
    scope: str
    ttl_ms: int


class Transaction:
    """Collects operations and applies them atomically on exit (see module docstring).

    Not thread-safe: one thread builds and commits a transaction (the ``with``
    block); other threads use transactions of their own.
    """

    def __init__(self, engine: Engine) -> None:
        engine.live_env()
        self._engine = engine
        self._items: list[Any] = []
        self._publishes: list[tuple[Any, ...]] = []
        self._offsets: list[tuple[Any, dict[TopicPartition, int]]] = []
        self._acks: list[tuple[Any, list[Any]]] = []
        self._claims: list[_PendingClaim] = []
        self._releases: list[bytes] = []
        self._state = "open"

    # -- collecting ------------------------------------------------------------------------
    def _check(self) -> None:
        if self._state != "open":
            raise ClosedError(f"this transaction is {self._state}")

    def send(self, topic: str, value: Any, key: Any = None,
             headers: HeadersArg = None, partition: int | None = None,
             timestamp_ms: int | None = None,
             dedup_id: str | bytes | None = None) -> Future[RecordMetadata]:
        """Queue a send; the future resolves to its metadata after commit."""
        from mqlite._engine import now_ms
        from mqlite.producer import SendItem

        self._check()
        validate_topic_name(topic)
        if isinstance(value, str) or isinstance(key, str):
            raise TypeError("value and key must be bytes-like, not str; encode them first")
        rec = self._engine.topic_fresh(topic)
        part = self._engine.choose_partition(rec, key, partition)
        ts = now_ms() if timestamp_ms is None else require_int(
            timestamp_ms, "timestamp_ms", minimum=0, maximum=MAX_I64)
        fut: Future[RecordMetadata] = Future()
        dkey = None if dedup_id is None else self._engine.dedup_key(topic, dedup_id)
        self._items.append(SendItem(topic, value, key, normalize_headers(headers), part, ts,
                                    dkey, fut))
        return fut

    def publish(self, exchange: str, routing_key: str, value: Any, *, key: Any = None,
                headers: HeadersArg = None,
                mandatory: bool = False) -> Future[list[RecordMetadata]]:
        """Queue an exchange publish; the future resolves to the copies' metadata."""
        from mqlite.routing import _check_routing_key

        self._check()
        validate_topic_name(exchange, "exchange")
        _check_routing_key(routing_key)
        fut: Future[list[RecordMetadata]] = Future()
        self._publishes.append((exchange, routing_key, value, key, normalize_headers(headers),
                                mandatory, fut))
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
            todo = {TopicPartition(*tp): require_int(o, "offset", minimum=0, maximum=MAX_I64)
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

    def claim(self, event_id: str | bytes, scope: str = "default", *,
              ttl: float = DEFAULT_CLAIM_TTL) -> None:
        """Claim ``event_id`` in ``scope`` for ``ttl`` seconds, exclusively, with the transaction.

        The claim is checked again inside the commit's write transaction: if
        another transaction claimed the same id first (and its claim has not
        expired), this transaction fails as a whole and none of its sends,
        publishes, offset commits or acks is applied.  Of any number of
        transactions claiming one id, at most one commits until the claim
        expires.  Claims of different scopes are independent.

        Parameters
        ----------
        event_id
            1-256 bytes (``str`` is encoded UTF-8): the business key of the
            event, e.g. an order id or the message's own id.
        scope
            Namespace of the id (1-100 bytes of UTF-8, no NUL), e.g. one per
            handler, so two handlers can each process the same event once.
        ttl
            Seconds the claim is kept (0.001 to 366 days; default 7 days).
            After it expires the id can be claimed again: choose it longer
            than the time a duplicate can still arrive (input retention,
            redelivery and retry horizon).

        Raises
        ------
        AlreadyProcessedError
            Here when the id is already claimed by a committed transaction or
            earlier in this one (the transaction stays usable: skip the
            event); on commit when another transaction claimed it meanwhile.
        TypeError, ValueError
            Bad ``event_id``, ``scope`` or ``ttl``.
        ClosedError
            The transaction was already committed or aborted.
        """
        self._check()
        key = _claim_key(event_id, scope)
        ttl_ms = _ttl_ms(ttl)
        if any(c.key == key for c in self._claims):
            raise AlreadyProcessedError(event_id, scope)
        if key not in self._releases:
            # A hint that fails fast; the check that makes claims exclusive is in commit().
            hit = _processed.read_live(self._engine.live_env(), key, _wall_ms())
            if hit is not None:
                raise _already(event_id, scope, hit)
        self._claims.append(_PendingClaim(key, event_id, scope, ttl_ms))

    def record_processed(self, event_id: str | bytes, scope: str = "default",
                         ttl: float = DEFAULT_CLAIM_TTL) -> None:
        """Record ``event_id`` as processed: the same exclusive operation as :meth:`claim`.

        The older name, kept so existing code keeps working; it is exclusive
        too, so the "``if not tx.is_processed(id)``, process,
        ``tx.record_processed(id)``" pattern can no longer commit twice: the
        loser raises :class:`~mqlite.AlreadyProcessedError`.
        """
        self.claim(event_id, scope, ttl=ttl)

    def release(self, event_id: str | bytes, scope: str = "default") -> None:
        """Forget the claim of ``event_id`` in ``scope`` with the transaction.

        For an external effect that failed before it happened, so the event
        can be retried; releasing an id that is not claimed does nothing.

        Raises
        ------
        TypeError, ValueError
            Bad ``event_id`` or ``scope``.
        ClosedError
            The transaction was already committed or aborted.
        """
        self._check()
        self._releases.append(_claim_key(event_id, scope))

    def is_processed(self, event_id: str | bytes, scope: str = "default") -> bool:
        """Whether ``event_id`` is claimed: committed before, or by this transaction.

        A fast, **non-exclusive** hint (another process may claim the id right
        after this returns ``False``); use :meth:`claim` for exclusivity.
        """
        key = _claim_key(event_id, scope)
        if any(c.key == key for c in self._claims):
            return True
        if key in self._releases:
            return False
        return is_processed(self._engine, event_id, scope)

    # -- applying --------------------------------------------------------------------------
    def commit(self) -> None:
        """Apply everything in one LMDB transaction (all or nothing)."""
        from mqlite._engine import now_ms
        from mqlite.producer import append_items, encode_items
        from mqlite.routing import publish_in

        self._check()
        engine = self._engine
        env = engine.live_env()
        groups = encode_items(engine, self._items, isolate=False)
        results: list[tuple[Any, RecordMetadata]] = []
        pub_results: list[tuple[Future, list[RecordMetadata]]] = []
        touched: set[str] = set()
        now = now_ms()
        try:
            with engine.write() as txn:
                if self._claims or self._releases:
                    self._apply_claims(txn, env.dbs)
                if groups or self._publishes:
                    total = sum(len(b) for g in groups for b in g.batches)
                    engine.check_space(env, txn, total)
                touched |= append_items(engine, txn, groups, now, results)
                for ex, rk, value, key, headers, mandatory, fut in self._publishes:
                    mds, t = publish_in(txn, engine, ex, rk, value, key=key, headers=headers,
                                        ts=now, mandatory=mandatory)
                    pub_results.append((fut, mds))
                    touched |= t
                for group, todo in self._offsets:
                    group.commit_in(txn, todo)
                for queue, ds in self._acks:
                    queue.ack_in(txn, ds)
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

    def _apply_claims(self, txn: Any, dbs: dict[str, Any]) -> None:
        """Releases, then claims, checked in the commit's write transaction (exclusive)."""
        now = _wall_ms()
        for key in self._releases:
            _processed.delete(txn, dbs, key)
        for c in self._claims:
            hit = _processed.lookup(txn, dbs, c.key, now)
            if hit is not None:
                raise _already(c.event_id, c.scope, hit)
            _processed.put(txn, dbs, c.key, now, now + c.ttl_ms)
        _processed.sweep(txn, dbs, now, _SWEEP_PER_CLAIM * max(1, len(self._claims)))

    def abort(self) -> None:
        """Discard everything collected.  Idempotent."""
        if self._state == "open":
            self._state = "aborted"
            for it in self._items:
                it.future.cancel()
            for p in self._publishes:
                p[-1].cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if et is not None:
            self.abort()
            return
        if self._state == "open":
            self.commit()
