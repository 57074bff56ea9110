"""The engine beneath every feature: catalog, transactions, and the one append path.

Contract
--------
* An :class:`Engine` is one handle on one broker directory's environment
  (:class:`mqlite._storage.Env`, shared by every handle of the process).  The
  public :class:`mqlite.Broker` is a thin facade over it; producers,
  consumers, groups, queues, routing, the scheduler and transactions are
  built on it and never on the facade.
* :meth:`Engine.read` and :meth:`Engine.write` are the only ways into a
  transaction.  Both convert every ``lmdb`` error (raised at begin, inside
  the block, or at commit) into an :class:`mqlite.MqliteError`; a write
  commits when the block ends without an exception, aborts otherwise, then
  bumps the wake-up words of the topics it appended to and runs the
  callbacks registered with :meth:`Engine.after_commit`.
* Every append goes through :meth:`Engine.append` (or its inlined one-record
  twin in :meth:`Engine.send`): encoding is done by the caller with
  :meth:`Engine.encode`, then partition state, space check, rate-limited
  retention, dedup record and the topic's wake-up happen here.
* The topic cache is validated by the catalog version on every read and
  skipped inside a write transaction that follows this process's own last
  commit (``env.fresh_txn``).  That is sound because every other write
  transaction validates it when it begins (``Env.write_txn``), a snapshot
  older than the cache never refills it, and a catalog change moves the
  cache to its new version inside its own transaction (issue 10, defect 13).
* Thread-safe: several threads may share an engine; LMDB serialises writers.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from mqlite import _core
from mqlite._headers import HeadersArg, normalize_headers, normalize_headers_list
from mqlite._storage import dedup as _dedup
from mqlite._storage import log as _log
from mqlite._storage import queues as _queues
from mqlite._storage import tickets as _tickets
from mqlite._storage.env import (
    NOTIFY_HASHED,
    NOTIFY_SLOTS,
    QUEUE_VERSION_SLOT,
    QUEUE_WORD_FIRST,
    SPACE_GROW,
    SPACE_MOVE,
    SPACE_SEND,
    Env,
    MapExhaustedError,
    lmdb_error,
)
from mqlite.config import (
    DEFAULT_DEDUP_WINDOW_MS,
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_I64,
    TopicConfig,
    require_int,
    validate_topic_name,
)
from mqlite.errors import (
    ClosedError,
    CorruptRecordError,
    MqliteError,
    PartitionNotFoundError,
    StorageError,
    StorageFullError,
    TopicNotFoundError,
)
from mqlite.types import (
    BatchMetadata,
    PartitionInfo,
    PartitionRange,
    RecordMetadata,
    TopicDescription,
)

__all__ = [
    "DRAIN_RETRY_S",
    "RING_KIND_APPEND",
    "RING_OK",
    "RING_RETRY",
    "Engine",
    "TopicRecord",
    "check_values_arg",
    "draining",
    "now_ms",
    "on_consumed_floor",
    "on_ring_kind",
    "on_topic_delete",
    "retry_draining",
]

TopicRecord = _log.TopicRecord
_tuple_new = tuple.__new__  # NamedTuple construction without the keyword-argument wrapper
_RETENTION_INTERVAL_S = 1.0
_UNCAPPED = 1 << 30  # max_message_bytes for re-appends of messages accepted once

# Commit combining (csrc/combine.h, docs/decisions.md D27).  A slot's payload starts
# with its kind (u8).  Kind 0 is one append to one partition: topic length, dedup key length (-1: none), partition,
# timestamp (of the first record, stored with a dedup id), the max_message_bytes it was
# encoded under and the batch count; then topic, dedup key, each batch's length (u32)
# and the record batches.
_SLOT_HEAD = struct.Struct(">BHhiqIH")
# Result status of a combined send (r0, r1, r2 = partition, offset, timestamp when OK).
_ST_OK, _ST_NO_TOPIC, _ST_FULL, _ST_RETRY = 0, 1, 2, 3
RING_OK = _ST_OK  # the status of a ring result that succeeded (see Engine.ring_submit)
RING_RETRY = _ST_RETRY  # the committer could not apply it: the sender does it alone
#: Slots one committer takes into its transaction at most.
_COMBINE_MAX = 64
#: Seconds a sender sleeps on its slot before trying the combining lock again (a
#: committer that died, or a hand-off wake-up lost to a race, costs at most this).
_COMBINE_WAIT_S = 0.002
#: Microseconds a committer waits at most for the senders the last commits had
#: (and never more than half a commit's duration): csrc/combine.h, D35.  On by
#: default since D46 (the torture stall that kept it off was D42's lost wake-up, and
#: only sends are waited for); ``MQLITE_GATHER_US=0`` turns it off.
_GATHER_MAX_US = 1000


#: A leader leaving FILLED slots behind wakes the owners of this many of the oldest
#: (each of which tries to lead); the others try when their wait times out.  Waking
#: every owner made 16 sender processes spend most of their CPU waking up (D43).
_HAND_OVER = 2
#: An offset commit or ack follows a sender's commit only when a send was filled into
#: the ring this recently (nanoseconds), and waits for one at most this long (D43).
FOLLOW_WINDOW_NS = 5_000_000
FOLLOW_MAX_NS = 5_000_000
_FOLLOW = os.environ.get("MQLITE_FOLLOW", "1") != "0"


@functools.cache
def _gather_us() -> int:
    """``MQLITE_GATHER_US`` (microseconds, 0-100000; 0 never gathers), else 1000."""
    raw = os.environ.get("MQLITE_GATHER_US", "")
    if not raw:
        return _GATHER_MAX_US
    try:
        us = int(raw)
    except ValueError:
        raise ValueError(f"MQLITE_GATHER_US must be microseconds (0-100000), not {raw!r}") \
            from None
    if not 0 <= us <= 100_000:
        raise ValueError(f"MQLITE_GATHER_US must be microseconds (0-100000), not {raw!r}")
    return us

# Called inside the delete transaction of a topic, to drop feature state kept
# for it (offsets, pending entries, bindings).
_TOPIC_DELETE_HOOKS: list[Callable[[Any, dict[str, Any], TopicRecord], None]] = []
# Lowest offset of a partition some queue group still needs (``cleanup="consumed"``).
_CONSUMED_FLOOR_HOOKS: list[Callable[[Any, dict[str, Any], TopicRecord, int], int | None]] = []


def on_topic_delete(hook: Callable[[Any, dict[str, Any], TopicRecord], None]) -> None:
    """Register ``hook(txn, dbs, topic_record)``, run inside every topic deletion (once)."""
    if hook not in _TOPIC_DELETE_HOOKS:
        _TOPIC_DELETE_HOOKS.append(hook)


def on_consumed_floor(
        hook: Callable[[Any, dict[str, Any], TopicRecord, int], int | None]) -> None:
    """Register ``hook(txn, dbs, rec, pid) -> offset | None`` for ``cleanup="consumed"``."""
    if hook not in _CONSUMED_FLOOR_HOOKS:
        _CONSUMED_FLOOR_HOOKS.append(hook)


# Handlers of commit-ring slot kinds other than appends (kind 0), registered by the
# features that hand operations to the ring (offset commits: mqlite.groups).  A
# handler applies one slot's payload inside the committer's transaction and returns
# its result tuple; it must write nothing when it returns a status other than OK.
_RING_HANDLERS: dict[int, Callable[[Any, Any, bytes], tuple[int, int, int, int]]] = {}
RING_KIND_APPEND = 0
_KIND_APPEND_BYTE = bytes((RING_KIND_APPEND,))


def on_ring_kind(kind: int,
                 handler: Callable[[Any, Any, bytes], tuple[int, int, int, int]]) -> None:
    """Register ``handler(engine, txn, payload) -> (status, r0, r1, r2)`` for slots of
    ``kind`` (1-255) of the commit ring."""
    if not 0 < kind < 256:
        raise ValueError("ring slot kinds are 1-255 (0 is an append)")
    _RING_HANDLERS[kind] = handler


def now_ms() -> int:
    """Wall-clock UNIX time in milliseconds."""
    return time.time_ns() // 1_000_000


def check_values_arg(values: object) -> Sequence[Any]:
    """``values`` as a sequence of messages; a single bytes-like or str is a TypeError."""
    if isinstance(values, (bytes, bytearray, memoryview, str)):
        raise TypeError("values must be a sequence of bytes-like objects, not a single "
                        f"{type(values).__name__}; use send() for one message")
    if not isinstance(values, Sequence):
        values = list(values)  # type: ignore[call-overload]
    return values  # type: ignore[return-value]



_P = ParamSpec("_P")
_T = TypeVar("_T")
#: How long a draining write keeps retrying while readers pin freed pages (seconds).
DRAIN_RETRY_S = 5.0


def retry_draining(fn: Callable[[], _T]) -> _T:
    """Run ``fn`` (a draining write: ack, nack, commit, leave, close, delete) to completion.

    The space tiers (D25) keep the last 5-10% of the map for draining writes, but
    a reader pinning freed pages (a thread preempted inside its read transaction)
    can make a run of them take fresh pages until LMDB's map is exhausted.  That
    passes as soon as the reader ends, so ``fn`` is retried after 0.5, 1, 2 ... 50 ms
    sleeps, for up to :data:`DRAIN_RETRY_S`, before the error is raised.  ``fn`` must
    have no effect when its transaction aborts (state changes after the commit).
    """
    try:
        return fn()
    except MapExhaustedError:
        pass
    return _retry_failed(fn)


def _retry_failed(fn: Callable[[], _T]) -> _T:
    """:func:`retry_draining` after ``fn``'s first attempt raised ``MapExhaustedError``."""
    delay = 0.0005
    deadline = time.monotonic() + DRAIN_RETRY_S
    while True:
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
        try:
            return fn()
        except MapExhaustedError:
            if time.monotonic() >= deadline:
                raise


def draining(method: Callable[_P, _T]) -> Callable[_P, _T]:
    """Decorator: the call is a draining write, retried as :func:`retry_draining` says.

    The first attempt is a plain call (no closure per call: ``commit()`` is on
    a group member's path for every message)."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(*args, **kwargs)
        except MapExhaustedError:
            pass
        return _retry_failed(lambda: method(*args, **kwargs))

    return wrapper


class Engine:
    """One handle on a broker directory; see the module docstring."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self._closed = False
        self._closing = False
        # Strong references: a consumer dropped without close() still runs its group
        # member (watcher thread, lock file) until closed, so the broker must be able
        # to close it; closed children are pruned as new ones arrive.
        self._children: list[Any] = []
        self._lock = threading.RLock()  # RLock: close() may run in a signal handler
        # keyless round-robin, one counter per topic (a shared one put every message of
        # two alternating topics on one partition each)
        self._rr: dict[str, Iterator[int]] = {}
        self._last_retention: dict[int, float] = {}
        self._taken_sends = 0  # sends in the last ring commit (the gather hint, D46)
        self._taken_wrote = False  # whether the last ring transaction wrote (D62)
        # The common case of send() in Cython (D36), one per environment.
        if env.send_path is None:
            env.send_path = _core.SendPath(env, RecordMetadata, lmdb_error, _log.load_state_w,
                                           SPACE_SEND, StorageError, _HAND_OVER,
                                           _COMBINE_WAIT_S, QUEUE_VERSION_SLOT,
                                           NOTIFY_HASHED)
        self.send_path: Any = env.send_path
        # The commit ring's apply step in Cython (D50), one per environment.
        if env.ring_apply is None:
            env.ring_apply = _core.RingApply(env, _log.load_state_w, SPACE_SEND,
                                             StorageFullError, TopicNotFoundError)
        self.ring_apply: Any = env.ring_apply

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def path(self) -> str:
        """Absolute path of the broker directory."""
        return self.env.path

    @property
    def durability(self) -> str:
        """``"sync"``, ``"lazy"`` or ``"none"``, as chosen by this process's ``open()``."""
        return self.env.durability

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close every adopted child, producers first, then release this handle.

        Idempotent; any thread.  A child whose call on this thread was
        interrupted (a signal handler or callback closing its broker) closes
        when that call returns and then calls :meth:`release_if_done`, which
        releases the handle once every child is closed.  The environment
        closes with the last handle of the process.

        Raises
        ------
        Exception
            The first error a child's ``close()`` raised (e.g. from an
            ``on_revoke`` callback), after everything else was closed.
        """
        with self._lock:
            if self._closing or self._closed:
                return
            self._closing = True
            kids = list(self._children)
        kids.sort(key=lambda k: k._CLOSE_RANK)  # producers first: they still need the env
        first: BaseException | None = None
        for k in kids:
            try:
                k.close()
            except Exception as exc:  # noqa: BLE001 - close the others, re-raise below
                if first is None:
                    first = exc
        self.release_if_done()
        if first is not None:
            raise first

    def adopt(self, child: Any) -> None:
        """Track a new producer/consumer/queue for :meth:`close` (ClosedError if closing).

        ``child`` has ``close()``, ``closed`` and ``_CLOSE_RANK`` (producers 0,
        consumers and queues 1: lower closes first).
        """
        with self._lock:
            if self._closing or self._closed:
                raise ClosedError("this broker handle is closed; call mqlite.open() again")
            if len(self._children) >= 64 and not len(self._children) & 63:
                self._children = [k for k in self._children if not k.closed]
            self._children.append(child)

    def release_if_done(self) -> None:
        """Release the environment once closing and every child closed (children call it)."""
        with self._lock:
            if not self._closing or self._closed:
                return
            if any(not k.closed for k in self._children):
                return  # a child closes when its interrupted call returns; it calls back
            self._closed = True
            self._children = []
        self.env.release()

    def live_env(self) -> Env:
        """The environment; :class:`ClosedError` once this handle is closed."""
        if self._closed:
            raise ClosedError("this broker handle is closed; call mqlite.open() again")
        return self.env

    # -- transactions ------------------------------------------------------------------
    def read(self) -> Any:
        """``with engine.read() as txn:`` a short read transaction, errors converted."""
        return self.live_env().read_txn()

    def write(self, what: str = "write") -> _Write:
        """``with engine.write() as txn:`` one write transaction (see the module docstring)."""
        return _Write(self.live_env(), what)

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn()`` once the write transaction in progress has committed (not on abort)."""
        self.env.after_commit.append(fn)

    def touched(self, topic: str, pids: Sequence[int] = ()) -> None:
        """Wake the consumers of ``topic`` when the current write transaction commits;
        also those reading only one of partition ids ``pids`` (D64)."""
        self.env.touched.add(topic)
        self.env.touched_parts.update(pids)

    def wake_readers(self, topics: Sequence[str]) -> None:
        """Bump the wake-up words of ``topics`` and of every partition of them, now.

        For changes that every reader must see at once, a group's membership
        among them; appends bump only the partitions they wrote (D64).  Call
        after the commit.  A topic that no longer exists wakes its topic word only.
        """
        env = self.env
        pids: list[int] = []
        if topics:
            try:
                with env.read_txn() as txn:
                    for name in topics:
                        rec = _log.get_topic(txn, env.dbs, name)
                        if rec is not None:
                            pids.extend(rec.pids)
            except MqliteError:  # closing: the topic words below still wake its waiters
                pass
        env.notify_partitions(pids)
        env.notify_topics(topics)

    # -- topic catalog -------------------------------------------------------------------
    def topic(self, txn: Any, name: str) -> _log.TopicRecord:
        """Topic record through the process cache, validated by the catalog version.

        In a write transaction that follows our own last commit (``env.fresh_txn``)
        the cache is known current and the version read is skipped.
        """
        env = self.env
        cache = env.topic_cache
        use_cache = True
        ver = env.topic_cache_version
        if txn is not env.fresh_txn:
            ver = _log.topics_version(txn, env.dbs)
            if ver != env.topic_cache_version:
                # An older snapshot (a read begun before a catalog change we saw)
                # reads its own record and leaves the cache alone: a fresh write
                # transaction trusts the cache (issue 10, defect 13).
                use_cache = env.check_topic_cache(ver)
        rec = cache.get(name) if use_cache else None
        if rec is None:
            rec = _log.get_topic(txn, env.dbs, name)
            if rec is None:
                raise TopicNotFoundError(
                    f"topic {name!r} does not exist; create it with broker.create_topic({name!r})"
                )
            if use_cache:
                cache[name] = rec
                if env.topic_cache_version != ver:  # another thread moved on meanwhile
                    cache.pop(name, None)
        return rec

    def topic_cached(self, name: str) -> _log.TopicRecord:
        """Topic record from the cache (possibly stale), else read it."""
        rec = self.env.topic_cache.get(name)
        if rec is not None:
            return rec
        validate_topic_name(name)
        with self.read() as txn:
            return self.topic(txn, name)

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        *,
        retention_ms: int | None = None,
        retention_bytes: int | None = None,
        retention_messages: int | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        dedup_window_ms: int = DEFAULT_DEDUP_WINDOW_MS,
        cleanup: str = "delete",
        exist_ok: bool = False,
    ) -> None:
        """Create a topic (see :meth:`mqlite.Broker.create_topic`, which documents it)."""
        validate_topic_name(name)
        cfg = TopicConfig(partitions=partitions, retention_ms=retention_ms,
                          retention_bytes=retention_bytes, retention_messages=retention_messages,
                          max_message_bytes=max_message_bytes, dedup_window_ms=dedup_window_ms,
                          cleanup=cleanup)
        env = self.live_env()
        with self._catalog_change() as txn:
            if exist_ok and _log.get_topic(txn, env.dbs, name) is not None:
                return
            env.check_space(txn, 0, SPACE_GROW)
            _log.create_topic(txn, env.dbs, name, cfg, now_ms())
            env.check_topic_cache(_log.topics_version(txn, env.dbs))

    @contextlib.contextmanager
    def _catalog_change(self) -> Iterator[Any]:
        """A write that changes the topic catalog: the cache moves to the new version
        inside the transaction (so an older snapshot cannot refill it before a fresh
        write trusts it) and is dropped if the transaction does not commit."""
        try:
            with self.write() as txn:
                yield txn
        except BaseException:
            self.env.topic_cache_version = -1
            self.env.topic_cache.clear()
            raise

    @draining
    def delete_topic(self, name: str) -> None:
        """Delete a topic and all its messages, offsets and pending entries.

        Raises :class:`TopicNotFoundError` when it does not exist.
        """
        validate_topic_name(name)
        env = self.live_env()
        with self._catalog_change() as txn:
            rec = _log.get_topic(txn, env.dbs, name)
            if rec is None:
                raise TopicNotFoundError(f"topic {name!r} does not exist")
            # its queue groups' words, read before the hooks free them (D74)
            words = _queues.words_of(txn, env.dbs, name, QUEUE_WORD_FIRST, NOTIFY_SLOTS)
            _log.delete_topic(txn, env.dbs, rec)
            env.check_topic_cache(_log.topics_version(txn, env.dbs))
            for hook in _TOPIC_DELETE_HOOKS:
                hook(txn, env.dbs, rec)
        env.space_freed()
        env.notify_partitions(rec.pids)  # its readers of one partition learn it too (D64)
        env.notify_topics([name])
        for w in words:  # every queue receiver of every group, not one (D67, D74)
            env.wake(w)
        env.wake(QUEUE_VERSION_SLOT)  # writers forget the freed words (D74)

    def alter_topic(self, name: str, *, partitions: int | None = None,
                    changes: dict[str, Any] | None = None) -> TopicConfig:
        """Change a topic's settings and/or grow its partitions (see ``Broker.alter_topic``)."""
        validate_topic_name(name)
        env = self.live_env()
        with self._catalog_change() as txn:
            rec = _log.get_topic(txn, env.dbs, name)
            if rec is None:
                raise TopicNotFoundError(f"topic {name!r} does not exist")
            have = len(rec.pids)
            if partitions is not None and partitions < have:
                raise ValueError(
                    f"topic {name!r} has {have} partitions; partitions can only be added "
                    f"(got {partitions}): removing one would drop its messages")
            if changes:
                cfg = TopicConfig.from_dict({**rec.config, **changes, "partitions": have})
                rec = _log.set_topic_config(txn, env.dbs, rec, cfg)
            if partitions is not None and partitions > have:
                TopicConfig.from_dict({**rec.config, "partitions": partitions})  # bounds
                rec = _log.add_partitions(txn, env.dbs, rec, partitions - have)
            env.check_topic_cache(_log.topics_version(txn, env.dbs))
        env.notify_partitions(rec.pids)  # a group reading it rebalances (D64)
        env.notify_topics([name])
        return rec.topic_config()

    def topics(self) -> list[str]:
        """Names of all topics, sorted."""
        with self.read() as txn:
            return _log.list_topics(txn, self.env.dbs)

    def topic_config(self, name: str) -> TopicConfig:
        """The stored configuration of topic ``name``."""
        return self.topic_fresh(name).topic_config()

    def topic_fresh(self, name: str) -> _log.TopicRecord:
        validate_topic_name(name)
        with self.read() as txn:
            return self.topic(txn, name)

    def partitions_for(self, name: str) -> int:
        """Number of partitions of topic ``name``."""
        return len(self.topic_fresh(name).pids)

    def describe_topic(self, name: str) -> TopicDescription:
        """Configuration and per-partition state (offsets, messages, bytes, timestamps)."""
        validate_topic_name(name)
        env = self.live_env()
        with self.read() as txn:
            rec = self.topic(txn, name)
            parts = []
            for i, pid in enumerate(rec.pids):
                st = _log.load_state(txn, env.dbs, pid)
                parts.append(PartitionInfo(
                    partition=i, start_offset=st.start, end_offset=st.next,
                    messages=st.messages, bytes=st.bytes,
                    oldest_timestamp_ms=st.first_ts if st.messages and st.first_ts >= 0 else None,
                    newest_timestamp_ms=st.last_ts if st.messages and st.last_ts >= 0 else None,
                ))
        return TopicDescription(name=name, config=rec.config, partitions=parts)

    # -- writing -------------------------------------------------------------------------
    def choose_partition(self, rec: _log.TopicRecord, key: Any, partition: int | None,
                          value: Any = None,
                          partitioner: Callable[..., int] | None = None) -> int:
        n = len(rec.pids)
        if partition is not None:
            if not isinstance(partition, int) or isinstance(partition, bool):
                raise TypeError(f"partition must be int, not {type(partition).__name__}")
            if not 0 <= partition < n:
                raise PartitionNotFoundError(
                    f"partition {partition} out of range: topic {rec.name!r} has partitions "
                    f"0..{n - 1}"
                )
            return partition
        if partitioner is not None:
            p = partitioner(key, value, n)
            if not isinstance(p, int) or not 0 <= p < n:
                raise PartitionNotFoundError(
                    f"partitioner returned {p!r}; expected an int in 0..{n - 1}"
                )
            return p
        if n == 1:
            return 0
        if key is not None:
            return _core.partition_for_key(key, n)
        return self._next_rr(rec.name) % n

    def _next_rr(self, topic: str) -> int:
        rr = self._rr.get(topic)
        if rr is None:
            rr = self._rr.setdefault(topic, itertools.count())
        return next(rr)

    def append_in(self, txn: Any, rec: _log.TopicRecord, part: int,
                   batches: list[bytes]) -> tuple[int, _log.PartitionState]:
        """Append encoded batches to partition ``part`` of ``rec`` inside ``txn``.

        Every append path goes through here (``send`` inlines the same steps
        for one record): partition state, space accounting, retention.
        Returns the first offset written and the partition's updated state.

        The caller has admitted the bytes first, in the same transaction and before
        anything of the append is written: :meth:`check_space` (sends, publishes,
        redrives), :meth:`admit_growth` (dead-letter moves) or :meth:`admit_move`
        (due delayed messages).  That check is what allocates the disk blocks under
        writemap (D47, D57): an append it did not admit can meet a full disk in the
        middle of the transaction, which kills the process.
        """
        env = self.env
        pid = rec.pids[part]
        st = _log.load_state_w(txn, env, pid)
        base = _log.append_batches(txn, env.dbs, pid, batches, st)
        self._after_append(txn, env, rec, pid, st)
        _log.store_state(txn, env.dbs, pid, st)
        env.touched.add(rec.name)
        env.touched_parts.add(pid)
        return base, st

    def _after_append(self, txn: Any, env: Env, rec: _log.TopicRecord, pid: int,
                      st: _log.PartitionState) -> None:
        """Rate-limited retention, inside the append transaction."""
        cfg = rec.config
        if (cfg["retention_ms"] is not None or cfg["retention_bytes"] is not None
                or cfg["retention_messages"] is not None):
            over = ((cfg["retention_bytes"] is not None and st.bytes > cfg["retention_bytes"])
                    or (cfg["retention_messages"] is not None
                        and st.messages > cfg["retention_messages"]))
            t = time.monotonic()
            if over or t - self._last_retention.get(pid, 0.0) >= _RETENTION_INTERVAL_S:
                self._last_retention[pid] = t
                # Wall clock, not a record's timestamp: a future-dated record must
                # not expire everything before it.
                _log.apply_retention(txn, env.dbs, pid, st, rec.topic_config(), now_ms())

    def encode(self, rec: TopicRecord, values: Sequence[Any], keys: Sequence[Any] | None,
               headers: Sequence[Any] | None, timestamp_ms: int | Sequence[int], *,
               capped: bool = True) -> list[bytes]:
        """Encode messages for topic ``rec`` as record batches: the one encoding step.

        ``values`` and ``keys`` hold bytes-like objects or ``None`` (a null
        value or key, kept distinct from ``b""`` all the way to the consumer).
        ``capped`` enforces the topic's ``max_message_bytes``; re-appends of
        messages that were accepted once (dead letters, redrives, promoted
        scheduled messages) pass ``False``.

        Raises
        ------
        MessageTooLargeError, TypeError, ValueError
        """
        maxb = rec.config["max_message_bytes"] if capped else _UNCAPPED
        return _core.encode_batches(values, keys, headers, timestamp_ms, max_message_bytes=maxb)

    def dedup_key(self, topic: str, dedup_id: str | bytes) -> bytes:
        """The stored key of ``dedup_id`` on ``topic`` (TypeError/ValueError when invalid)."""
        return _dedup.dedup_key(topic, dedup_id)

    def dedup_hit(self, txn: Any, dkey: bytes,
                  now: int | None = None) -> tuple[int, int, int, int] | None:
        """``(expires_ms, partition, offset, timestamp_ms)`` of a live dedup id, else ``None``."""
        return _dedup.lookup(txn, self.env.dbs, dkey, now_ms() if now is None else now)

    def dedup_store(self, txn: Any, dkey: bytes, rec: TopicRecord, part: int, off: int,
                    ts: int) -> None:
        """Record where the message of ``dkey`` went, for the topic's dedup window."""
        _dedup.store(txn, self.env.dbs, dkey, part, off, ts, now_ms(),
                     rec.config["dedup_window_ms"])

    def check_space(self, env: Env, txn: Any, nbytes: int) -> None:
        """Admit a send of ``nbytes`` encoded bytes (``StorageFullError`` above 90%)."""
        env.check_space(txn, nbytes, SPACE_SEND)

    def admit_growth(self, txn: Any, nbytes: int = 0) -> None:
        """Admit a write that adds lasting state, not new messages: a receive, a new
        group, topic, exchange or binding, or a move of ``nbytes`` encoded bytes to a
        dead-letter topic (``StorageFullError`` above 95% of the map).

        Draining writes (acks, nacks, offset commits, deletes, close) never call this:
        the map's last 5% is kept for them, so a full broker can always be drained.
        """
        self.live_env().check_space(txn, nbytes, SPACE_GROW)

    def admit_move(self, txn: Any, nbytes: int) -> None:
        """Admit an append of ``nbytes`` encoded bytes that were counted once already
        (a due delayed message, whose scheduled entry the same transaction deletes):
        ``StorageFullError`` only when they would not fit the map at all, and under
        writemap a typed ``StorageError`` when the disk has no blocks for them."""
        self.live_env().check_space(txn, nbytes, SPACE_MOVE)

    def send(self, topic: str, value: Any, key: Any = None,
             headers: HeadersArg = None, partition: int | None = None,
             timestamp_ms: int | None = None,
             dedup_id: str | bytes | None = None) -> RecordMetadata:
        """Append one message in its own transaction (see :meth:`mqlite.Broker.send`).

        The one-record twin of :meth:`append_in`, inlined for speed: the same
        steps (partition choice, space check, state, retention, dedup, wake-up).
        The common case (no headers, dedup id or timestamp; bytes or ``None``
        value and key) runs in ``_core.SendPath`` (D36), which hands back
        ``None`` for anything else, before doing anything.  With a commit ring
        it runs :meth:`send_general`'s ring steps there too (D56): alone when the
        ring is idle (:meth:`_send_solo`), else :meth:`_send_combined` and
        :meth:`ring_submit` for one send, compiled, with :meth:`_lead` called
        as the leader's step; what the ring cannot take goes to
        :meth:`_send_direct`.
        """
        if headers is None and dedup_id is None and timestamp_ms is None:
            md = self.send_path.send(self, topic, value, key, partition)
            if md is not None:
                return md
        return self.send_general(topic, value, key, headers, partition, timestamp_ms, dedup_id)

    def _send_solo(self, comb: Any, topic: str, value: Any, key: Any,
                   partition: int | None) -> RecordMetadata | None:
        """A send that finds the commit ring idle commits alone, the short way (D43).

        Holding the combining lock with no slot FILLED, and the last commit
        having found nobody else waiting, nobody waits for a commit: going
        through a slot would only add its ticket entry and the ring's bookkeeping
        (212,507 instructions per lone ``"sync"`` send against 24,787 for the
        same send committed directly).  ``None`` when the ring is busy or the
        call is not the common case (nothing was sent: the caller goes on).
        """
        t0 = self.ring_alone(comb)
        if t0 < 0:
            return None
        md: RecordMetadata | None = None
        try:
            md = self.send_path.send(self, topic, value, key, partition, True)
        finally:
            self.ring_alone_done(comb, t0, md is not None)
        return md

    def ring_alone(self, comb: Any) -> int:
        """Take the combining lock when the ring is idle; the start time (ns), else -1.

        Idle: no slot FILLED, and the last commit carried at most one operation
        (the ring's ``active`` hint; when more were waiting, more are coming and a
        leader that begins through the ring takes those that arrive meanwhile).
        While the caller holds the lock and commits alone, senders that arrive fill
        slots and wait; :meth:`ring_alone_done` (always call it after a
        non-negative return) releases the lock and hands it over to them.
        """
        tlock = self.env.comb_lock
        if comb.filled() or comb.hints()[0] > 1 or not tlock.acquire(blocking=False):
            return -1
        try:
            got = comb.trylock()
        except OSError:
            got = False  # the ring's own path reports it
        if got and not comb.filled():
            return time.perf_counter_ns()
        if got:
            comb.unlock()  # a sender filled a slot first: lead it through the ring
        tlock.release()
        return -1

    def ring_alone_done(self, comb: Any, t0: int, committed: bool) -> None:
        """End :meth:`ring_alone`: note the commit, release the lock, hand it over."""
        try:
            if committed:
                comb.note_commit(1, time.perf_counter_ns() - t0)
                comb.note_send()
            comb.unlock()
            for other, _t in comb.collect(_HAND_OVER):
                comb.wake(other)  # hand the lock over to the arrivals
        finally:
            self.env.comb_lock.release()

    def send_general(self, topic: str, value: Any, key: Any = None,
                     headers: HeadersArg = None, partition: int | None = None,
                     timestamp_ms: int | None = None,
                     dedup_id: str | bytes | None = None) -> RecordMetadata:
        """:meth:`send` without the Cython common case: every argument, the commit ring.

        For callers that already tried ``send_path`` (``Broker.send``).
        """
        comb = self.env.combiner
        if (comb is not None and headers is None and dedup_id is None
                and timestamp_ms is None):
            md = self._send_solo(comb, topic, value, key, partition)
            if md is not None:
                return md
        if type(topic) is not str:
            validate_topic_name(topic)
        ts = time.time_ns() // 1_000_000 if timestamp_ms is None else require_int(
            timestamp_ms, "timestamp_ms", minimum=0, maximum=MAX_I64)
        env = self.env
        if self._closed:
            raise ClosedError("this broker handle is closed; call mqlite.open() again")
        rec = env.topic_cache.get(topic) or self.topic_cached(topic)
        maxb = rec.config["max_message_bytes"]
        kk = None if key is None else (key,)
        hh = None if headers is None else (normalize_headers(headers),)
        batches = _core.encode_batches((value,), kk, hh, ts, max_message_bytes=maxb)
        dkey = None if dedup_id is None else _dedup.dedup_key(topic, dedup_id)
        comb = env.combiner
        if comb is not None:
            md = self._send_combined(comb, rec, topic, key, partition, ts, maxb, batches[0], dkey)
            if md is not None:
                return md
        return self._send_direct(topic, value, kk, hh, key, partition, ts, rec, maxb, batches,
                                 dkey)

    def _send_direct(self, topic: str, value: Any, kk: tuple[Any] | None,
                     hh: tuple[Any] | None, key: Any, partition: int | None, ts: int,
                     rec: TopicRecord, maxb: int, batches: list[bytes],
                     dkey: bytes | None) -> RecordMetadata:
        """The end of :meth:`send_general`: one encoded send committed in its own transaction.

        Also where the compiled ring send (``_core.SendPath``, D56) goes when the ring
        cannot take the send (too large, no free slot, ``_ST_RETRY``).
        """
        env = self.env
        txn = env.write_txn()
        try:
            rec2 = (env.topic_cache.get(topic) if txn is env.fresh_txn else None) or self.topic(
                txn, topic)
            if rec2 is not rec:
                if rec2.config["max_message_bytes"] != maxb:
                    batches = _core.encode_batches((value,), kk, hh, ts,
                                                   max_message_bytes=rec2.config["max_message_bytes"])
                rec = rec2
            if dkey is not None:
                hit = _dedup.lookup(txn, env.dbs, dkey, now_ms())  # expiry is wall time, not ts
                if hit is not None:
                    env.abort(txn)
                    return RecordMetadata(topic, hit[1], hit[2], hit[3])
            pids = rec.pids
            if partition is None and key is None and len(pids) == 1:
                part = 0
            else:
                part = self.choose_partition(rec, key, partition)
            pid = pids[part]
            batch = batches[0]
            nbytes = len(batch)
            env.check_space(txn, nbytes, SPACE_SEND)
            st = env.state_cache.get(pid) if txn is env.fresh_txn else None
            if st is None:
                st = _log.load_state_w(txn, env, pid)
            off = st.next
            _log.put_batch(txn, env.dbs, pid, off, batch)
            st.next = off + 1
            st.bytes += nbytes
            if st.first_ts < 0:
                st.first_ts = ts
            st.last_ts = max(st.last_ts, ts)
            if rec.config["retention_ms"] is not None or rec.config["retention_bytes"] \
                    is not None or rec.config["retention_messages"] is not None:
                self._after_append(txn, env, rec, pid, st)
            _log.store_state(txn, env.dbs, pid, st)
            env.touched_parts.add(pid)
            if dkey is not None:
                self.dedup_store(txn, dkey, rec, part, off, ts)
        except BaseException as exc:  # noqa: BLE001 - fail() aborts and re-raises
            env.fail(txn, exc, f"send to {topic!r}")
        env.commit(txn, wake=topic, wrote=True)
        return _tuple_new(RecordMetadata, (topic, part, off, ts))

    # -- commit combining (csrc/combine.h; docs/decisions.md D27) -------------------------
    def _send_combined(self, comb: Any, rec: TopicRecord, topic: str, key: Any,
                       partition: int | None, ts: int, maxb: int, batch: bytes,
                       dkey: bytes | None) -> RecordMetadata | None:
        """Hand one encoded send to the commit ring and return its metadata once durable.

        ``None`` when the ring cannot take it (too large, no free slot, or the
        topic changed under the sender's cache): the caller commits on its own.
        """
        if len(batch) > comb.slot_bytes:
            return None
        if len(rec.pids) == 1 and partition is None and key is None:
            part = 0
        else:
            part = self.choose_partition(rec, key, partition)
        res = self.ring_submit(comb, [self.ring_payload(rec.name, part, ts, maxb, [batch], dkey)])
        if res is None:
            return None
        st, r0, r1, r2 = res[0]
        if st == _ST_OK:
            return _tuple_new(RecordMetadata, (topic, r0, r1, r2))
        self.raise_ring_status(st, topic)
        return None  # _ST_RETRY: the topic changed; the caller sends on its own

    def raise_ring_status(self, st: int, topic: str) -> None:
        """Raise the error a ring result status stands for (nothing for OK / retry)."""
        if st == _ST_NO_TOPIC:
            raise TopicNotFoundError(
                f"topic {topic!r} does not exist; create it with broker.create_topic({topic!r})")
        if st == _ST_FULL:
            raise StorageFullError(self.env.full_message())

    def ring_submit(self, comb: Any, payloads: list[bytes], *,
                    follow: bool = False) -> list[tuple[int, int, int, int]] | None:
        """Hand encoded appends to the commit ring; their results once all are durable.

        Each payload (from :meth:`ring_payload`) takes one slot; they are
        applied in order (tickets increase), usually in one transaction.
        Returns ``(status, partition, base_offset, timestamp)`` per payload, or
        ``None`` when they do not fit or no slots are free (nothing was handed
        over: commit alone).  A status other than ``_ST_OK`` is for the caller
        to raise (:meth:`raise_ring_status`) or to retry alone (``_ST_RETRY``).

        ``follow``: the operations are not sends (offset commits, acks).  When a
        sender filled a slot lately (within :data:`FOLLOW_WINDOW_NS`), they first
        wait about two commit durations (at most :data:`FOLLOW_MAX_NS`) for a
        sender's commit to carry them, instead of queueing a commit of their own
        in front of the sender's next one (D43).  Sends stamp the hint.

        ``_core.SendPath`` runs the same steps for a common-case send (one payload,
        ``follow=False``) in compiled code (D56), ``_core.ring_follow_one`` for one
        payload with ``follow`` (a group member's offset commit, an ack: D65); change
        all three together.
        """
        if follow and len(payloads) == 1 and type(comb) is _core.Combiner:
            payload = payloads[0]
            if type(payload) is bytes:
                res = _core.ring_follow_one(
                    self, comb, payload, self.env.comb_lock,
                    FOLLOW_WINDOW_NS if _FOLLOW else -1, FOLLOW_MAX_NS, _COMBINE_WAIT_S,
                    _HAND_OVER, StorageError)
                return None if res is None else [res]
        cap = comb.slot_bytes
        if any(len(p) > cap for p in payloads):
            return None
        pid = _core.self_pid()  # no getpid() per send (D56)
        mine: list[int] = []
        for _ in payloads:
            idx = comb.claim(pid)
            if idx < 0:
                for i in mine:
                    comb.unclaim(i)
                return None
            mine.append(idx)
        # Only sends are gathered for: a commit never waits for an offset commit or
        # an ack, which follow the senders' commits instead (D43, D46).
        done = [(comb.fill(i, p, not follow), _core.DONE) for i, p in zip(mine, payloads)]
        env = self.env
        tlock = env.comb_lock
        word = comb.word
        try:
            if not follow:
                comb.note_send()
            elif _FOLLOW:
                comb.follow(mine[-1], done[-1][0], FOLLOW_WINDOW_NS, FOLLOW_MAX_NS)
            # A holder has the lock (the header's hint, D60): a trylock cannot succeed,
            # and the holder takes our slots or hands the lock over when it leaves, so
            # wait first; again after a wake-up, never after a wait that timed out (a
            # holder killed with -9 leaves the hint set: one bounded wait).
            skip = comb.held()
            while any(word(i) != d for i, d in zip(mine, done)):
                if _ring_lost(comb, mine, done):
                    raise StorageError(
                        f"the commit ring file {comb.path!r} was truncated while this call "
                        "waited in it: its records may or may not have been stored (check "
                        "before sending again); later calls commit on their own")
                led = False
                if skip:
                    skip = False
                elif tlock.acquire(blocking=False):
                    try:
                        if comb.trylock():
                            led = True
                            try:
                                self._lead(comb, mine, done)
                            finally:
                                comb.unlock()
                                # hand the lock over to the owners of the oldest slots
                                for other, _t in comb.collect(_HAND_OVER):
                                    comb.wake(other)
                    finally:
                        tlock.release()
                if led:
                    continue
                for i, d in zip(mine, done):
                    if word(i) != d:
                        skip = comb.sleep(i, d[0], _COMBINE_WAIT_S) == 0 and comb.held()
                        break
        except BaseException:
            withdrawn = [comb.withdraw(i, d[0]) for i, d in zip(mine, done)]
            for i, d, w in zip(mine, done, withdrawn):
                if not w:
                    comb.release(i, d[0])  # committed meanwhile (the caller gets no answer)
            raise
        out = []
        for i, d in zip(mine, done):
            out.append(comb.result(i))
            comb.release(i, d[0])
        return out

    def _lead(self, comb: Any, mine: list[int], done: list[tuple[int, int]]) -> None:
        """Holding the combining lock: commit rounds of FILLED slots until ours are DONE.

        It then returns at once (the caller hands the lock to the owners of slots
        still FILLED): serving later arrivals in extra rounds made a producer beside
        committing consumers wait for their commits too, 1.5x slower (D27).
        """
        env = self.env
        while True:
            # Senders that alternate with us arrive just after a commit begins: wait
            # (bounded) for as many as the last commits had (D35).
            comb.gather(_gather_us())
            txn = env.write_txn()
            try:
                taken = self._take_ring(txn, comb)
            except BaseException as exc:  # noqa: BLE001 - fail() aborts and re-raises
                env.fail(txn, exc, "combined send")
            if taken is None:
                env.abort(txn)  # nothing to write: no commit, no sync
            else:
                t0 = time.perf_counter_ns()
                self._ring_commit(txn)
                comb.note_commit(self._taken_sends, time.perf_counter_ns() - t0)
                self._ring_done(comb, taken)
            if all(comb.word(i) == d for i, d in zip(mine, done)) or _ring_lost(
                    comb, mine, done):
                return

    def _ring_commit(self, txn: Any) -> None:
        """Commit a combined transaction; on failure it is aborted and the slots stay
        FILLED for the next committer.  (A method of its own: the crash tests kill
        the committer around it.)  ``_take_ring`` wrote the slots' ticket entry into
        ``txn`` when it recorded or pruned a ticket entry (``_taken_wrote``); the commit
        then spends its id, and ``Env.commit`` skips its check for an empty one (an
        ``info()`` call, D51, D62).  Slots whose results a dead committer had already
        recorded write nothing: then the check runs."""
        self.env.commit(txn, wrote=self._taken_wrote)

    @staticmethod
    def _ring_done(comb: Any, taken: list[tuple[int, int]]) -> None:
        """After the commit: mark each taken slot DONE and wake its owner."""
        for i, ticket in taken:
            comb.done(i, ticket)
            comb.wake(i)

    @staticmethod
    def ring_payload(topic: str, part: int, ts: int, maxb: int, batches: list[bytes],
                     dkey: bytes | None) -> bytes:
        """The ring slot payload of encoded batches for one partition (``_SLOT_HEAD``)."""
        tb = topic.encode()
        head = _SLOT_HEAD.pack(RING_KIND_APPEND, len(tb), -1 if dkey is None else len(dkey),
                               part, ts, maxb, len(batches))
        lens = struct.pack(f">{len(batches)}I", *map(len, batches))
        return b"".join((head, tb, dkey or b"", lens, *batches))

    def _take_ring(self, txn: Any, comb: Any) -> list[tuple[int, int]] | None:
        """Holding both locks: apply every FILLED slot in ``txn`` and store its result.

        ``_core.RingApply.take`` (D50): :meth:`_take_ring_py`'s steps, with plain
        appends (no dedup id) parsed and applied in Cython and everything else
        staged here (:meth:`_stage_slot`) in slot order.
        """
        return self.ring_apply.take(self, txn, comb, _COMBINE_MAX)

    def _take_ring_py(self, txn: Any, comb: Any) -> list[tuple[int, int]] | None:
        """The reference of :meth:`_take_ring`, all in Python (the tests compare them).

        Returns the ``(slot, ticket)`` pairs to mark DONE once ``txn`` has
        committed, or ``None`` when the transaction wrote nothing at all.

        The results of the slots applied are recorded under their tickets in the
        same transaction, as one entry (:mod:`mqlite._storage.tickets`): a slot
        still FILLED whose ticket is found there was committed by a committer
        that died before marking it DONE, so it gets the stored result and is
        not appended again.  Appends without a dedup id to one partition are
        applied as one run (one state update, one space check) in ticket order;
        an append with a dedup id, and any other kind of slot, first applies every
        run collected so far, so each sender's operations keep their order.
        """
        env = self.env
        dbs = env.dbs
        slots = comb.collect(_COMBINE_MAX)
        known, pruned = _tickets.load(txn, dbs, {t for _, t in slots})
        taken: list[tuple[int, int]] = []
        results: list[tuple[int, int, tuple[int, int, int, int]]] = []
        fresh: list[tuple[int, tuple[int, int, int, int]]] = []
        runs: dict[tuple[str, int], _Run] = {}
        recs: dict[str, TopicRecord | None] = {}
        filled = _core.FILLED
        word = comb.word
        sends = 0
        for idx, ticket in slots:
            payload = comb.payload(idx)
            if word(idx) != (ticket, filled):
                continue  # withdrawn by its owner while we copied it
            taken.append((idx, ticket))
            if payload[:1] == _KIND_APPEND_BYTE:
                sends += 1
            res = known.get(ticket)
            if res is not None:
                results.append((idx, ticket, res))
                continue
            res = self._stage_slot(txn, payload, idx, ticket, runs, recs, results, fresh)
            if res is not None:
                results.append((idx, ticket, res))
                fresh.append((ticket, res))
        self._flush_runs(txn, runs, results, fresh)
        self._taken_sends = sends  # the gather hint of the commit (note_commit)
        _tickets.record_many(txn, dbs, fresh)
        self._taken_wrote = bool(fresh) or bool(pruned)  # _ring_commit's wrote=
        for idx, _ticket, res in results:
            comb.set_result(idx, *res)
        return taken if taken or pruned else None

    def _stage_slot(self, txn: Any, payload: bytes, idx: int, ticket: int,
                    runs: dict[tuple[str, int], _Run], recs: dict[str, TopicRecord | None],
                    results: list[tuple[int, int, tuple[int, int, int, int]]],
                    fresh: list[tuple[int, tuple[int, int, int, int]]],
                    ) -> tuple[int, int, int, int] | None:
        """Apply one slot, or add it to the run of its partition (then ``None``)."""
        kind = payload[0] if payload else -1
        if kind != RING_KIND_APPEND:
            self._flush_runs(txn, runs, results, fresh)
            handler = _RING_HANDLERS.get(kind)
            if handler is None:
                return (_ST_RETRY, 0, 0, 0)
            return _slot_status(lambda: handler(self, txn, payload))
        try:
            topic, dkey, part, ts, maxb, batches, count = _parse_append(payload)
        except (struct.error, UnicodeDecodeError, ValueError, CorruptRecordError):
            return (_ST_RETRY, 0, 0, 0)  # not a slot we can read: its owner sends alone
        if topic not in recs:
            try:
                recs[topic] = self.topic(txn, topic)
            except TopicNotFoundError:
                recs[topic] = None
        rec = recs[topic]
        if rec is None:
            return (_ST_NO_TOPIC, 0, 0, 0)
        if part >= len(rec.pids) or rec.config["max_message_bytes"] != maxb:
            return (_ST_RETRY, 0, 0, 0)
        if dkey is None:
            run = runs.get((topic, part))
            if run is None:
                run = runs[(topic, part)] = _Run(rec, part)
            run.add(idx, ticket, ts, batches, count)
            return None
        self._flush_runs(txn, runs, results, fresh)
        return _slot_status(lambda: self._apply_dedup(txn, rec, part, ts, batches, dkey))

    def _apply_dedup(self, txn: Any, rec: TopicRecord, part: int, ts: int,
                     batches: list[bytes], dkey: bytes) -> tuple[int, int, int, int]:
        """One append with a dedup id, inside ``txn``: the stored result of a live id, else
        the append (space check, state, retention, dedup record)."""
        env = self.env
        hit = _dedup.lookup(txn, env.dbs, dkey, now_ms())
        if hit is not None:
            return (_ST_OK, hit[1], hit[2], hit[3])
        env.check_space(txn, sum(map(len, batches)), SPACE_SEND)
        off, _st = self.append_in(txn, rec, part, batches)
        self.dedup_store(txn, dkey, rec, part, off, ts)
        return (_ST_OK, part, off, ts)

    def _flush_runs(self, txn: Any, runs: dict[tuple[str, int], _Run],
                    results: list[tuple[int, int, tuple[int, int, int, int]]],
                    fresh: list[tuple[int, tuple[int, int, int, int]]]) -> None:
        """Append every collected run (one ``append_in`` each) and note its slots' results.

        A run the space check refuses is applied slot by slot, so exactly the
        slots that do not fit are refused, as when each slot was its own append.
        """
        env = self.env
        for run in runs.values():
            try:
                env.check_space(txn, run.nbytes, SPACE_SEND)
                parts, admitted = [run], True
            except StorageFullError:
                parts, admitted = run.split(), False
            for r in parts:
                if not admitted:  # a run of one slot too (D50: it was appended unchecked)
                    try:
                        env.check_space(txn, r.nbytes, SPACE_SEND)
                    except StorageFullError:
                        for idx, ticket, _ts, _n in r.slots:
                            res = (_ST_FULL, 0, 0, 0)
                            results.append((idx, ticket, res))
                            fresh.append((ticket, res))
                        continue
                off, _st = self.append_in(txn, r.rec, r.part, r.batches)
                for idx, ticket, ts, n in r.slots:
                    res = (_ST_OK, r.part, off, ts)
                    off += n
                    results.append((idx, ticket, res))
                    fresh.append((ticket, res))
        runs.clear()

    def send_batch(
        self,
        topic: str,
        values: Sequence[Any],
        keys: Sequence[Any] | None = None,
        partition: int | None = None,
        *,
        headers: Sequence[HeadersArg] | None = None,
        timestamp_ms: int | Sequence[int] | None = None,
    ) -> BatchMetadata:
        """Append many messages in one transaction (see :meth:`mqlite.Broker.send_batch`)."""
        values = check_values_arg(values)
        if not values:
            raise ValueError("send_batch needs at least one value")
        if keys is not None:
            keys = check_values_arg(keys)
            if len(keys) != len(values):
                raise ValueError(f"len(keys) == {len(keys)} but len(values) == {len(values)}")
        headers = normalize_headers_list(headers, len(values))
        ts = now_ms() if timestamp_ms is None else timestamp_ms
        if isinstance(ts, bool) or not isinstance(ts, (int, Sequence)):
            raise TypeError("timestamp_ms must be an int or a sequence of ints")
        if (not 0 <= ts <= MAX_I64 if isinstance(ts, int)
                else any(type(t) is int and not 0 <= t <= MAX_I64 for t in ts)):
            raise ValueError("timestamp_ms must be a UNIX time in milliseconds, "
                             f"0 to {MAX_I64}")
        env = self.live_env()
        rec = self.topic_cached(topic)
        n = len(rec.pids)
        # Group messages by partition (only when keys spread them).
        assignment: list[int] | None = None
        if keys is not None and partition is None and n > 1:
            rr = self._next_rr(topic) % n
            pfk = _core.partition_for_key
            assignment = [rr if k is None else pfk(k, n) for k in keys]
            if len(set(assignment)) == 1:
                partition, assignment = assignment[0], None
        if assignment is None:
            part = self.choose_partition(rec, None, partition) if (
                partition is not None or n == 1) else self._next_rr(topic) % n
            groups: list[tuple[int, list[bytes]]] = [(part, _core.encode_batches(
                values, keys, headers, ts,
                max_message_bytes=rec.config["max_message_bytes"]))]
        else:
            order: dict[int, list[int]] = {}
            for i, p in enumerate(assignment):
                order.setdefault(p, []).append(i)
            groups = []
            for p in sorted(order):
                idx = order[p]
                groups.append((p, _core.encode_batches(
                    [values[i] for i in idx], [keys[i] for i in idx],  # type: ignore[index]
                    None if headers is None else [headers[i] for i in idx],
                    ts if isinstance(ts, int) else [ts[i] for i in idx],
                    max_message_bytes=rec.config["max_message_bytes"])))
        total = sum(len(b) for _, bs in groups for b in bs)
        ranges: list[PartitionRange] = []
        first_ts = ts if isinstance(ts, int) else (ts[0] if len(ts) else now_ms())
        comb = env.combiner
        if comb is not None and len(groups) == 1 and total < comb.slot_bytes:
            # One partition, small: through the commit ring (one slot, all or nothing).
            res = self.ring_submit(comb, [self.ring_payload(
                topic, groups[0][0], first_ts, rec.config["max_message_bytes"], groups[0][1],
                None)])
            if res is not None:
                status, r0, r1, _r2 = res[0]
                self.raise_ring_status(status, topic)
                if status == _ST_OK:
                    return BatchMetadata(topic, first_ts, [PartitionRange(r0, r1, len(values))],
                                         assignment)
        txn = env.write_txn()
        try:
            rec2 = self.topic(txn, topic)
            if rec2.pids != rec.pids or rec2.config != rec.config:
                env.abort(txn)
                return self.send_batch(topic, values, keys, partition, headers=headers,
                                       timestamp_ms=timestamp_ms)
            env.check_space(txn, total, SPACE_SEND)
            for part, batches in groups:
                base, st = self.append_in(txn, rec, part, batches)
                ranges.append(PartitionRange(part, base, st.next - base))
        except BaseException as exc:  # noqa: BLE001 - fail() aborts and re-raises
            env.fail(txn, exc, f"send_batch to {topic!r}")
        env.commit(txn, wrote=True)
        return BatchMetadata(topic, first_ts, ranges, assignment)

    def apply_retention(self, topic: str | None = None) -> int:
        """Apply retention rules now (they also run on appends); returns batches deleted."""
        env = self.live_env()
        if topic is not None:
            validate_topic_name(topic)
        names = [topic] if topic is not None else self.topics()
        deleted = 0
        now = now_ms()
        with self.write() as txn:
            for name in names:
                rec = _log.get_topic(txn, env.dbs, name)
                if rec is None:
                    if topic is not None:
                        raise TopicNotFoundError(f"topic {topic!r} does not exist")
                    continue
                cfg = rec.topic_config()
                for pid in rec.pids:
                    st = _log.load_state_w(txn, env, pid)
                    keep = None
                    if cfg.cleanup == "consumed":
                        keep = _consumed_floor(txn, env, rec, pid)
                    d = _log.apply_retention(txn, env.dbs, pid, st, cfg, now, keep)
                    if d:
                        _log.store_state(txn, env.dbs, pid, st)
                        deleted += d
        if deleted:
            env.space_freed()
        return deleted

    # -- reading -------------------------------------------------------------------------
    def read_partition(self, topic: str, partition: int = 0, offset: int = 0,
             max_records: int = 500) -> list[_core.Message]:
        """Read up to ``max_records`` messages of one partition from ``offset`` (no group)."""
        validate_topic_name(topic)
        require_int(offset, "offset", minimum=0, maximum=MAX_I64)
        require_int(max_records, "max_records", minimum=1)
        env = self.live_env()
        out: list[_core.Message] = []
        with self.read() as txn:
            rec = self.topic(txn, topic)
            if not isinstance(partition, int) or isinstance(partition, bool):
                raise TypeError(f"partition must be int, not {type(partition).__name__}")
            if not 0 <= partition < len(rec.pids):
                raise PartitionNotFoundError(f"no partition {partition!r} in topic {topic!r}")
            pid = rec.pids[partition]
            st = _log.load_state(txn, env.dbs, pid)
            _log.read_records(txn, env.dbs, pid, max(offset, st.start), max_records, out,
                              topic, partition, st.next)
        return out



class _Write:
    """Context manager: one LMDB write transaction, errors converted, wake-ups after commit."""

    __slots__ = ("_env", "_txn", "_what")

    def __init__(self, env: Env, what: str) -> None:
        self._env = env
        self._what = what
        self._txn: Any = None

    def __enter__(self) -> Any:
        self._txn = self._env.write_txn()
        return self._txn

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        txn = self._txn
        if exc is not None:
            err = self._env.abort_with(txn, exc, self._what)
            if err is not exc:
                raise err from exc
            return
        self._env.commit(txn)


def _consumed_floor(txn: Any, env: Env, rec: TopicRecord, pid: int) -> int | None:
    """Lowest offset some queue group still needs (``cleanup="consumed"``); hook-provided."""
    floors = [f(txn, env.dbs, rec, pid) for f in _CONSUMED_FLOOR_HOOKS]
    found = [f for f in floors if f is not None]
    return min(found) if found else None



def _ring_lost(comb: Any, mine: list[int], done: list[tuple[int, int]]) -> bool:
    """True when one of our slots is neither FILLED nor DONE under our ticket: the ring
    file was truncated (the SIGBUS guard grew it back with zeros, csrc/combine.h)."""
    filled = _core.FILLED
    for i, d in zip(mine, done):
        w = comb.word(i)
        if w != d and w != (d[0], filled):
            return True
    return False


class _Run:
    """Appends of ring slots to one partition, applied as one ``append_in``."""

    __slots__ = ("batches", "nbytes", "part", "rec", "slots")

    def __init__(self, rec: TopicRecord, part: int) -> None:
        self.rec = rec
        self.part = part
        self.batches: list[bytes] = []
        self.nbytes = 0
        self.slots: list[tuple[int, int, int, int]] = []  # (slot, ticket, ts, records)

    def add(self, idx: int, ticket: int, ts: int, batches: list[bytes], count: int) -> None:
        """Add one slot's batches (``count`` records in all)."""
        self.batches.extend(batches)
        self.nbytes += sum(map(len, batches))
        self.slots.append((idx, ticket, ts, count))

    def split(self) -> list[_Run]:
        """One run per slot (for a run the space check refused as a whole)."""
        out = []
        pos = 0
        for idx, ticket, ts, count in self.slots:
            r = _Run(self.rec, self.part)
            # a slot's batches are consecutive; find them by record count
            got = 0
            bs: list[bytes] = []
            while got < count:
                b = self.batches[pos]
                pos += 1
                bs.append(b)
                got += _core.batch_header(b)[2]
            r.add(idx, ticket, ts, bs, count)
            out.append(r)
        return out


def _parse_append(payload: bytes) -> tuple[str, bytes | None, int, int, int, list[bytes], int]:
    """``(topic, dedup key, partition, ts, max_message_bytes, batches, records)`` of an
    append slot (``_SLOT_HEAD``); every batch's header is checked before anything is
    written.  Raises struct.error, UnicodeDecodeError, ValueError, CorruptRecordError."""
    _, tlen, dlen, part, ts, maxb, nb = _SLOT_HEAD.unpack_from(payload)
    pos = _SLOT_HEAD.size
    topic = payload[pos:pos + tlen].decode()
    pos += tlen
    dkey = None
    if dlen >= 0:
        dkey = payload[pos:pos + dlen]
        pos += dlen
    lens = struct.unpack_from(f">{nb}I", payload, pos)
    pos += 4 * nb
    batches = []
    count = 0
    header = _core.batch_header
    for n in lens:
        b = payload[pos:pos + n]
        pos += n
        count += header(b)[2]
        batches.append(b)
    if pos != len(payload) or not batches or part < 0:
        raise ValueError("malformed ring slot")
    return topic, dkey, part, ts, maxb, batches, count


def _slot_status(fn: Callable[[], tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    """Run one slot's operation; the status an expected refusal stands for."""
    try:
        return fn()
    except (TopicNotFoundError, PartitionNotFoundError):
        return (_ST_NO_TOPIC, 0, 0, 0)
    except (struct.error, UnicodeDecodeError, ValueError, CorruptRecordError):
        return (_ST_RETRY, 0, 0, 0)  # not a slot we can read: its owner sends alone
    except MapExhaustedError:
        raise  # LMDB failed mid-write: the transaction must abort, slots stay FILLED
    except StorageFullError:  # refused by the space check, before any write
        return (_ST_FULL, 0, 0, 0)
