"""Queue mode: competing consumers with per-message acks (SQS / RabbitMQ style).

A queue group reads one topic.  Its durable state is (docs/queue.md):

* ``groups``  ``"~q~<topic>~<group>"`` -> :class:`QueueMeta` (live consumers,
  a lower bound of the earliest ``visible_at`` of its pending entries, and
  the group's retry / dead-letter :class:`QueuePolicy`);
* ``offsets`` ``"~q~<topic>~<group>" NUL pid`` -> the cursor (u64 BE): the next
  offset never delivered to the group;
* ``pending`` one entry per *delivery range*, not per message::

      key   = "~q~<topic>~<group>" NUL  pid u32 BE  first offset u64 BE  uid u32 BE
      value = visible_at_ms u64 | token u64 | first_ms u64 | last_ms u64 |
              delivery_count u32 | owner 16 bytes | span u32 | error length u32 |
              bitmap (ceil(span / 8) bytes; bit i = offset first+i still pending) |
              last error (UTF-8)

  A ``receive()`` of 1,000 new messages writes one entry; acks clear bits and
  delete the entry with its last bit.  A message that is nacked, extended or
  dead-lettered alone is split out into an entry of its own, so every message
  keeps its own delivery count, visibility and error.

An entry whose ``visible_at`` has passed (visibility timeout expired, nacked,
or its owner died) is delivered again under a fresh token with its count
raised; at ``max_deliveries`` it moves to the dead-letter topic in the same
transaction that removes it from ``pending``.  Acks and nacks present the
token their delivery was made under, so a late one is refused with
:class:`~mqlite.StaleDeliveryError` and changes nothing.

Owner liveness is the kernel's: each :class:`Queue` holds a ``flock`` on a
file under ``members/``; a watcher thread in every live queue consumer of the
group probes the others' locks every 50 ms and releases a dead owner's
entries at once (the kernel drops a lock when its process dies).
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Self

import msgspec

from mqlite import _core
from mqlite._engine import on_consumed_floor, on_topic_delete
from mqlite._lifecycle import UseGuard, guarded
from mqlite._storage import log as _log
from mqlite._storage.keys import group_pid_key
from mqlite.config import (
    MAX_DELAY_S,
    MAX_VISIBILITY_TIMEOUT_S,
    UNSET,
    TopicConfig,
    require_int,
    require_positive_number,
    require_seconds,
    validate_group_name,
    validate_topic_name,
)
from mqlite.config import Unset as _Unset
from mqlite.errors import (
    ClosedError,
    GroupError,
    MqliteError,
    QueueConfigConflictError,
    StaleDeliveryError,
    TopicNotFoundError,
)
from mqlite.groups import _ensure_members_dir, _unlink_quiet, members_dir, register_lock_holder
from mqlite.retry import Backoff, resolve_backoff

if TYPE_CHECKING:
    from mqlite._engine import Engine

__all__ = ["UNSET", "DeadLetter", "Delivery", "Queue", "QueuePolicy", "dead_letters",
           "purge_dead_letters", "queue_policy", "redrive", "set_queue_policy"]

_HDR = struct.Struct(">QQQQI16sII")  # visible, token, first_ms, last_ms, count, owner, span, errlen
_HSIZE = _HDR.size
_U64 = struct.Struct(">Q")
_PK = struct.Struct(">IQI")  # pid, first offset, uid
_WATCH_INTERVAL = 0.05  # liveness probe period: dead owners are noticed within this
_FOREVER = (1 << 63) - 1
_NOBODY = b"\x00" * 16
_MAX_ERROR = 4096

H_TOPIC = "x-original-topic"
H_PARTITION = "x-original-partition"
H_OFFSET = "x-original-offset"
H_COUNT = "x-delivery-count"
H_ERROR = "x-last-error"
H_FIRST = "x-first-delivery-ms"
H_LAST = "x-last-delivery-ms"
H_REASON = "x-dead-letter-reason"
H_GROUP = "x-original-group"
H_TIME = "x-dead-lettered-ms"
_DLQ_HEADERS = frozenset({H_TOPIC, H_PARTITION, H_OFFSET, H_COUNT, H_ERROR, H_FIRST, H_LAST,
                          H_REASON, H_GROUP, H_TIME})
REASON_MAX_DELIVERIES = "max deliveries exceeded"
ERROR_TIMEOUT = "visibility timeout expired"
ERROR_OWNER_DIED = "consumer died"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _seconds_ms(value: float, name: str, *, allow_zero: bool, maximum: float) -> int:
    require_seconds(value, name, maximum=maximum, allow_zero=allow_zero)
    return int(value * 1000)


class QueuePolicy(msgspec.Struct, frozen=True):
    """A queue group's retry and dead-letter policy, stored with the group.

    Attributes
    ----------
    max_deliveries
        A message delivered this many times that is nacked or times out again
        is dead-lettered; ``None`` = retry forever.
    dead_letter_topic
        Where dead letters go; ``None`` = they are dropped.
    retry_backoff
        Delay before a nacked message is visible again; ``None`` = at once.
    """

    max_deliveries: int | None = None
    dead_letter_topic: str | None = None
    retry_backoff: Backoff | None = None


class QueueMeta(msgspec.Struct):
    topic: str
    consumers: dict[str, str] = {}  # owner id -> lock file name
    min_visible_ms: int = _FOREVER  # <= the visible_at of every pending entry
    # None only in groups written before policies were stored: the next consumer sets it
    policy: QueuePolicy | None = None


_enc = msgspec.msgpack.Encoder()
_dec_meta = msgspec.msgpack.Decoder(QueueMeta)


def _qg(topic: str, group: str) -> str:
    # "~" is not allowed in topic or group names: no collision with stream groups.
    return f"~q~{topic}~{group}"


def _given_policy(topic: str, max_deliveries: int | None | _Unset,
                  dead_letter_topic: str | None | _Unset,
                  retry_backoff: Backoff | float | None | _Unset) -> dict[str, Any]:
    """The policy fields a caller gave explicitly, validated (``UNSET`` ones left out)."""
    given: dict[str, Any] = {}
    if max_deliveries is not UNSET:
        require_int(max_deliveries, "max_deliveries", minimum=1, allow_none=True)
        given["max_deliveries"] = max_deliveries
    if dead_letter_topic is not UNSET:
        if dead_letter_topic is not None:
            validate_topic_name(dead_letter_topic, "dead_letter_topic")
            if dead_letter_topic == topic:
                raise ValueError("dead_letter_topic must differ from the queue's topic")
        given["dead_letter_topic"] = dead_letter_topic
    if retry_backoff is not UNSET:
        given["retry_backoff"] = resolve_backoff(retry_backoff)
    return given


def _merge_policy(stored: QueuePolicy | None, given: dict[str, Any], topic: str, group: str,
                  *, alter: bool) -> QueuePolicy:
    """The group's policy after a consumer (``alter=False``) or an admin call joins.

    The first consumer's explicit values (defaults for the rest) become the
    group's policy; later consumers adopt it and may repeat its values, but a
    differing value raises :class:`QueueConfigConflictError`.
    """
    if stored is None or alter:
        return msgspec.structs.replace(stored or QueuePolicy(), **given)
    diff = {k: v for k, v in given.items() if getattr(stored, k) != v}
    if diff:
        have = ", ".join(f"{k}={getattr(stored, k)!r}" for k in _POLICY_FIELDS)
        want = ", ".join(f"{k}={v!r}" for k, v in diff.items())
        raise QueueConfigConflictError(
            f"queue group {group!r} of topic {topic!r} has the stored policy {have}; this "
            f"consumer asked for {want}.  The retry/dead-letter policy belongs to the group: "
            f"pass the stored values or leave them out to adopt them, or change the group's "
            f"policy with broker.set_queue_policy({topic!r}, {group!r}, ...)")
    return stored


_POLICY_FIELDS = ("max_deliveries", "dead_letter_topic", "retry_backoff")


def _ones(n: int) -> bytearray:
    full, rem = divmod(n, 8)
    bm = bytearray(b"\xff" * full)
    if rem:
        bm.append((1 << rem) - 1)
    return bm


def _bits(bm: bytearray | bytes) -> list[int]:
    """Indices of the set bits, ascending."""
    out = []
    for j, b in enumerate(bm):
        if b:
            base = j << 3
            for i in range(8):
                if b >> i & 1:
                    out.append(base + i)
    return out


class _Entry:
    """One decoded pending entry (a delivery range)."""

    __slots__ = (
        "bm",
        "count",
        "error",
        "first",
        "first_ms",
        "key",
        "last_ms",
        "owner",
        "pid",
        "span",
        "token",
        "visible",
    )

    def __init__(self, key: bytes, pid: int, first: int, visible: int, token: int,
                 first_ms: int, last_ms: int, count: int, owner: bytes, span: int,
                 bm: bytearray, error: str) -> None:
        self.key = key
        self.pid = pid
        self.first = first
        self.visible = visible
        self.token = token
        self.first_ms = first_ms
        self.last_ms = last_ms
        self.count = count
        self.owner = owner
        self.span = span
        self.bm = bm
        self.error = error

    @classmethod
    def decode(cls, key: bytes, raw: Any) -> _Entry:
        raw = bytes(raw)
        v, t, f, la, c, o, span, elen = _HDR.unpack_from(raw)
        nb = (span + 7) >> 3
        pid, first, _ = _PK.unpack_from(key, len(key) - _PK.size)
        err = raw[_HSIZE + nb:_HSIZE + nb + elen].decode("utf-8", "replace") if elen else ""
        return cls(key, pid, first, v, t, f, la, c, o, span, bytearray(raw[_HSIZE:_HSIZE + nb]),
                   err)

    def encode(self) -> bytes:
        err = self.error.encode("utf-8")[:_MAX_ERROR] if self.error else b""
        return _HDR.pack(self.visible, self.token, self.first_ms, self.last_ms, self.count,
                         self.owner, self.span, len(err)) + self.bm + err

    def offsets(self) -> list[int]:
        f = self.first
        return [f + i for i in _bits(self.bm)]

    def has(self, off: int) -> bool:
        i = off - self.first
        return 0 <= i < self.span and bool(self.bm[i >> 3] >> (i & 7) & 1)

    def clear(self, off: int) -> None:
        i = off - self.first
        self.bm[i >> 3] &= ~(1 << (i & 7)) & 0xFF

    def empty(self) -> bool:
        return not any(self.bm)

    def pending_count(self) -> int:
        return int.from_bytes(self.bm, "little").bit_count()


class _Receipt:
    """Delivery state shared by the messages of one pending entry (one receive)."""

    __slots__ = ("count", "first", "key", "pid", "qg", "queue", "token", "visible")

    def __init__(self, queue: Queue, key: bytes, token: int, count: int, visible: int,
                 first: int, pid: int) -> None:
        self.queue = queue
        self.qg = queue._qg
        self.key = key
        self.token = token
        self.count = count
        self.visible = visible
        self.first = first
        self.pid = pid


class Delivery(_core.Message):
    """A received message plus its delivery state (see :class:`Queue`).

    Attributes
    ----------
    delivery_count
        1 on the first delivery, raised on each redelivery (durable).
    receipt
        The delivery's token: acks and nacks must present it.
    visible_at_ms
        When the message becomes visible to other consumers unless settled.

    Immutable; any thread may settle it (through its thread-safe :class:`Queue`).
    """

    __slots__ = ("_r",)
    _r: _Receipt

    @property
    def delivery_count(self) -> int:
        return self._r.count

    @property
    def receipt(self) -> int:
        return self._r.token

    @property
    def visible_at_ms(self) -> int:
        return self._r.visible

    @property
    def _queue(self) -> Queue:
        return self._r.queue

    def ack(self) -> None:
        """Acknowledge: the message is done and will not be delivered again.

        Raises :class:`StaleDeliveryError` (changing nothing) when this
        delivery is no longer valid: it timed out and was redelivered, its
        owner was declared dead, or it was already settled.
        """
        self._r.queue._settle_one(self, "ack")

    def nack(self, delay: float | None = None, error: str | None = None) -> None:
        """Give the message back: visible again after ``delay`` seconds (default: the
        queue's backoff), or dead-lettered when it reached ``max_deliveries``."""
        self._r.queue.nack(self, delay=delay, error=error)

    def dead_letter(self, reason: str = "rejected") -> None:
        """Move the message to the dead-letter topic now (or drop it when there is none)."""
        self._r.queue.dead_letter(self, reason=reason)

    def extend(self, seconds: float) -> None:
        """Keep the message invisible to others for ``seconds`` more from now."""
        self._r.queue.extend(self, seconds)

    def __repr__(self) -> str:
        return (f"Delivery(topic={self.topic!r}, partition={self.partition}, "
                f"offset={self.offset}, delivery_count={self.delivery_count})")

    def __reduce__(self) -> Any:
        # Delivery state is process-local: a pickled delivery is a plain Message.
        return (_core.Message, (self.topic, self.partition, self.offset, self.timestamp_ms,
                                self.key, self.value, self.headers))




class Queue:
    """Competing consumers over one topic with per-message acknowledgement.

    Thread-safe: several threads may receive and settle through one
    ``Queue``; :meth:`wakeup` and :meth:`close` may also come from signal
    handlers.  Any number of ``Queue`` objects in any number of processes may
    consume the same group.  A ``Queue`` belongs to the process that created
    it: in a forked child it raises :class:`~mqlite.GroupError` (create a new
    one there, which joins the group as a member of its own).

    Parameters
    ----------
    engine
        The engine of the broker (``Broker.queue`` passes it).
    topic
        Topic to consume (must exist).
    group
        Queue group: every group gets every message once; within a group each
        message goes to one consumer at a time.  Independent of stream-mode
        consumer groups of the same name.
    visibility_timeout
        Seconds (not milliseconds) a received message stays invisible to
        others before it is redelivered if not acked (default 30;
        ``0 < visibility_timeout <= 43200``, 12 hours, as SQS).
    max_deliveries
        A message delivered this many times that is nacked or times out again
        is dead-lettered (``None`` = retry forever).  Without
        ``dead_letter_topic`` it is dropped (like RabbitMQ without a DLX).
    dead_letter_topic
        Where dead letters go; created (1 partition) if missing.
    retry_backoff
        Delay before a nacked message is visible again: ``None`` (at once), a
        number of seconds (at most 10 years), or a :class:`mqlite.Backoff`.

    ``max_deliveries``, ``dead_letter_topic`` and ``retry_backoff`` are the
    *group's* policy, stored durably with the group (:class:`QueuePolicy`):
    the group's first consumer sets it (its explicit values, the defaults
    ``None`` for the rest); a later consumer that leaves an option out
    (``UNSET``) adopts the stored value, one that passes the stored value is
    fine, and one that passes a different value raises
    :class:`~mqlite.QueueConfigConflictError`.  Change a group's policy with
    :meth:`Broker.set_queue_policy`; live consumers pick the change up at their
    next ``receive()``.  ``visibility_timeout`` is per consumer.

    Raises
    ------
    QueueConfigConflictError
        An explicit policy value differs from the group's stored policy.
    TopicNotFoundError, TypeError, ValueError
    """

    def __init__(self, engine: Engine, topic: str, group: str, *,
                 visibility_timeout: float = 30.0,
                 max_deliveries: int | None | _Unset = UNSET,
                 dead_letter_topic: str | None | _Unset = UNSET,
                 retry_backoff: Backoff | float | None | _Unset = UNSET) -> None:
        validate_topic_name(topic)
        validate_group_name(group)
        self.visibility_timeout_ms = _seconds_ms(visibility_timeout, "visibility_timeout",
                                                 allow_zero=False,
                                                 maximum=MAX_VISIBILITY_TIMEOUT_S)
        self._given = _given_policy(topic, max_deliveries, dead_letter_topic, retry_backoff)
        self._policy = QueuePolicy()
        self._backoff: Backoff | None = None
        self._engine = engine
        self._env = engine.live_env()
        self.topic = topic
        self.group = group
        self._qg = _qg(topic, group)
        self._meta_key = self._qg.encode()
        self._prefix = self._meta_key + b"\x00"
        self.max_deliveries: int | None = None
        self.dead_letter_topic: str | None = None
        engine.topic_fresh(topic)
        # fail before creating anything; _register checks again under the write lock
        _merge_policy(queue_policy(engine, topic, group), self._given, topic, group, alter=False)
        if self._given.get("dead_letter_topic") is not None:
            engine.create_topic(self._given["dead_letter_topic"], exist_ok=True)
        self.owner_id = uuid.uuid4().hex[:16]
        self._owner = self.owner_id.encode()
        self._closed = False
        self._rotation = 0
        self._pid = os.getpid()
        self._lock_fd = -1
        self._lock_name = ""
        self._slot = self._env.topic_slot(topic)
        self._life = UseGuard("queue consumer", self._wake_waiter, exclusive=False)
        self._register()
        self._reap_now()
        # held until close(): the watcher sleeps by trying to take it with a timeout, so
        # close() wakes it at once (a timed Event.wait costs ~45 us of CPU per call;
        # a timed lock acquire is one futex wait, like time.sleep)
        self._stop_gate = threading.Lock()
        self._stop_gate.acquire()
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name=f"mqlite-queue-{group}")
        self._thread.start()
        try:
            engine.adopt(self)  # broker.close() closes this queue consumer
        except BaseException:
            self.close()
            raise

    # -- registration / liveness ---------------------------------------------------------
    def _register(self) -> None:
        env = self._env
        d = _ensure_members_dir(env.path, 0o770 if env.shared_group else 0o700)
        name = f"q-{self.owner_id}-{os.getpid()}.lock"
        fd = os.open(os.path.join(d, name),
                     os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     env.file_mode)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock_fd, self._lock_name = fd, name
        register_lock_holder(self)
        try:
            with self._engine.write() as txn:
                meta = self._load_meta(txn)
                meta.policy = _merge_policy(meta.policy, self._given, self.topic, self.group,
                                            alter=False)
                meta.consumers[self.owner_id] = name
                self._store_meta(txn, meta)
            self._adopt(meta.policy)
        except BaseException:
            _unlink_quiet(os.path.join(d, name))
            os.close(fd)
            self._lock_fd = -1
            raise

    def _adopt(self, policy: QueuePolicy) -> None:
        self._policy = policy
        self.max_deliveries = policy.max_deliveries
        self.dead_letter_topic = policy.dead_letter_topic
        self._backoff = policy.retry_backoff

    @property
    def policy(self) -> QueuePolicy:
        """The group's retry/dead-letter policy as of this consumer's last ``receive()``."""
        return self._policy

    def _load_meta(self, txn: Any) -> QueueMeta:
        raw = txn.get(self._meta_key, db=self._env.dbs["groups"])
        if raw is None:
            return QueueMeta(topic=self.topic, consumers={self.owner_id: self._lock_name},
                             min_visible_ms=0)
        return _dec_meta.decode(raw)

    def _store_meta(self, txn: Any, meta: QueueMeta) -> None:
        txn.put(self._meta_key, _enc.encode(meta), db=self._env.dbs["groups"])

    def _watch(self) -> None:
        probes: dict[str, int] = {}  # lock file name -> open fd (one open per member)
        try:
            while True:
                if self._stop_gate.acquire(timeout=_WATCH_INTERVAL):
                    return  # close() released it
                if os.getpid() != self._pid or self._engine.closed \
                        or self._closed:
                    return
                try:
                    self._reap(probes)
                except (MqliteError, OSError):
                    continue
        finally:
            if os.getpid() == self._pid:
                for fd in probes.values():
                    os.close(fd)

    def _probe(self, probes: dict[str, int], mdir: str, lock: str) -> bool:
        """True while the member holding ``lock`` is alive."""
        fd = probes.get(lock)
        if fd is None:
            try:
                fd = os.open(os.path.join(mdir, lock), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                return False
            except OSError:
                return True  # cannot tell: the visibility timeout still applies
            probes[lock] = fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True
            return True
        return False  # we got the lock: its holder is gone (we keep it until reaped)

    def _reap_now(self) -> None:
        """Reap once, synchronously: a consumer started after a crash gets the dead
        consumer's deliveries on its first ``receive``, not a watcher period later."""
        probes: dict[str, int] = {}
        try:
            self._reap(probes)
        except (MqliteError, OSError):
            pass  # the watcher thread tries again every _WATCH_INTERVAL
        finally:
            for fd in probes.values():
                os.close(fd)

    def _reap(self, probes: dict[str, int]) -> bool:
        """Release the entries of dead consumers of this group; True if any died.

        ``probes`` caches one open descriptor per member lock file; the caller
        owns (and eventually closes) the ones left in it.
        """
        env = self._env
        with env.read_txn() as txn:
            raw = txn.get(self._meta_key, db=env.dbs["groups"])
            meta = None if raw is None else _dec_meta.decode(raw)
        if meta is None:
            return False
        mdir = members_dir(env.path)
        live_locks = set(meta.consumers.values())
        for lock in [k for k in probes if k not in live_locks]:
            os.close(probes.pop(lock))
        dead = [cid for cid, lock in meta.consumers.items()
                if cid != self.owner_id and not self._probe(probes, mdir, lock)]
        if not dead:
            return False
        released = 0
        with self._engine.write() as txn:
            meta = self._load_meta(txn)
            gone = {c for c in dead if c in meta.consumers}
            if gone:
                owners = {c.encode() for c in gone}
                pend = env.dbs["pending"]
                for e in self._scan(txn):
                    if e.owner in owners:
                        e.visible, e.token, e.owner = 0, 0, _NOBODY
                        e.error = ERROR_OWNER_DIED
                        txn.put(e.key, e.encode(), db=pend)
                        released += 1
                for c in gone:
                    meta.consumers.pop(c, None)
                if released:
                    meta.min_visible_ms = 0
                self._store_meta(txn, meta)
        for c in dead:
            for lock in [k for k in probes if k.startswith(f"q-{c}-")]:
                _unlink_quiet(os.path.join(mdir, lock))
                os.close(probes.pop(lock))
        if released:
            env.notify_topics((self.topic,))
        return True

    def _scan(self, txn: Any, pid: int | None = None) -> list[_Entry]:
        """Decoded pending entries of this group (of one partition id when given)."""
        prefix = self._prefix if pid is None else self._prefix + pid.to_bytes(4, "big")
        return [_Entry.decode(k, v)
                for k, v in _log.prefix_items(txn, self._env.dbs["pending"], prefix)]

    # -- receiving -------------------------------------------------------------------------
    @guarded
    def receive(self, max_messages: int = 10, timeout: float = 1.0,
                visibility_timeout: float | None = None) -> list[Delivery]:
        """Take up to ``max_messages`` messages, waiting up to ``timeout`` s for some.

        Redeliveries (expired, released or nacked messages that are due) come
        first, then new messages in offset order per partition.  Each returned
        message is invisible to other consumers of the group until acked,
        nacked, or ``visibility_timeout`` (default: the queue's) passes.
        Waiting blocks on the cross-process wake-up word of the topic (no
        polling); it is bounded by the next visibility deadline and the next
        due delayed message.  :meth:`wakeup`, or :meth:`close` from another
        thread or a signal handler, ends the wait at once (an empty list).

        Raises
        ------
        ClosedError, TopicNotFoundError (the topic was deleted),
        CorruptRecordError, TypeError, ValueError
        """
        self._check_open()
        require_int(max_messages, "max_messages", minimum=1)
        require_positive_number(timeout, "timeout")
        vt = self.visibility_timeout_ms
        if visibility_timeout is not None:
            vt = _seconds_ms(visibility_timeout, "visibility_timeout", allow_zero=False,
                             maximum=MAX_VISIBILITY_TIMEOUT_S)
        from mqlite import scheduler

        engine = self._engine
        notifier = self._env.notifier
        slot = self._slot
        deadline = time.monotonic() + timeout
        seq = notifier.load(slot)
        next_due = scheduler.next_due_ms(engine)
        if next_due is not None and next_due <= _now_ms():
            scheduler.promote_due(engine)
        out, next_visible = self._receive_once(max_messages, vt)
        while not out:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return out
                now = _now_ms()
                wait = remaining
                if next_visible < _FOREVER:
                    wait = min(wait, max(0.0, (next_visible - now) / 1000.0) + 0.001)
                if next_due is not None:
                    wait = min(wait, max(0.0, (next_due - now) / 1000.0) + 0.001)
                if self._life.woken():
                    return out
                notifier.wait(slot, seq, wait)
                if self._life.woken():
                    return out
                self._check_open()
                # A wake-up is a hint: look before taking the write lock.
                seq = notifier.load(slot)
                next_due = scheduler.next_due_ms(engine)
                now = _now_ms()
                if next_due is not None and next_due <= now:
                    scheduler.promote_due(engine)
                    break
                avail, next_visible = self._peek(now)
                if avail:
                    break
            out, next_visible = self._receive_once(max_messages, vt)
        return out

    def _peek(self, now: int) -> tuple[bool, int]:
        """(something may be receivable now, earliest visible_at hint) in a read txn."""
        env = self._env
        dbs = env.dbs
        with env.read_txn() as txn:
            raw = txn.get(self._meta_key, db=dbs["groups"])
            hint = 0 if raw is None else _dec_meta.decode(raw).min_visible_ms
            if hint <= now:
                return True, hint
            rec = self._engine.topic(txn, self.topic)
            for pid in rec.pids:
                st = _log.load_state(txn, dbs, pid)
                c = txn.get(group_pid_key(self._qg, pid), db=dbs["offsets"])
                cursor = 0 if c is None else _U64.unpack(c)[0]
                if max(cursor, st.start) < st.next:
                    return True, hint
        return False, hint

    def _receive_once(self, max_messages: int, vt: int) -> tuple[list[Delivery], int]:
        engine = self._engine
        env = self._env
        dbs = env.dbs
        topic = self.topic
        now = _now_ms()
        taken: list[tuple[_Receipt, int, list[_core.Message]]] = []
        got = 0
        dlq_moved = False
        txn = env.write_txn()
        try:
            rec = engine.topic(txn, topic)
            meta = self._load_meta(txn)
            if meta.policy is not None and meta.policy != self._policy:
                self._adopt(meta.policy)  # changed by set_queue_policy
            hint = meta.min_visible_ms
            # 1. redeliveries that are due
            if hint <= now:
                got, dlq_moved, hint = self._redeliver(txn, rec, now, vt, max_messages, taken)
            # 2. new messages
            if got < max_messages:
                pids = rec.pids
                n = len(pids)
                start = self._rotation % n
                self._rotation += 1
                offs = dbs["offsets"]
                pend = dbs["pending"]
                visible = now + vt
                for i in range(n):
                    part = (start + i) % n
                    pid = pids[part]
                    ckey = group_pid_key(self._qg, pid)
                    raw = txn.get(ckey, db=offs)
                    cursor = 0 if raw is None else _U64.unpack(raw)[0]
                    st = _log.load_state_w(txn, env, pid)
                    cursor = max(cursor, st.start)
                    if cursor >= st.next:
                        continue
                    msgs: list[_core.Message] = []
                    nxt = _log.read_records(txn, dbs, pid, cursor, max_messages - got, msgs,
                                            topic, part, st.next)
                    if not msgs:
                        continue
                    first = msgs[0].offset
                    span = msgs[-1].offset - first + 1
                    if span == len(msgs):
                        bm = _ones(span)
                    else:  # never for dense offsets; kept exact all the same
                        bm = bytearray((span + 7) >> 3)
                        for m in msgs:
                            j = m.offset - first
                            bm[j >> 3] |= 1 << (j & 7)
                    token = secrets.randbits(63) | 1
                    key = self._put_new(txn, pend, pid, first, _HDR.pack(
                        visible, token, now, now, 1, self._owner, span, 0) + bm)
                    taken.append((_Receipt(self, key, token, 1, visible, first, pid), part, msgs))
                    got += len(msgs)
                    txn.put(ckey, _U64.pack(nxt), db=offs)
                    hint = min(hint, visible)
                    if got >= max_messages:
                        break
            if hint != meta.min_visible_ms:
                meta.min_visible_ms = hint
                self._store_meta(txn, meta)
            if dlq_moved:
                self._cleanup_consumed(txn)
        except BaseException as exc:
            err = env.abort_with(txn, exc, f"receive from {topic!r}")
            if err is exc:
                raise
            raise err from exc
        env.commit(txn)
        if got:
            # Waiting consumers bound their wait by the earliest visibility deadline.
            env.notifier.bump(self._slot)
        if dlq_moved and self.dead_letter_topic is not None:
            env.notify_topics((self.dead_letter_topic,))
        # Build the Delivery objects outside the write transaction.
        out: list[Delivery] = []
        ap = out.append
        D = Delivery
        for r, part, msgs in taken:
            for m in msgs:
                d = D(topic, part, m.offset, m.timestamp_ms, m.key, m.value, m.headers or None)
                d._r = r
                ap(d)
        return out, hint

    def _put_new(self, txn: Any, pend: Any, pid: int, first: int, value: bytes) -> bytes:
        prefix = self._prefix
        while True:
            key = prefix + _PK.pack(pid, first, secrets.randbits(32))
            if txn.put(key, value, db=pend, overwrite=False):
                return key

    def _redeliver(self, txn: Any, rec: _log.TopicRecord, now: int, vt: int,
                   max_messages: int,
                   taken: list[tuple[_Receipt, int, list[_core.Message]]]
                   ) -> tuple[int, bool, int]:
        """Take due pending entries; returns (messages taken, dead-lettered any, new hint)."""
        dbs = self._env.dbs
        pend = dbs["pending"]
        new_min = _FOREVER
        due: list[_Entry] = []
        prefix = self._prefix
        cur = txn.cursor(db=pend)
        if cur.set_range(prefix):
            for k, v in cur:
                if not k.startswith(prefix):
                    break
                visible = _U64.unpack_from(v)[0]
                if visible <= now:
                    due.append(_Entry.decode(bytes(k), v))
                elif visible < new_min:
                    new_min = visible
        got = 0
        moved = False
        visible = now + vt
        for e in due:
            if got >= max_messages:
                new_min = min(new_min, e.visible)
                continue
            if e.pid not in rec.pids:  # cannot happen: topic deletion drops entries
                txn.delete(e.key, db=pend)
                continue
            part = rec.pids.index(e.pid)
            msgs = self._read_entry(txn, e, part)
            timed_out = e.token != 0 and e.owner != _NOBODY
            error = ERROR_TIMEOUT if timed_out else e.error
            txn.delete(e.key, db=pend)
            if not msgs:  # all removed by retention meanwhile
                continue
            if self.max_deliveries is not None and e.count >= self.max_deliveries:
                e.error = error
                self._to_dlq(txn, rec, part, msgs, e, REASON_MAX_DELIVERIES, now)
                moved = True
                continue
            want = max_messages - got
            take, rest = msgs[:want], msgs[want:]
            if rest:  # the remainder stays visible under a dead token
                first = rest[0].offset
                span = rest[-1].offset - first + 1
                bm = bytearray((span + 7) >> 3)
                for m in rest:
                    j = m.offset - first
                    bm[j >> 3] |= 1 << (j & 7)
                self._put_new(txn, pend, e.pid, first, _Entry(
                    b"", e.pid, first, e.visible, 0, e.first_ms, e.last_ms, e.count, _NOBODY,
                    span, bm, error).encode())
                new_min = min(new_min, e.visible)
            first = take[0].offset
            span = take[-1].offset - first + 1
            bm = bytearray((span + 7) >> 3)
            for m in take:
                j = m.offset - first
                bm[j >> 3] |= 1 << (j & 7)
            token = secrets.randbits(63) | 1
            count = e.count + 1
            key = self._put_new(txn, pend, e.pid, first, _Entry(
                b"", e.pid, first, visible, token, e.first_ms, now, count, self._owner, span, bm,
                error).encode())
            taken.append((_Receipt(self, key, token, count, visible, first, e.pid), part, take))
            got += len(take)
            new_min = min(new_min, visible)
        return got, moved, new_min

    def _read_entry(self, txn: Any, e: _Entry, part: int) -> list[_core.Message]:
        """The still-pending messages of an entry that are still stored."""
        msgs: list[_core.Message] = []
        _log.read_records(txn, self._env.dbs, e.pid, e.first, e.span, msgs, self.topic, part,
                          e.first + e.span)
        bm = e.bm
        first = e.first
        out = []
        for m in msgs:
            j = m.offset - first
            if bm[j >> 3] >> (j & 7) & 1:
                out.append(m)
        return out

    # -- settling ------------------------------------------------------------------------
    def _check_open(self) -> None:
        if os.getpid() != self._pid:
            # Same rule as group consumers: the parent is the member.  Acting
            # under its owner id would make the parent's close() release the
            # child's messages, and a crashed child would look alive.
            raise GroupError(
                f"this queue consumer of group {self.group!r} was created in process "
                f"{self._pid}; a forked child cannot use its parent's membership: create "
                "a new queue consumer in the child")
        if self._closed:
            raise ClosedError("this queue consumer is closed")
        if self._engine.closed:
            raise ClosedError("the broker of this queue consumer is closed")

    def _as_list(self, deliveries: Delivery | Iterable[Delivery]) -> list[Delivery]:
        if isinstance(deliveries, Delivery):
            ds = [deliveries]
        elif isinstance(deliveries, list):
            ds = deliveries
        elif isinstance(deliveries, (_core.Message, str, bytes)):
            raise TypeError(f"expected a Delivery from receive(), not {type(deliveries).__name__}")
        else:
            ds = list(deliveries)
        qg = self._qg
        seen: set[int] = set()
        for d in ds:
            if type(d) is not Delivery and not isinstance(d, Delivery):
                raise TypeError(f"expected a Delivery from receive(), not {type(d).__name__}")
            r = d._r
            if id(r) in seen:
                continue
            seen.add(id(r))
            if r.qg != qg:
                raise ValueError(f"a delivery of {r.queue.topic!r} (group {r.queue.group!r}) "
                                 f"was given to the queue of {self.topic!r} (group {self.group!r})")
        return ds

    def _collect(self, txn: Any, ds: Sequence[Delivery]
                 ) -> tuple[dict[bytes, tuple[_Entry, list[Delivery]]], list[Delivery]]:
        """Valid deliveries grouped by their pending entry (bits already cleared), and stale."""
        pend = self._env.dbs["pending"]
        groups: dict[bytes, tuple[_Entry, list[Delivery]]] = {}
        stale: list[Delivery] = []
        for d in ds:
            r = d._r
            g = groups.get(r.key)
            if g is None:
                raw = txn.get(r.key, db=pend)
                e = None if raw is None else _Entry.decode(r.key, raw)
                if e is None or e.token != r.token:
                    stale.append(d)
                    continue
                g = groups[r.key] = (e, [])
            e = g[0]
            if e.token != r.token or not e.has(d.offset):
                stale.append(d)
                continue
            e.clear(d.offset)
            g[1].append(d)
        return groups, stale

    @guarded
    def ack(self, deliveries: Delivery | Iterable[Delivery]) -> int:
        """Acknowledge many deliveries in one transaction; returns how many.

        Deliveries that are stale are skipped and reported afterwards with
        :class:`StaleDeliveryError` (its ``stale`` attribute lists them and
        ``settled`` counts the others); the valid ones are acknowledged all the
        same.
        """
        self._check_open()
        if isinstance(deliveries, Delivery):
            ds: list[Delivery] = [deliveries]
        elif isinstance(deliveries, list):
            ds = deliveries
        else:
            ds = self._as_list(deliveries)
        if not ds:
            return 0
        env = self._env
        pend = env.dbs["pending"]
        qg = self._qg
        stale: list[Delivery] = []
        done = 0
        txn = env.write_txn()
        try:
            get = txn.get
            r0: Any = None
            bm: Any = None
            first = nb = 0
            ok = False
            touched: list[tuple[_Receipt, Any, bytearray]] = []
            for d in ds:
                try:
                    r = d._r
                except AttributeError:
                    raise TypeError("expected a Delivery from receive(), not "
                                    f"{type(d).__name__}") from None
                if r is not r0:
                    if type(r) is not _Receipt or type(d) is not Delivery and \
                            not isinstance(d, Delivery):
                        raise TypeError(f"expected a Delivery from receive(), not "
                                        f"{type(d).__name__}")
                    if r.qg != qg:
                        raise ValueError(f"a delivery of {r.queue.topic!r} (group "
                                         f"{r.queue.group!r}) was given to the queue of "
                                         f"{self.topic!r} (group {self.group!r})")
                    r0 = r
                    raw = get(r.key, db=pend)
                    ok = raw is not None and _U64.unpack_from(raw, 8)[0] == r.token
                    if ok:
                        for tr, _traw, tbm in touched:
                            if tr.key == r.key:
                                bm = tbm
                                break
                        else:
                            span = _HDR.unpack_from(raw)[6]
                            bm = bytearray(raw[_HSIZE:_HSIZE + ((span + 7) >> 3)])
                            touched.append((r, raw, bm))
                        first = r.first
                        nb = len(bm)
                if not ok:
                    stale.append(d)
                    continue
                i = d.offset - first
                j = i >> 3
                m = 1 << (i & 7)
                b = bm[j] if 0 <= j < nb else 0
                if b & m:
                    bm[j] = b ^ m
                    done += 1
                else:
                    stale.append(d)
            for r, raw, bm in touched:
                if any(bm):
                    raw = bytes(raw)
                    txn.put(r.key, raw[:_HSIZE] + bm + raw[_HSIZE + len(bm):], db=pend)
                else:
                    txn.delete(r.key, db=pend)
            if done:
                self._cleanup_consumed(txn)
        except BaseException as exc:
            err = env.abort_with(txn, exc, f"ack on {self.topic!r}")
            if err is exc:
                raise
            raise err from exc
        env.commit(txn)
        if stale:
            err = StaleDeliveryError(
                f"{len(stale)} of {len(ds)} deliveries were stale (expired and redelivered, "
                f"released, or already settled); the other {done} were acknowledged")
            err.stale = stale  # type: ignore[attr-defined]
            err.settled = done  # type: ignore[attr-defined]
            raise err
        return done

    @guarded
    def _settle_one(self, d: Delivery, op: str) -> None:
        try:
            self.ack([d])
        except StaleDeliveryError:
            raise StaleDeliveryError(
                f"{self.topic}[{d.partition}]@{d.offset}: this delivery is stale (its visibility "
                "timeout expired or its owner was released, and the message may have been "
                "redelivered; or it was already settled); nothing was changed") from None

    def ack_in(self, txn: Any, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge inside a caller's transaction; any stale delivery raises (all or nothing)."""
        ds = self._as_list(list(deliveries))
        groups, stale = self._collect(txn, ds)
        if stale:
            d = stale[0]
            raise StaleDeliveryError(
                f"{self.topic}[{d.partition}]@{d.offset}: stale delivery; nothing was acknowledged")
        self._write_back(txn, groups)

    def _write_back(self, txn: Any, groups: dict[bytes, tuple[_Entry, list[Delivery]]]) -> None:
        pend = self._env.dbs["pending"]
        for key, (e, _) in groups.items():
            if e.empty():
                txn.delete(key, db=pend)
            else:
                txn.put(key, e.encode(), db=pend)

    def _apply(self, deliveries: Delivery | Iterable[Delivery], what: str,
               fn: Callable[[Any, _log.TopicRecord, _Entry, list[Delivery], int], bool]
               ) -> tuple[int, bool]:
        """Run ``fn`` per entry on the valid deliveries in one transaction; raise for stale."""
        self._check_open()
        ds = self._as_list(deliveries)
        if not ds:
            return 0, False
        now = _now_ms()
        env = self._env
        moved = False
        with self._engine.write() as txn:
            rec = self._engine.topic(txn, self.topic)
            groups, stale = self._collect(txn, ds)
            self._write_back(txn, groups)
            done = 0
            for e, group in groups.values():
                moved = fn(txn, rec, e, group, now) or moved
                done += len(group)
            if moved:
                self._cleanup_consumed(txn)
        env.notify_topics((self.topic,) if not moved or self.dead_letter_topic is None
                          else (self.topic, self.dead_letter_topic))
        if stale:
            if len(ds) == 1:
                d = stale[0]
                msg = (f"{self.topic}[{d.partition}]@{d.offset}: this delivery is stale (timed "
                       "out and possibly redelivered, released, or already settled); nothing "
                       "was changed")
            else:
                msg = (f"{len(stale)} of {len(ds)} deliveries were stale; the other {done} "
                       f"were {what}")
            err = StaleDeliveryError(msg)
            err.stale = stale  # type: ignore[attr-defined]
            err.settled = done  # type: ignore[attr-defined]
            raise err
        return done, moved

    def _split(self, txn: Any, e: _Entry, group: list[Delivery], *, visible: int, token: int,
               owner: bytes, count: int, error: str) -> bytes:
        """Write a new entry holding ``group``'s offsets (taken out of ``e``)."""
        offs = sorted(d.offset for d in group)
        first = offs[0]
        span = offs[-1] - first + 1
        bm = bytearray((span + 7) >> 3)
        for o in offs:
            j = o - first
            bm[j >> 3] |= 1 << (j & 7)
        new = _Entry(b"", e.pid, first, visible, token, e.first_ms, e.last_ms, count, owner,
                     span, bm, error)
        return self._put_new(txn, self._env.dbs["pending"], e.pid, first, new.encode())

    @guarded
    def nack(self, deliveries: Delivery | Iterable[Delivery], delay: float | None = None,
             error: str | None = None) -> int:
        """Return messages: visible again after ``delay`` s (default: the backoff policy).

        ``delay`` is in seconds, ``0 <= delay <= 10 years``.

        A message that already had ``max_deliveries`` deliveries is
        dead-lettered instead.  ``error`` is kept as its last error (and
        becomes the ``x-last-error`` header if it is dead-lettered).  Stale
        deliveries raise :class:`StaleDeliveryError` and are left unchanged.
        """
        delay_ms = None if delay is None else _seconds_ms(delay, "delay", allow_zero=True,
                                                          maximum=MAX_DELAY_S)
        if error is not None and not isinstance(error, str):
            raise TypeError("error must be str")

        def fn(txn: Any, rec: _log.TopicRecord, e: _Entry, group: list[Delivery],
               now: int) -> bool:
            err = e.error if error is None else error
            if self.max_deliveries is not None and e.count >= self.max_deliveries:
                e.error = err
                self._to_dlq(txn, rec, rec.pids.index(e.pid), self._messages_of(group), e,
                             REASON_MAX_DELIVERIES, now)
                return True
            d_ms = delay_ms
            if d_ms is None:
                d_ms = 0 if self._backoff is None else int(self._backoff.delay(e.count) * 1000)
            visible = now + d_ms
            self._split(txn, e, group, visible=visible, token=0, owner=_NOBODY, count=e.count,
                        error=err)
            self._lower_hint(txn, visible)
            return False

        return self._apply(deliveries, "nacked", fn)[0]

    @guarded
    def dead_letter(self, deliveries: Delivery | Iterable[Delivery],
                    reason: str = "rejected") -> int:
        """Move delivered messages to the dead-letter topic now (dropped when there is none)."""
        if not isinstance(reason, str):
            raise TypeError("reason must be str")

        def fn(txn: Any, rec: _log.TopicRecord, e: _Entry, group: list[Delivery],
               now: int) -> bool:
            self._to_dlq(txn, rec, rec.pids.index(e.pid), self._messages_of(group), e, reason,
                         now)
            return True

        return self._apply(deliveries, "dead-lettered", fn)[0]

    @guarded
    def extend(self, deliveries: Delivery | Iterable[Delivery], seconds: float) -> int:
        """Keep deliveries invisible to others for ``seconds`` more, counted from now.

        ``0 < seconds <= 43200`` (12 hours, the ``visibility_timeout`` bound).
        """
        ms = _seconds_ms(seconds, "seconds", allow_zero=False, maximum=MAX_VISIBILITY_TIMEOUT_S)

        post: list[tuple[list[Delivery], _Receipt]] = []

        def fn(txn: Any, rec: _log.TopicRecord, e: _Entry, group: list[Delivery],
               now: int) -> bool:
            visible = now + ms
            key = self._split(txn, e, group, visible=visible, token=e.token, owner=e.owner,
                              count=e.count, error=e.error)
            # The extended messages now live in an entry of their own, same token.
            post.append((group, _Receipt(group[0]._r.queue, key, e.token, e.count, visible,
                                         min(d.offset for d in group), e.pid)))
            self._lower_hint(txn, visible)
            return False

        try:
            n = self._apply(deliveries, "extended", fn)[0]
        finally:
            if sys.exc_info()[0] in (None, StaleDeliveryError):  # committed
                for group, r in post:
                    for d in group:
                        d._r = r
        return n

    def _lower_hint(self, txn: Any, visible: int) -> None:
        meta = self._load_meta(txn)
        if visible < meta.min_visible_ms:
            meta.min_visible_ms = visible
            self._store_meta(txn, meta)

    @staticmethod
    def _messages_of(group: list[Delivery]) -> list[_core.Message]:
        return sorted(group, key=lambda d: d.offset)

    def _to_dlq(self, txn: Any, rec: _log.TopicRecord, part: int, msgs: Sequence[Any],
                e: _Entry, reason: str, now: int) -> None:
        """In ``txn``: append ``msgs`` (of entry ``e``) to the dead-letter topic, if any."""
        dlq = self.dead_letter_topic
        if dlq is None or not msgs:
            return
        common: list[tuple[str, bytes]] = [
            (H_TOPIC, self.topic.encode()),
            (H_PARTITION, str(part).encode()),
            (H_OFFSET, b""),  # per message, below
            (H_GROUP, self.group.encode()),
            (H_COUNT, str(e.count).encode()),
            (H_ERROR, e.error.encode("utf-8")[:_MAX_ERROR]),
            (H_FIRST, str(e.first_ms).encode()),
            (H_LAST, str(e.last_ms).encode()),
            (H_REASON, reason.encode("utf-8")[:_MAX_ERROR]),
            (H_TIME, str(now).encode()),
        ]
        items = []
        for m in msgs:
            hs = [(n, v) for n, v in m.headers if n not in _DLQ_HEADERS]
            common[2] = (H_OFFSET, str(m.offset).encode())
            items.append((m.key, m.value, hs + common, m.timestamp_ms))
        _append_many(self._engine, txn, dlq, items)

    def _cleanup_consumed(self, txn: Any) -> bool:
        """``cleanup="consumed"``: delete batches every queue group acknowledged."""
        rec = self._engine.topic(txn, self.topic)
        if rec.config.get("cleanup") != "consumed":
            return False
        env = self._env
        cfg = rec.topic_config()
        now = _now_ms()
        deleted = False
        for pid in rec.pids:
            floor = consumed_floor(txn, env.dbs, rec, pid)
            if floor is None:
                continue
            st = _log.load_state_w(txn, env, pid)
            if _log.apply_retention(txn, env.dbs, pid, st, cfg, now, floor):
                _log.store_state(txn, env.dbs, pid, st)
                deleted = True
        if deleted:
            env.space_freed()  # a cached "store full" verdict no longer holds
        return deleted

    # -- inspection ------------------------------------------------------------------------
    def pending(self) -> list[dict[str, Any]]:
        """In-flight and waiting-for-retry messages of this group, one dict per message."""
        out = []
        with self._env.read_txn() as txn:
            rec = self._engine.topic(txn, self.topic)
            for e in self._scan(txn):
                part = rec.pids.index(e.pid) if e.pid in rec.pids else -1
                owner = e.owner.rstrip(b"\x00").decode() or None
                for off in e.offsets():
                    out.append({"partition": part, "offset": off, "delivery_count": e.count,
                                "visible_at_ms": e.visible, "owner": owner,
                                "first_delivery_ms": e.first_ms, "last_delivery_ms": e.last_ms,
                                "last_error": e.error or None})
        out.sort(key=lambda p: (p["partition"], p["offset"]))
        return out

    def lag(self) -> int:
        """Messages not yet acknowledged by this group (pending + never delivered)."""
        with self._env.read_txn() as txn:
            rec = self._engine.topic(txn, self.topic)
            total = sum(e.pending_count() for e in self._scan(txn))
            for pid in rec.pids:
                st = _log.load_state(txn, self._env.dbs, pid)
                raw = txn.get(group_pid_key(self._qg, pid), db=self._env.dbs["offsets"])
                cursor = 0 if raw is None else _U64.unpack(raw)[0]
                total += max(0, st.next - max(cursor, st.start))
        return total

    # -- lifecycle --------------------------------------------------------------------------
    def wakeup(self) -> None:
        """Make the blocked :meth:`receive` calls return now.  Any thread; signal-safe.

        Every ``receive`` waiting now returns what it has (an empty list);
        when none is running, the next one returns without waiting.  Later
        calls block normally.
        """
        self._life.wakeup()

    def _wake_waiter(self) -> None:
        n = self._env.notifier
        if n is not None:
            try:
                n.bump(self._slot)
            except ValueError:  # closed meanwhile: nobody waits on it any more
                pass

    _CLOSE_RANK = 1  # after producers

    def close(self) -> None:
        """Stop; messages still held become visible to others at once.  Idempotent.

        Any thread: blocked :meth:`receive` calls return at once and this
        returns when they have.  From a signal handler that interrupted a call
        of this queue on the same thread, the close happens when that call
        returns.  In a forked child it only forgets the object (the parent
        stays the member).
        """
        if self._closed:
            return
        if os.getpid() == self._pid and not self._life.request_close():
            return  # deferred to the end of the interrupted call
        try:
            self._close_now()
        finally:
            self._life.closed_done()

    def _close_now(self) -> None:
        if self._closed:
            return
        self._closed = True
        if os.getpid() == self._pid:
            self._stop_gate.release()
        if self._thread is not threading.current_thread():
            self._thread.join(1.0)
        if os.getpid() != self._pid or self._engine.closed:
            return
        try:
            with self._engine.write() as txn:
                meta = self._load_meta(txn)
                released = 0
                pend = self._env.dbs["pending"]
                for e in self._scan(txn):
                    if e.owner == self._owner:
                        e.visible, e.owner, e.token = 0, _NOBODY, 0
                        txn.put(e.key, e.encode(), db=pend)
                        released += 1
                meta.consumers.pop(self.owner_id, None)
                if released:
                    meta.min_visible_ms = 0
                self._store_meta(txn, meta)
            if released:
                self._env.notify_topics((self.topic,))
        finally:
            if self._lock_fd >= 0:
                _unlink_quiet(os.path.join(members_dir(self._env.path), self._lock_name))
                os.close(self._lock_fd)
                self._lock_fd = -1

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<mqlite.Queue topic={self.topic!r} group={self.group!r} owner={self.owner_id}>"


def queue_policy(engine: Engine, topic: str, group: str) -> QueuePolicy | None:
    """The stored policy of a queue group (``None``: the group has none yet)."""
    validate_topic_name(topic)
    validate_group_name(group)
    env = engine.live_env()
    with env.read_txn() as txn:
        raw = txn.get(_qg(topic, group).encode(), db=env.dbs["groups"])
    return None if raw is None else _dec_meta.decode(raw).policy


def set_queue_policy(engine: Engine, topic: str, group: str, *,
                     max_deliveries: int | None | _Unset = UNSET,
                     dead_letter_topic: str | None | _Unset = UNSET,
                     retry_backoff: Backoff | float | None | _Unset = UNSET) -> QueuePolicy:
    """Set (or change) a queue group's retry/dead-letter policy; returns the stored policy.

    Options left out keep their stored value (or the default ``None`` for a
    group without a policy).  The group need not have consumers yet; live
    consumers apply the change at their next ``receive()``.
    """
    validate_topic_name(topic)
    validate_group_name(group)
    given = _given_policy(topic, max_deliveries, dead_letter_topic, retry_backoff)
    engine.topic_fresh(topic)
    if given.get("dead_letter_topic") is not None:
        engine.create_topic(given["dead_letter_topic"], exist_ok=True)
    key = _qg(topic, group).encode()
    env = engine.live_env()
    with engine.write() as txn:
        raw = txn.get(key, db=env.dbs["groups"])
        meta = QueueMeta(topic=topic, consumers={}, min_visible_ms=0) if raw is None \
            else _dec_meta.decode(raw)
        meta.policy = policy = _merge_policy(meta.policy, given, topic, group, alter=True)
        txn.put(key, _enc.encode(meta), db=env.dbs["groups"])
    return policy


def _target_topic(engine: Engine, txn: Any, topic: str) -> _log.TopicRecord:
    """Topic record for an append inside ``txn``; a missing dead-letter topic is recreated."""
    try:
        return engine.topic(txn, topic)
    except TopicNotFoundError:
        env = engine.env
        env.topic_cache.clear()
        return _log.create_topic(txn, env.dbs, topic, TopicConfig(), _now_ms())


def _append_many(engine: Engine, txn: Any, topic: str,
                 items: Sequence[tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int]],
                 partition: int | None = None) -> None:
    """Append records (key, value, headers, timestamp) inside ``txn``, no size cap
    (they were accepted once already); keyed records go to their key's partition."""
    rec = _target_topic(engine, txn, topic)
    by_part: dict[int, list[int]] = {}
    for i, (k, _, _, _) in enumerate(items):
        p = engine.choose_partition(rec, k, partition if partition is None or
                                     partition < len(rec.pids) else None)
        by_part.setdefault(p, []).append(i)
    for part, idx in by_part.items():
        sel = [items[i] for i in idx]
        keys = [k for k, _, _, _ in sel]
        batches = engine.encode(rec, [v for _, v, _, _ in sel],
                                None if all(k is None for k in keys) else keys,
                                [h for _, _, h, _ in sel], [t for _, _, _, t in sel],
                                capped=False)
        engine.append_in(txn, rec, part, batches)


def consumed_floor(txn: Any, dbs: dict[str, Any], rec: _log.TopicRecord, pid: int) -> int | None:
    """Lowest offset of partition ``pid`` that some queue group of the topic still needs."""
    groups = _log.prefix_keys(txn, dbs["groups"], f"~q~{rec.name}~".encode())
    if not groups:
        return None
    floor: int | None = None
    pc = txn.cursor(db=dbs["pending"])
    pidb = pid.to_bytes(4, "big")
    for qg in groups:
        raw = txn.get(qg + b"\x00" + pidb, db=dbs["offsets"])
        low = 0 if raw is None else _U64.unpack(raw)[0]
        pfx = qg + b"\x00" + pidb
        # Entries sort by first offset and an entry's first offset is <= each of its
        # pending offsets, so walk them only while they can still lower the floor.
        if pc.set_range(pfx):
            for k, v in pc:
                if not k.startswith(pfx) or len(k) != len(pfx) + 12:
                    break
                first = _PK.unpack_from(k, len(k) - _PK.size)[1]
                if first >= low:
                    break
                span = _HDR.unpack_from(v)[6]
                bm = bytes(v[_HSIZE:_HSIZE + ((span + 7) >> 3)])
                lowest = int.from_bytes(bm, "little")
                if lowest:
                    low = min(low, first + (lowest & -lowest).bit_length() - 1)
        floor = low if floor is None else min(floor, low)
    return floor


def _drop_topic_queues(txn: Any, dbs: dict[str, Any], rec: _log.TopicRecord) -> None:
    """Delete-topic hook: forget queue groups, cursors, pending entries and DLQ marks."""
    for dbname, prefix in (("groups", f"~q~{rec.name}~".encode()),
                           ("pending", f"~q~{rec.name}~".encode()),
                           ("offsets", f"~q~{rec.name}~".encode()),
                           ("pending", f"{_DLQ_DONE}{rec.name}\x00".encode())):
        for k in _log.prefix_keys(txn, dbs[dbname], prefix):
            txn.delete(k, db=dbs[dbname])


# -- dead-letter tools ---------------------------------------------------------------------

class DeadLetter(msgspec.Struct, frozen=True):
    """A message in a dead-letter topic, with the metadata its headers carry."""

    offset: int
    partition: int
    original_topic: str | None
    original_partition: int | None
    original_offset: int | None
    delivery_count: int | None
    reason: str | None
    last_error: str | None
    original_group: str | None
    first_delivery_ms: int | None
    last_delivery_ms: int | None
    dead_lettered_ms: int | None
    message: Any


def _header(msg: _core.Message, name: str) -> str | None:
    for n, v in msg.headers:
        if n == name:
            return v.decode("utf-8", "replace")
    return None


def _as_dead_letter(msg: _core.Message) -> DeadLetter:
    def _int(name: str) -> int | None:
        v = _header(msg, name)
        try:
            return None if v is None else int(v)
        except ValueError:
            return None

    return DeadLetter(offset=msg.offset, partition=msg.partition,
                      original_topic=_header(msg, H_TOPIC),
                      original_partition=_int(H_PARTITION), original_offset=_int(H_OFFSET),
                      delivery_count=_int(H_COUNT), reason=_header(msg, H_REASON),
                      last_error=_header(msg, H_ERROR) or None,
                      original_group=_header(msg, H_GROUP),
                      first_delivery_ms=_int(H_FIRST), last_delivery_ms=_int(H_LAST),
                      dead_lettered_ms=_int(H_TIME), message=msg)


# Redriven / purged dead letters are marked done in ``pending`` under
# "~dlq~<topic>" NUL pid u32 offset u64; "~dlq~<topic>" NUL pid u32 alone holds the
# floor below which every letter is done (marks below it are deleted).
_DLQ_DONE = "~dlq~"


def _done_prefix(dlq_topic: str, pid: int) -> bytes:
    return f"{_DLQ_DONE}{dlq_topic}".encode() + b"\x00" + pid.to_bytes(4, "big")


def _done_floor(txn: Any, pend: Any, dlq_topic: str, pid: int) -> int:
    raw = txn.get(_done_prefix(dlq_topic, pid), db=pend)
    return 0 if raw is None else _U64.unpack(bytes(raw))[0]


def _undone(engine: Engine, txn: Any, dlq_topic: str, limit: int | None = None
            ) -> list[DeadLetter]:
    validate_topic_name(dlq_topic)
    env = engine.env
    pend = env.dbs["pending"]
    rec = engine.topic(txn, dlq_topic)
    out: list[DeadLetter] = []
    for part, pid in enumerate(rec.pids):
        st = _log.load_state(txn, env.dbs, pid)
        pos = max(st.start, _done_floor(txn, pend, dlq_topic, pid))
        pfx = _done_prefix(dlq_topic, pid)
        while pos < st.next:
            msgs: list[_core.Message] = []
            pos = _log.read_records(txn, env.dbs, pid, pos, 1000, msgs, dlq_topic, part, st.next)
            if not msgs:
                break
            for m in msgs:
                if txn.get(pfx + _U64.pack(m.offset), db=pend) is None:
                    out.append(_as_dead_letter(m))
                    if limit is not None and len(out) >= limit:
                        return out
    return out


def _mark_done(engine: Engine, txn: Any, dlq_topic: str, rec: _log.TopicRecord,
               marks: dict[int, list[int]]) -> None:
    """Mark offsets done, then advance each partition's floor over contiguous marks."""
    env = engine.env
    pend = env.dbs["pending"]
    for part, offs in marks.items():
        pid = rec.pids[part]
        pfx = _done_prefix(dlq_topic, pid)
        for off in offs:
            txn.put(pfx + _U64.pack(off), b"", db=pend)
        st = _log.load_state(txn, env.dbs, pid)
        floor = max(_done_floor(txn, pend, dlq_topic, pid), st.start)
        cur = txn.cursor(db=pend)
        # Drop marks below the floor (retention may have passed them), then advance.
        while cur.set_range(pfx + b"\x00" * 8):
            k = bytes(cur.key())
            if not k.startswith(pfx) or len(k) != len(pfx) + 8:
                break
            off = _U64.unpack_from(k, len(pfx))[0]
            if off < floor:
                cur.delete()
            elif off == floor:
                cur.delete()
                floor += 1
            else:
                break
        txn.put(pfx, _U64.pack(floor), db=pend)


def dead_letters(engine: Engine, dlq_topic: str, limit: int = 1000) -> list[DeadLetter]:
    """Dead letters in ``dlq_topic`` not yet redriven or purged, oldest first per partition."""
    validate_topic_name(dlq_topic)
    require_int(limit, "limit", minimum=1)
    env = engine.live_env()
    with env.read_txn() as txn:
        return _undone(engine, txn, dlq_topic, limit)


def redrive(engine: Engine, dlq_topic: str,
            where: Callable[[DeadLetter], bool] | None = None, limit: int | None = None,
            to_topic: str | None = None) -> int:
    """Send dead letters back to their original topic (or ``to_topic``); returns how many.

    Each redriven message is appended with its original key, value and
    headers (the ``x-*`` dead-letter headers removed) to its original
    partition when it still exists, and marked done in the same transaction,
    so a crash never redrives twice.  ``where`` filters; letters whose target
    topic no longer exists are left in place.
    """
    validate_topic_name(dlq_topic)
    if to_topic is not None:
        validate_topic_name(to_topic)
    require_int(limit, "limit", minimum=1, allow_none=True)
    if where is not None and not callable(where):
        raise TypeError("where must be a callable taking a DeadLetter")
    env = engine.live_env()
    with env.read_txn() as txn:
        letters = _undone(engine, txn, dlq_topic)
    chosen: list[DeadLetter] = []
    for dl in letters:
        if limit is not None and len(chosen) >= limit:
            break
        if where is None or where(dl):  # user code runs outside the write lock
            chosen.append(dl)
    n = 0
    touched: set[str] = set()
    with engine.write() as txn:
        rec = engine.topic(txn, dlq_topic)
        still = {(dl.partition, dl.offset) for dl in _undone(engine, txn, dlq_topic)}
        marks: dict[int, list[int]] = {}
        for dl in chosen:
            if (dl.partition, dl.offset) not in still:
                continue  # redriven or purged by someone else meanwhile
            target = to_topic or dl.original_topic
            if target is None:
                continue
            try:
                trec = engine.topic(txn, target)
            except TopicNotFoundError:
                continue
            msg = dl.message
            headers = [(k, v) for k, v in msg.headers if k not in _DLQ_HEADERS]
            part = dl.original_partition if to_topic is None else None
            if part is not None and not 0 <= part < len(trec.pids):
                part = None
            _append_many(engine, txn, target, [(msg.key, msg.value, headers, msg.timestamp_ms)],
                         part)
            marks.setdefault(dl.partition, []).append(dl.offset)
            touched.add(target)
            n += 1
        _mark_done(engine, txn, dlq_topic, rec, marks)
    if touched:
        env.notify_topics(touched)
    return n


def purge_dead_letters(engine: Engine, dlq_topic: str,
                       where: Callable[[DeadLetter], bool] | None = None) -> int:
    """Discard dead letters (all, or those ``where`` accepts); returns how many.

    They stay in the dead-letter topic's log (a normal topic: retention
    removes them) but are no longer listed or redriven.
    """
    validate_topic_name(dlq_topic)
    if where is not None and not callable(where):
        raise TypeError("where must be a callable taking a DeadLetter")
    env = engine.live_env()
    with env.read_txn() as txn:
        letters = _undone(engine, txn, dlq_topic)
    chosen = {(dl.partition, dl.offset) for dl in letters if where is None or where(dl)}
    n = 0
    with engine.write() as txn:
        rec = engine.topic(txn, dlq_topic)
        marks: dict[int, list[int]] = {}
        for dl in _undone(engine, txn, dlq_topic):
            if (dl.partition, dl.offset) in chosen:
                marks.setdefault(dl.partition, []).append(dl.offset)
                n += 1
        _mark_done(engine, txn, dlq_topic, rec, marks)
    return n


def _register_hooks() -> None:
    on_topic_delete(_drop_topic_queues)
    on_consumed_floor(consumed_floor)


_register_hooks()
