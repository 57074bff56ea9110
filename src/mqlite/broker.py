"""The broker facade: ``mqlite.open(path)`` and everything reachable from it.

A :class:`Broker` is a handle on one broker directory.  Every broker object
of a process that names the same directory shares one LMDB environment; each
write is one short LMDB write transaction that never spans user code.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from mqlite import _core
from mqlite._storage import log as _log
from mqlite._storage.env import Env, acquire_env
from mqlite._storage.keys import record_key as _record_key
from mqlite.config import (
    DEFAULT_DEDUP_WINDOW_MS,
    DEFAULT_MAX_MESSAGE_BYTES,
    TopicConfig,
    require_int,
    validate_topic_name,
)
from mqlite.errors import (
    ClosedError,
    PartitionNotFoundError,
    TopicNotFoundError,
)
from mqlite.types import (
    BatchMetadata,
    PartitionInfo,
    PartitionRange,
    RecordMetadata,
    TopicDescription,
)

__all__ = ["Broker", "open"]

_tuple_new = tuple.__new__  # NamedTuple construction without the keyword-argument wrapper
_DEDUP = msgspec.msgpack.Decoder(tuple[int, int, int, int])
_DEDUP_ENC = msgspec.msgpack.Encoder()
_DEDUP_KEY_MAX = 511 - 9  # LMDB's key limit minus the expiry index prefix
_SPACE_CHECK_EVERY = 64
_SPACE_CHECK_BYTES = 1 << 20
_RETENTION_INTERVAL_S = 1.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def open(  # noqa: A001 - the public name is mqlite.open
    path: str | os.PathLike[str],
    durability: str = "sync",
    *,
    map_size: int | None = None,
    create: bool = True,
    shared_group: bool = False,
) -> Broker:
    """Open (creating if needed) the broker stored in directory ``path``.

    Parameters
    ----------
    path
        The broker directory.  Created with mode 0700 (0770 with
        ``shared_group``); an existing one must be owned by the caller, not a
        symlink, and not writable by group/others.
    durability
        ``"sync"`` (default: every returned send is on disk), ``"lazy"`` (the
        last commits may roll back after an OS crash; never corrupt) or
        ``"none"`` (no fsync; an OS crash may lose recent data).  A process
        crash never loses a committed message in any mode.
    map_size
        Bytes of address space reserved for the data file (sparse; the file
        grows only as used).  Fixed when the broker is created; default 64 GiB.
        Sends are refused with :class:`StorageFullError` above 90% of it.
    create
        Create the directory when missing (else :class:`BrokerDirectoryError`).
    shared_group
        Make the directory and files group-accessible (0770/0660).

    Returns
    -------
    Broker
        Also a context manager that closes on exit.

    Raises
    ------
    BrokerDirectoryError
        Unsafe or missing directory.
    CorruptRecordError
        ``data.mdb`` is truncated or not an LMDB file.
    ValueError
        Unknown durability mode, or the directory is already open in this
        process with another durability mode.
    """
    return Broker(acquire_env(path, durability=durability, map_size=map_size, create=create,
                              shared_group=shared_group))


def _check_values_arg(values: object) -> Sequence[Any]:
    if isinstance(values, (bytes, bytearray, memoryview, str)):
        raise TypeError("values must be a sequence of bytes-like objects, not a single "
                        f"{type(values).__name__}; use send() for one message")
    if not isinstance(values, Sequence):
        values = list(values)  # type: ignore[call-overload]
    return values  # type: ignore[return-value]


class Broker:
    """A handle on one broker directory.  Thread-safe; fork-safe (see :func:`open`).

    The producers, consumers and queues made from a handle are its children:
    :meth:`close` closes them (README, "Lifecycle and threads").
    """

    def __init__(self, env: Env) -> None:
        self._env = env
        self._closed = False
        self._closing = False
        # weak: a child the user dropped is not kept alive by its broker
        self._children: list[weakref.ref[Any]] = []
        self._rr = itertools.count()
        self._writes = 0
        self._bytes_since_check = 0
        self._last_retention: dict[int, float] = {}
        self._lock = threading.RLock()  # RLock: close() may run in a signal handler

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def path(self) -> str:
        """Absolute path of the broker directory."""
        return self._env.path

    @property
    def durability(self) -> str:
        return self._env.durability

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close every child, then release this handle.  Idempotent; any thread.

        Producers are flushed and closed first (every record sent before
        ``close()`` is committed), then consumers and queues are closed (a
        blocked ``poll``/``receive`` in another thread returns at once; group
        members leave, queue consumers release their held messages), then
        the handle is released; the environment closes with the last handle
        of the process.  Called from a signal handler (or a callback) that
        interrupted a child's call on this thread, that child closes when
        the interrupted call returns, and the handle is released then.

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
            kids = [k for k in (r() for r in self._children) if k is not None]
        kids.sort(key=lambda k: k._CLOSE_RANK)  # producers first: they still need the env
        first: BaseException | None = None
        for k in kids:
            try:
                k.close()
            except Exception as exc:  # noqa: BLE001 - close the others, re-raise below
                if first is None:
                    first = exc
        self._release_if_done()
        if first is not None:
            raise first

    def _adopt(self, child: Any) -> None:
        """Track a new producer/consumer/queue for :meth:`close` (ClosedError if closing)."""
        with self._lock:
            if self._closing or self._closed:
                raise ClosedError("this broker handle is closed; call mqlite.open() again")
            if len(self._children) >= 64 and not len(self._children) & 63:
                self._children = [r for r in self._children if r() is not None]
            self._children.append(weakref.ref(child))

    def _release_if_done(self) -> None:
        """Release the environment once closing and every child closed (children call it)."""
        with self._lock:
            if not self._closing or self._closed:
                return
            if any(k is not None and not k.closed for k in (r() for r in self._children)):
                return  # a child closes when its interrupted call returns; it calls back
            self._closed = True
            self._children = []
        self._env.release()

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self._env.durability
        return f"<mqlite.Broker {self._env.path!r} {state}>"

    def _live_env(self) -> Env:
        if self._closed:
            raise ClosedError("this broker handle is closed; call mqlite.open() again")
        return self._env

    # -- topic catalog -------------------------------------------------------------------
    def _topic(self, txn: Any, name: str) -> _log.TopicRecord:
        """Topic record through the process cache, validated by the catalog version.

        In a write transaction that follows our own last commit (``env.fresh_txn``)
        the cache is known current and the version read is skipped.
        """
        env = self._env
        cache = env.topic_cache
        if txn is not env.fresh_txn:
            ver = _log.topics_version(txn, env.dbs)
            if env.topic_cache_version != ver:
                cache.clear()
                env.topic_cache_version = ver
        rec = cache.get(name)
        if rec is None:
            rec = _log.get_topic(txn, env.dbs, name)
            if rec is None:
                raise TopicNotFoundError(
                    f"topic {name!r} does not exist; create it with broker.create_topic({name!r})"
                )
            cache[name] = rec
        return rec

    def _topic_cached(self, name: str) -> _log.TopicRecord:
        """Topic record from the cache (possibly stale), else read it."""
        rec = self._env.topic_cache.get(name)
        if rec is not None:
            return rec
        validate_topic_name(name)
        with self._read() as txn:
            return self._topic(txn, name)

    def _read(self) -> Any:
        return self._live_env().read_txn()

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
        """Create a topic with ``partitions`` empty partitions.

        Raises
        ------
        InvalidTopicError
            Bad name (``ValueError``).
        TopicExistsError
            The topic exists (unless ``exist_ok``; then nothing changes, even
            if the existing topic was created with other settings).
        TypeError, ValueError
            Bad settings (see :class:`mqlite.config.TopicConfig`).
        """
        validate_topic_name(name)
        cfg = TopicConfig(partitions=partitions, retention_ms=retention_ms,
                          retention_bytes=retention_bytes, retention_messages=retention_messages,
                          max_message_bytes=max_message_bytes, dedup_window_ms=dedup_window_ms,
                          cleanup=cleanup)
        env = self._live_env()
        with self._write() as txn:
            if exist_ok and _log.get_topic(txn, env.dbs, name) is not None:
                return
            env.topic_cache.clear()
            _log.create_topic(txn, env.dbs, name, cfg, now_ms())

    def delete_topic(self, name: str) -> None:
        """Delete a topic and all its messages, offsets and pending entries.

        Raises :class:`TopicNotFoundError` when it does not exist.
        """
        validate_topic_name(name)
        env = self._live_env()
        with self._write() as txn:
            rec = _log.get_topic(txn, env.dbs, name)
            if rec is None:
                raise TopicNotFoundError(f"topic {name!r} does not exist")
            env.topic_cache.clear()
            _log.delete_topic(txn, env.dbs, rec)
            for hook in _TOPIC_DELETE_HOOKS:
                hook(txn, env.dbs, rec)
        env.space_freed()
        env.notify_topics([name])

    def topics(self) -> list[str]:
        """Names of all topics, sorted."""
        with self._read() as txn:
            return _log.list_topics(txn, self._env.dbs)

    def topic_config(self, name: str) -> TopicConfig:
        """The stored configuration of topic ``name``."""
        return self._topic_cached_fresh(name).topic_config()

    def _topic_cached_fresh(self, name: str) -> _log.TopicRecord:
        validate_topic_name(name)
        with self._read() as txn:
            return self._topic(txn, name)

    def partitions_for(self, name: str) -> int:
        """Number of partitions of topic ``name``."""
        return len(self._topic_cached_fresh(name).pids)

    def describe_topic(self, name: str) -> TopicDescription:
        """Configuration and per-partition state (offsets, messages, bytes, timestamps)."""
        validate_topic_name(name)
        env = self._live_env()
        with self._read() as txn:
            rec = self._topic(txn, name)
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
    def _write(self) -> _WriteTxn:
        return _WriteTxn(self._live_env())

    def _choose_partition(self, rec: _log.TopicRecord, key: Any, partition: int | None,
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
        return next(self._rr) % n

    def _append_in(self, txn: Any, rec: _log.TopicRecord, part: int,
                   batches: list[bytes]) -> tuple[int, _log.PartitionState]:
        """Append encoded batches to partition ``part`` of ``rec`` inside ``txn``.

        Every append path goes through here (``send`` inlines the same steps
        for one record): partition state, space accounting, retention.
        Returns the first offset written and the partition's updated state.
        """
        env = self._env
        pid = rec.pids[part]
        st = _log.load_state_w(txn, env, pid)
        base = _log.append_batches(txn, env.dbs, pid, batches, st)
        self._after_append(txn, env, rec, pid, st, sum(len(b) for b in batches))
        _log.store_state(txn, env.dbs, pid, st)
        return base, st

    def _after_append(self, txn: Any, env: Env, rec: _log.TopicRecord, pid: int,
                      st: _log.PartitionState, nbytes: int) -> None:
        """Space accounting and rate-limited retention, inside the append transaction."""
        self._writes += 1
        self._bytes_since_check += nbytes
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

    def _maybe_check_space(self, env: Env, txn: Any, nbytes: int) -> None:
        if (self._writes % _SPACE_CHECK_EVERY == 0
                or self._bytes_since_check + nbytes >= _SPACE_CHECK_BYTES):
            self._bytes_since_check = 0
            env.check_space(txn)

    def send(
        self,
        topic: str,
        value: Any,
        key: Any = None,
        headers: Sequence[tuple[str, Any]] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        dedup_id: str | bytes | None = None,
        *,
        delay: float | None = None,
        deliver_at: float | None = None,
    ) -> RecordMetadata:
        """Append one message in its own transaction and return where it was stored.

        When this returns, the message is committed (on disk under
        ``"sync"``).  The partition is ``partition`` if given, else Kafka's
        murmur2 of ``key`` when there is a key, else round-robin.

        Parameters
        ----------
        value, key
            Bytes-like (``bytes``, ``bytearray``, ``memoryview``); ``key`` may
            be ``None`` (distinct from ``b""``).
        headers
            Ordered ``(str, bytes)`` pairs; names may repeat.
        dedup_id
            Makes the send idempotent within the topic's dedup window: a
            repeat appends nothing and returns the first send's metadata.
        delay, deliver_at
            Hold the message back: it is appended (and visible) only once due
            (``delay`` seconds from now, or at the UNIX time ``deliver_at``).
            The returned metadata then has ``offset == -1``.

        Raises
        ------
        TopicNotFoundError, PartitionNotFoundError, MessageTooLargeError,
        StorageFullError, TypeError, ValueError
        """
        if delay is not None or deliver_at is not None:
            from mqlite.scheduler import schedule_send

            return schedule_send(self, topic, value, key=key, headers=headers,
                                 partition=partition, timestamp_ms=timestamp_ms,
                                 dedup_id=dedup_id, delay=delay, deliver_at=deliver_at)
        if type(topic) is not str:
            validate_topic_name(topic)
        ts = time.time_ns() // 1_000_000 if timestamp_ms is None else require_int(
            timestamp_ms, "timestamp_ms", minimum=0)
        env = self._env
        if self._closed:
            raise ClosedError("this broker handle is closed; call mqlite.open() again")
        rec = env.topic_cache.get(topic) or self._topic_cached(topic)
        maxb = rec.config["max_message_bytes"]
        kk = None if key is None else (key,)
        hh = None if headers is None else (headers,)
        batches = _core.encode_batches((value,), kk, hh, ts, max_message_bytes=maxb)
        dkey = None if dedup_id is None else _dedup_key(topic, dedup_id)
        txn = env.write_txn()
        try:
            rec2 = self._topic(txn, topic)
            if rec2 is not rec:
                if rec2.config["max_message_bytes"] != maxb:
                    batches = _core.encode_batches((value,), kk, hh, ts,
                                                   max_message_bytes=rec2.config["max_message_bytes"])
                rec = rec2
            if dkey is not None:
                hit = _dedup_lookup(txn, env, dkey, now_ms())  # expiry is wall time, not ts
                if hit is not None:
                    env.abort(txn)
                    return RecordMetadata(topic, hit[1], hit[2], hit[3])
            pids = rec.pids
            if partition is None and key is None and len(pids) == 1:
                part = 0
            else:
                part = self._choose_partition(rec, key, partition)
            pid = pids[part]
            batch = batches[0]
            nbytes = len(batch)
            self._maybe_check_space(env, txn, nbytes)
            st = _log.load_state_w(txn, env, pid)
            off = st.next
            txn.put(_record_key(pid, off), batch, db=env.dbs["records"])
            st.next = off + 1
            st.bytes += nbytes
            if st.first_ts < 0:
                st.first_ts = ts
            if ts > st.last_ts:
                st.last_ts = ts
            if rec.config["retention_ms"] is not None or rec.config["retention_bytes"] \
                    is not None or rec.config["retention_messages"] is not None:
                self._after_append(txn, env, rec, pid, st, nbytes)
            else:
                self._writes += 1
                self._bytes_since_check += nbytes
            _log.store_state(txn, env.dbs, pid, st)
            if dkey is not None:
                _dedup_store(txn, env, dkey, rec, part, off, ts)
        except BaseException as exc:
            err = env.abort_with(txn, exc, f"send to {topic!r}")
            if err is exc:
                raise
            raise err from exc
        env.commit(txn)
        n = env.notifier
        n.bump(env.slot_cache.get(topic) or env.topic_slot(topic))
        n.bump(0)
        return _tuple_new(RecordMetadata, (topic, part, off, ts))

    def send_batch(
        self,
        topic: str,
        values: Sequence[Any],
        keys: Sequence[Any] | None = None,
        partition: int | None = None,
        *,
        headers: Sequence[Sequence[tuple[str, Any]] | None] | None = None,
        timestamp_ms: int | Sequence[int] | None = None,
    ) -> BatchMetadata:
        """Append many messages in one transaction; all or nothing.

        Without ``keys`` and ``partition`` the whole batch goes to one
        partition (round-robin between calls), so it stays in order.  With
        ``keys`` each message goes to its key's murmur2 partition (keys may
        contain ``None``: those go to one round-robin partition).

        Returns
        -------
        BatchMetadata
            Compact: per-partition offset ranges; ``md[i]`` builds message
            ``i``'s :class:`RecordMetadata` on demand.

        Raises
        ------
        TopicNotFoundError, PartitionNotFoundError, MessageTooLargeError,
        StorageFullError, TypeError, ValueError (empty ``values`` or length
        mismatch)
        """
        values = _check_values_arg(values)
        if not values:
            raise ValueError("send_batch needs at least one value")
        if keys is not None:
            keys = _check_values_arg(keys)
            if len(keys) != len(values):
                raise ValueError(f"len(keys) == {len(keys)} but len(values) == {len(values)}")
        if headers is not None and len(headers) != len(values):
            raise ValueError(f"len(headers) == {len(headers)} but len(values) == {len(values)}")
        ts = now_ms() if timestamp_ms is None else timestamp_ms
        if isinstance(ts, bool) or not isinstance(ts, (int, Sequence)):
            raise TypeError("timestamp_ms must be an int or a sequence of ints")
        if ts < 0 if isinstance(ts, int) else any(type(t) is int and t < 0 for t in ts):
            raise ValueError("timestamp_ms must be >= 0 (UNIX time in milliseconds)")
        env = self._live_env()
        rec = self._topic_cached(topic)
        n = len(rec.pids)
        # Group messages by partition (only when keys spread them).
        assignment: list[int] | None = None
        if keys is not None and partition is None and n > 1:
            rr = next(self._rr) % n
            pfk = _core.partition_for_key
            assignment = [rr if k is None else pfk(k, n) for k in keys]
            if len(set(assignment)) == 1:
                partition, assignment = assignment[0], None
        if assignment is None:
            part = self._choose_partition(rec, None, partition) if (
                partition is not None or n == 1) else next(self._rr) % n
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
        txn = env.write_txn()
        try:
            rec2 = self._topic(txn, topic)
            if rec2.pids != rec.pids or rec2.config != rec.config:
                env.abort(txn)
                return self.send_batch(topic, values, keys, partition, headers=headers,
                                       timestamp_ms=timestamp_ms)
            self._bytes_since_check = _SPACE_CHECK_BYTES  # force a check for bulk writes
            self._maybe_check_space(env, txn, total)
            for part, batches in groups:
                base, st = self._append_in(txn, rec, part, batches)
                ranges.append(PartitionRange(part, base, st.next - base))
        except BaseException as exc:
            err = env.abort_with(txn, exc, f"send_batch to {topic!r}")
            if err is exc:
                raise
            raise err from exc
        env.commit(txn)
        env.notify_topics((topic,))
        return BatchMetadata(topic, first_ts, ranges, assignment)

    def apply_retention(self, topic: str | None = None) -> int:
        """Apply retention rules now (they also run on appends); returns batches deleted."""
        env = self._live_env()
        if topic is not None:
            validate_topic_name(topic)
        names = [topic] if topic is not None else self.topics()
        deleted = 0
        now = now_ms()
        with self._write() as txn:
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
    def consumer(self, topics: str | Iterable[str] | None = None, group: str | None = None,
                 **options: Any) -> Any:
        """A log consumer; see :class:`mqlite.consumer.Consumer`."""
        from mqlite.consumer import Consumer

        return Consumer(self, topics, group=group, **options)

    def producer(self, **options: Any) -> Any:
        """A batching, thread-safe producer; see :class:`mqlite.producer.Producer`."""
        from mqlite.producer import Producer

        return Producer(self, **options)

    def queue(self, topic: str, group: str, **options: Any) -> Any:
        """A competing-consumer queue over ``topic``; see :class:`mqlite.queue.Queue`."""
        from mqlite.queue import Queue

        return Queue(self, topic, group, **options)

    def groups(self) -> list[str]:
        """Names of the stream-mode consumer groups (including empty ones that had members)."""
        from mqlite.groups import list_groups

        return [g for g in list_groups(self) if not g.startswith("~")]

    def describe_group(self, group: str) -> Any:
        """Members, generation, committed offsets and lag of a consumer group."""
        from mqlite.groups import describe_group

        self._live_env()
        return describe_group(self, group)

    def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        """Committed offsets of ``group`` on each partition of ``topic`` (absent = none)."""
        from mqlite.groups import read_offset

        validate_topic_name(topic)
        env = self._live_env()
        out = {}
        with env.read_txn() as txn:
            rec = self._topic(txn, topic)
            for i, pid in enumerate(rec.pids):
                v = read_offset(txn, env.dbs, group, pid)
                if v is not None:
                    out[i] = v.offset
        return out

    def dead_letters(self, topic: str, limit: int = 1000) -> list[Any]:
        """Dead letters in dead-letter topic ``topic`` not yet redriven or purged."""
        from mqlite.queue import dead_letters

        return dead_letters(self, topic, limit)

    def redrive(self, topic: str, where: Callable[[Any], bool] | None = None,
                limit: int | None = None, to_topic: str | None = None) -> int:
        """Send dead letters of ``topic`` back to their original topic; returns how many."""
        from mqlite.queue import redrive

        return redrive(self, topic, where, limit, to_topic)

    def purge_dead_letters(self, topic: str, where: Callable[[Any], bool] | None = None) -> int:
        """Discard dead letters of ``topic`` (all, or those ``where`` accepts)."""
        from mqlite.queue import purge_dead_letters

        return purge_dead_letters(self, topic, where)

    def promote_scheduled(self) -> int:
        """Append delayed messages that are due now (consumers also do this)."""
        from mqlite.scheduler import promote_due

        self._live_env()
        return promote_due(self)

    # -- routing and transactions ------------------------------------------------------------
    def declare_exchange(self, name: str, type: str = "direct", *,  # noqa: A002
                         alternate_exchange: str | None = None, exist_ok: bool = True) -> None:
        """Declare an exchange (``direct``, ``fanout``, ``topic`` or ``headers``).

        Re-declaring with the same type is a no-op; with another type it is
        :class:`ExchangeExistsError`.  See :mod:`mqlite.routing`.
        """
        from mqlite.routing import declare_exchange

        declare_exchange(self, name, type, alternate_exchange=alternate_exchange,
                         exist_ok=exist_ok)

    def delete_exchange(self, name: str) -> None:
        """Delete an exchange and its bindings."""
        from mqlite.routing import delete_exchange

        delete_exchange(self, name)

    def exchanges(self) -> list[str]:
        """Names of all exchanges."""
        from mqlite.routing import list_exchanges

        return list_exchanges(self)

    def bind(self, exchange: str, topic: str, routing_key: str | None = None, *,
             headers: dict[str, Any] | None = None, match: str = "all") -> None:
        """Bind ``topic`` to ``exchange`` (routing key pattern, or header match)."""
        from mqlite.routing import bind

        bind(self, exchange, topic, routing_key, headers=headers, match=match)

    def unbind(self, exchange: str, topic: str, routing_key: str | None = None, *,
               headers: dict[str, Any] | None = None, match: str = "all") -> None:
        """Remove a binding made by :meth:`bind` (same arguments)."""
        from mqlite.routing import unbind

        unbind(self, exchange, topic, routing_key, headers=headers, match=match)

    def publish(self, exchange: str, routing_key: str, value: Any, *, key: Any = None,
                headers: Sequence[tuple[str, Any]] | None = None,
                timestamp_ms: int | None = None, mandatory: bool = False) -> list[RecordMetadata]:
        """Route one message through ``exchange`` to every matching topic, in one transaction.

        Returns the metadata of every copy written (empty when nothing
        matched and there is no alternate exchange; with ``mandatory=True``
        that raises :class:`UnroutableError` instead).
        """
        from mqlite.routing import publish

        return publish(self, exchange, routing_key, value, key=key, headers=headers,
                       timestamp_ms=timestamp_ms, mandatory=mandatory)

    def transaction(self) -> Any:
        """``with broker.transaction() as tx:`` — sends, offset commits and acks, atomically.

        See :class:`mqlite.transaction.Transaction`.
        """
        from mqlite.transaction import Transaction

        return Transaction(self)

    def is_processed(self, event_id: str | bytes, scope: str = "default") -> bool:
        """Whether a transaction recorded ``event_id`` as processed (and it has not expired)."""
        from mqlite.transaction import is_processed

        return is_processed(self, event_id, scope)

    def read(self, topic: str, partition: int = 0, offset: int = 0,
             max_records: int = 500) -> list[_core.Message]:
        """Read up to ``max_records`` messages of one partition from ``offset`` (no group)."""
        validate_topic_name(topic)
        require_int(offset, "offset", minimum=0)
        require_int(max_records, "max_records", minimum=1)
        env = self._live_env()
        out: list[_core.Message] = []
        with self._read() as txn:
            rec = self._topic(txn, topic)
            if not isinstance(partition, int) or isinstance(partition, bool):
                raise TypeError(f"partition must be int, not {type(partition).__name__}")
            if not 0 <= partition < len(rec.pids):
                raise PartitionNotFoundError(f"no partition {partition!r} in topic {topic!r}")
            pid = rec.pids[partition]
            st = _log.load_state(txn, env.dbs, pid)
            _log.read_records(txn, env.dbs, pid, max(offset, st.start), max_records, out,
                              topic, partition, st.next)
        return out


class _WriteTxn:
    """Context manager: one LMDB write transaction with error conversion."""

    __slots__ = ("_env", "_txn")

    def __init__(self, env: Env) -> None:
        self._env = env
        self._txn: Any = None

    def __enter__(self) -> Any:
        self._txn = self._env.write_txn()
        return self._txn

    def __exit__(self, et: Any, exc: Any, tb: Any) -> None:
        txn = self._txn
        if et is not None:
            err = self._env.abort_with(txn, exc, "write")
            if err is not exc:
                raise err from exc
            return
        self._env.commit(txn)


# -- dedup ----------------------------------------------------------------------------------

def _dedup_key(topic: str, dedup_id: str | bytes) -> bytes:
    if isinstance(dedup_id, str):
        raw = dedup_id.encode()
    elif isinstance(dedup_id, (bytes, bytearray)):
        raw = bytes(dedup_id)
    else:
        raise TypeError(f"dedup_id must be str or bytes, not {type(dedup_id).__name__}")
    if not raw or len(raw) > 256:
        raise ValueError("dedup_id must be 1-256 bytes")
    key = b"k" + topic.encode() + b"\x00" + raw
    if len(key) > _DEDUP_KEY_MAX:
        # LMDB keys are at most 511 bytes and the expiry index adds 9 to this key.
        key = b"h" + topic.encode() + b"\x00" + hashlib.blake2b(raw, digest_size=32).digest()
    return key


def _dedup_lookup(txn: Any, env: Env, dkey: bytes, now: int) -> tuple[int, int, int, int] | None:
    raw = txn.get(dkey, db=env.dbs["dedup"])
    if raw is None:
        return None
    hit = _DEDUP.decode(raw)  # (expires_ms, partition, offset, timestamp_ms)
    if hit[0] < now:
        return None
    return hit


def _dedup_store(txn: Any, env: Env, dkey: bytes, rec: _log.TopicRecord, part: int, off: int,
                 ts: int) -> None:
    db = env.dbs["dedup"]
    now = now_ms()
    expires = now + rec.config["dedup_window_ms"]
    txn.put(dkey, _DEDUP_ENC.encode((expires, part, off, ts)), db=db)
    txn.put(b"x" + expires.to_bytes(8, "big") + dkey, b"", db=db)
    _dedup_sweep(txn, db, now, limit=16)


def _dedup_sweep(txn: Any, db: Any, now: int, limit: int) -> None:
    """Forget up to ``limit`` expired dedup ids (oldest first, by the expiry index)."""
    cur = txn.cursor(db=db)
    if not cur.set_range(b"x"):
        return
    for _ in range(limit):
        k = cur.key()
        if not k or k[:1] != b"x" or int.from_bytes(k[1:9], "big") >= now:
            return
        dkey = bytes(k[9:])
        raw = txn.get(dkey, db=db)
        if raw is not None and _DEDUP.decode(raw)[0] < now:
            txn.delete(dkey, db=db)
        if not cur.delete():
            return


# Hooks other modules register to clean their state when a topic is deleted
# (offsets, pending entries, bindings): called inside the delete transaction.
_TOPIC_DELETE_HOOKS: list[Callable[[Any, dict[str, Any], _log.TopicRecord], None]] = []


def _consumed_floor(txn: Any, env: Env, rec: _log.TopicRecord, pid: int) -> int | None:
    """Lowest offset some queue group still needs (``cleanup="consumed"``); hook-provided."""
    floors = [f(txn, env.dbs, rec, pid) for f in _CONSUMED_FLOOR_HOOKS]
    floors = [f for f in floors if f is not None]
    return min(floors) if floors else None


_CONSUMED_FLOOR_HOOKS: list[Callable[..., int | None]] = []
