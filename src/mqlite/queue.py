"""Queue mode: competing consumers with per-message acks (SQS / RabbitMQ style).

A queue group reads one topic.  ``receive()`` takes the next messages in one
write transaction and records each in the ``pending`` database:

    key   = "~q~<topic>~<group>" 0x00 partition id (u32 BE) offset (u64 BE)
    value = visible_at_ms, token, first_ms, last_ms (u64 BE each),
            delivery_count (u32 BE), owner id (16 ASCII), last error (UTF-8)

plus, per partition, a cursor (the next never-delivered offset) in
``offsets``.  ``ack()`` deletes the entry.  An entry whose ``visible_at`` has
passed — its visibility timeout expired, or it was nacked with a delay, or
its owner died — is delivered again with its count raised; past
``max_deliveries`` it is moved to the dead-letter topic in the same
transaction that deletes it.  Every delivery gets a fresh random token, so
an ack or nack from a consumer that lost the message is refused
(:class:`StaleDeliveryError`) and changes nothing.

Owner liveness is the kernel's: each :class:`Queue` holds a ``flock`` on a
file under ``members/`` and a watcher thread of every other queue consumer
notices within milliseconds when it is released by the kernel (process
death); the dead owner's entries become visible at once.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import struct
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from mqlite import _core
from mqlite._storage import log as _log
from mqlite._storage.keys import group_pid_key
from mqlite.config import require_int, require_positive_number, validate_group_name, \
    validate_topic_name
from mqlite.errors import ClosedError, GroupError, MqliteError, StaleDeliveryError, \
    TopicNotFoundError
from mqlite.groups import _ensure_members_dir, _unlink_quiet, members_dir, probe_alive
from mqlite.retry import Backoff, resolve_backoff

if TYPE_CHECKING:
    from mqlite.broker import Broker

__all__ = ["Queue", "Delivery", "DeadLetter", "dead_letters", "redrive", "purge_dead_letters"]

_PENDING = struct.Struct(">QQQQI16s")
_U64 = struct.Struct(">Q")
_PK_TAIL = struct.Struct(">IQ")
_WATCH_INTERVAL = 0.02
_FOREVER = (1 << 63) - 1

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


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class QueueMeta(msgspec.Struct):
    topic: str
    consumers: dict[str, str] = {}  # owner id -> lock file name
    min_visible_ms: int = _FOREVER


_enc = msgspec.msgpack.Encoder()
_dec_meta = msgspec.msgpack.Decoder(QueueMeta)


def _qg(topic: str, group: str) -> str:
    # "~" is not allowed in topic or group names: no collision with stream groups.
    return f"~q~{topic}~{group}"


class _Entry:
    __slots__ = ("visible", "token", "first", "last", "count", "owner", "error")

    def __init__(self, visible: int, token: int, first: int, last: int, count: int,
                 owner: bytes, error: str) -> None:
        self.visible = visible
        self.token = token
        self.first = first
        self.last = last
        self.count = count
        self.owner = owner
        self.error = error

    @classmethod
    def decode(cls, raw: Any) -> _Entry:
        raw = bytes(raw)
        v, t, f, la, c, o = _PENDING.unpack_from(raw)
        return cls(v, t, f, la, c, o, raw[_PENDING.size:].decode("utf-8", "replace"))

    def encode(self) -> bytes:
        return _PENDING.pack(self.visible, self.token, self.first, self.last, self.count,
                             self.owner) + self.error.encode()[:4096]


class Delivery(_core.Message):
    """A received message plus its delivery state (see :class:`Queue`).

    Attributes
    ----------
    delivery_count
        1 on the first delivery, raised on each redelivery (durable).
    receipt
        The delivery's token: acks and nacks must present it.
    """

    def __init__(self, msg: _core.Message, queue: Queue, count: int, token: int,
                 visible_at_ms: int) -> None:
        super().__init__(msg.topic, msg.partition, msg.offset, msg.timestamp_ms, msg.key,
                         msg.value, msg.headers)
        self.delivery_count = count
        self.receipt = token
        self.visible_at_ms = visible_at_ms
        self._queue = queue

    def ack(self) -> None:
        """Acknowledge: the message is done and will not be delivered again.

        Raises :class:`StaleDeliveryError` when this delivery is no longer
        valid (timed out and redelivered, or already acked).
        """
        self._queue.ack([self])

    def nack(self, delay: float | None = None, error: str | None = None) -> None:
        """Give the message back: visible again after ``delay`` seconds (default: the
        queue's backoff), or dead-lettered when it reached ``max_deliveries``."""
        self._queue.nack(self, delay=delay, error=error)

    def dead_letter(self, reason: str = "rejected") -> None:
        """Move the message to the dead-letter topic now (or drop it when there is none)."""
        self._queue.dead_letter(self, reason=reason)

    def extend(self, seconds: float) -> None:
        """Keep the message invisible to others for ``seconds`` more from now."""
        self._queue.extend(self, seconds)

    def __repr__(self) -> str:
        return (f"Delivery(topic={self.topic!r}, partition={self.partition}, "
                f"offset={self.offset}, delivery_count={self.delivery_count})")

    def __reduce__(self) -> Any:
        return (_core.Message, (self.topic, self.partition, self.offset, self.timestamp_ms,
                                self.key, self.value, self.headers))


_live_queues: weakref.WeakSet[Queue] = weakref.WeakSet()


class Queue:
    """Competing consumers over one topic with per-message acknowledgement.

    Parameters
    ----------
    broker
        The broker.
    topic
        Topic to consume (must exist).
    group
        Queue group: every group gets every message once; within a group each
        message goes to one consumer at a time.  Independent of stream-mode
        consumer groups of the same name.
    visibility_timeout
        Seconds a received message stays invisible to others before it is
        redelivered if not acked (default 30).
    max_deliveries
        After this many deliveries a message that is nacked or times out is
        dead-lettered (``None`` = retry forever).  Without
        ``dead_letter_topic`` it is dropped (like RabbitMQ without a DLX).
    dead_letter_topic
        Where dead letters go; created (1 partition) if missing.
    retry_backoff
        Delay before a nacked message is visible again: ``None`` (at once), a
        number of seconds, or a :class:`mqlite.Backoff`.
    """

    def __init__(self, broker: Broker, topic: str, group: str, *,
                 visibility_timeout: float = 30.0, max_deliveries: int | None = None,
                 dead_letter_topic: str | None = None,
                 retry_backoff: Backoff | float | None = None) -> None:
        validate_topic_name(topic)
        validate_group_name(group)
        require_positive_number(visibility_timeout, "visibility_timeout", allow_zero=False)
        require_int(max_deliveries, "max_deliveries", minimum=1, allow_none=True)
        if dead_letter_topic is not None:
            validate_topic_name(dead_letter_topic, "dead_letter_topic")
            if dead_letter_topic == topic:
                raise ValueError("dead_letter_topic must differ from the queue's topic")
        self._backoff = resolve_backoff(retry_backoff)
        self._broker = broker
        self._env = broker._live_env()
        self.topic = topic
        self.group = group
        self._qg = _qg(topic, group)
        self._meta_key = self._qg.encode()
        self.visibility_timeout_ms = int(visibility_timeout * 1000)
        self.max_deliveries = max_deliveries
        self.dead_letter_topic = dead_letter_topic
        broker._topic_cached_fresh(topic)
        if dead_letter_topic is not None:
            broker.create_topic(dead_letter_topic, exist_ok=True)
        self.owner_id = uuid.uuid4().hex[:16]
        self._owner = self.owner_id.encode()
        self._closed = False
        self._rotation = 0
        self._pid = os.getpid()
        self._lock_fd = -1
        self._lock_name = ""
        self._register()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name=f"mqlite-queue-{group}")
        self._thread.start()

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
        _live_queues.add(self)
        with self._broker._write() as txn:
            meta = self._load_meta(txn)
            meta.consumers[self.owner_id] = name
            self._store_meta(txn, meta)

    def _load_meta(self, txn: Any) -> QueueMeta:
        raw = txn.get(self._meta_key, db=self._env.dbs["groups"])
        if raw is None:
            return QueueMeta(topic=self.topic)
        return _dec_meta.decode(raw)

    def _store_meta(self, txn: Any, meta: QueueMeta) -> None:
        txn.put(self._meta_key, _enc.encode(meta), db=self._env.dbs["groups"])

    def _watch(self) -> None:
        while not self._stop.wait(_WATCH_INTERVAL):
            if os.getpid() != self._pid or self._broker.closed:
                return
            try:
                self._reap()
            except (MqliteError, OSError):
                continue

    def _reap(self) -> bool:
        """Release the entries of dead consumers of this group; True if any."""
        env = self._env
        with env.read_txn() as txn:
            raw = txn.get(self._meta_key, db=env.dbs["groups"])
        if raw is None:
            return False
        meta = _dec_meta.decode(raw)
        mdir = members_dir(env.path)
        dead = [cid for cid, lock in meta.consumers.items()
                if cid != self.owner_id and not probe_alive(os.path.join(mdir, lock))]
        if not dead:
            return False
        with self._broker._write() as txn:
            meta = self._load_meta(txn)
            gone = {c.encode() for c in dead if c in meta.consumers}
            if not gone:
                return False
            released = 0
            for key, raw in self._scan_pending(txn):
                e = _Entry.decode(raw)
                if e.owner in gone:
                    e.visible = 0
                    e.owner = b"\x00" * 16
                    txn.put(key, e.encode(), db=env.dbs["pending"])
                    released += 1
            for c in dead:
                lock = meta.consumers.pop(c, None)
                if lock:
                    _unlink_quiet(os.path.join(mdir, lock))
            if released:
                meta.min_visible_ms = 0
            self._store_meta(txn, meta)
        env.notify_topics((self.topic,))
        return True

    def _scan_pending(self, txn: Any, pid: int | None = None) -> list[tuple[bytes, bytes]]:
        prefix = self._qg.encode() + b"\x00"
        if pid is not None:
            prefix += pid.to_bytes(4, "big")
        cur = txn.cursor(db=self._env.dbs["pending"])
        out = []
        if cur.set_range(prefix):
            for k, v in cur:
                k = bytes(k)
                if not k.startswith(prefix):
                    break
                out.append((k, bytes(v)))
        return out

    # -- receiving -------------------------------------------------------------------------
    def receive(self, max_messages: int = 10, timeout: float = 1.0,
                visibility_timeout: float | None = None) -> list[Delivery]:
        """Take up to ``max_messages`` messages, waiting up to ``timeout`` s for some.

        Redeliveries (expired or nacked messages that are due) come first,
        then new messages in offset order per partition.  Each returned
        message is invisible to other consumers of the group until acked,
        nacked, or ``visibility_timeout`` passes.
        """
        self._check_open()
        require_int(max_messages, "max_messages", minimum=1)
        require_positive_number(timeout, "timeout")
        vt = self.visibility_timeout_ms
        if visibility_timeout is not None:
            require_positive_number(visibility_timeout, "visibility_timeout", allow_zero=False)
            vt = int(visibility_timeout * 1000)
        from mqlite import scheduler

        env = self._env
        notifier = env.notifier
        slot = env.topic_slot(self.topic)
        deadline = time.monotonic() + timeout
        while True:
            seq = notifier.load(slot)
            if scheduler.due_wait_budget(self._broker) == 0.0:
                scheduler.promote_due(self._broker)
            out, next_visible = self._receive_once(max_messages, vt)
            if out:
                return out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return out
            wait = remaining
            if next_visible < _FOREVER:
                wait = min(wait, max(0.0, (next_visible - _now_ms()) / 1000.0) + 0.001)
            due = scheduler.due_wait_budget(self._broker)
            if due is not None:
                wait = min(wait, due + 0.001)
            notifier.wait(slot, seq, wait)

    def _receive_once(self, max_messages: int, vt: int) -> tuple[list[Delivery], int]:
        broker = self._broker
        env = self._env
        dbs = env.dbs
        now = _now_ms()
        out: list[Delivery] = []
        dlq_moved = False
        with broker._write() as txn:
            meta = self._load_meta(txn)
            rec = broker._topic(txn, self.topic)
            pend = dbs["pending"]
            # 1. redeliveries that are due
            if meta.min_visible_ms <= now:
                new_min = _FOREVER
                for key, raw in self._scan_pending(txn):
                    e = _Entry.decode(raw)
                    if e.visible > now or len(out) >= max_messages:
                        new_min = min(new_min, e.visible)
                        continue
                    pid, off = _PK_TAIL.unpack_from(key, len(key) - 12)
                    if self.max_deliveries is not None and e.count >= self.max_deliveries:
                        self._dead_letter_in(txn, rec, pid, off, e, "max deliveries exceeded",
                                             now)
                        dlq_moved = True
                        continue
                    msg = self._read_one(txn, rec, pid, off)
                    if msg is None:  # removed by retention meanwhile
                        txn.delete(key, db=pend)
                        continue
                    e.count += 1
                    e.token = secrets.randbits(63) or 1
                    e.owner = self._owner
                    e.last = now
                    e.visible = now + vt
                    new_min = min(new_min, e.visible)
                    txn.put(key, e.encode(), db=pend)
                    out.append(Delivery(msg, self, e.count, e.token, e.visible))
                meta.min_visible_ms = new_min
            # 2. new messages
            if len(out) < max_messages:
                n = len(rec.pids)
                start = self._rotation % n
                self._rotation += 1
                offs = dbs["offsets"]
                for i in range(n):
                    part = (start + i) % n
                    pid = rec.pids[part]
                    ckey = group_pid_key(self._qg, pid)
                    raw = txn.get(ckey, db=offs)
                    cursor = 0 if raw is None else _U64.unpack(raw)[0]
                    st = _log.load_state_w(txn, env, pid)
                    if cursor < st.start:
                        cursor = st.start
                    if cursor >= st.next:
                        continue
                    msgs: list[_core.Message] = []
                    nxt = _log.read_records(txn, dbs, pid, cursor, max_messages - len(out), msgs,
                                            self.topic, part, st.next)
                    if not msgs:
                        continue
                    visible = now + vt
                    prefix = self._qg.encode() + b"\x00"
                    items = []
                    for m in msgs:
                        token = secrets.randbits(63) or 1
                        items.append((prefix + _PK_TAIL.pack(pid, m.offset),
                                      _PENDING.pack(visible, token, now, now, 1, self._owner)))
                        out.append(Delivery(m, self, 1, token, visible))
                    txn.cursor(db=pend).putmulti(items)
                    txn.put(ckey, _U64.pack(nxt), db=offs)
                    meta.min_visible_ms = min(meta.min_visible_ms, visible)
                    if len(out) >= max_messages:
                        break
            self._store_meta(txn, meta)
            next_visible = meta.min_visible_ms
        if dlq_moved and self.dead_letter_topic is not None:
            env.notify_topics((self.dead_letter_topic,))
        return out, next_visible

    def _read_one(self, txn: Any, rec: _log.TopicRecord, pid: int,
                  off: int) -> _core.Message | None:
        part = rec.pids.index(pid)
        msgs: list[_core.Message] = []
        _log.read_records(txn, self._env.dbs, pid, off, 1, msgs, self.topic, part, off + 1)
        if not msgs or msgs[0].offset != off:
            return None
        return msgs[0]

    # -- settling ------------------------------------------------------------------------
    def _key(self, d: Delivery, rec: _log.TopicRecord) -> bytes:
        return self._qg.encode() + b"\x00" + _PK_TAIL.pack(rec.pids[d.partition], d.offset)

    def _check_delivery(self, d: object) -> Delivery:
        if not isinstance(d, Delivery):
            raise TypeError(f"expected a Delivery from receive(), not {type(d).__name__}")
        if d.topic != self.topic:
            raise ValueError(f"delivery of topic {d.topic!r} given to the queue of {self.topic!r}")
        return d

    def _valid(self, txn: Any, key: bytes, d: Delivery) -> _Entry:
        raw = txn.get(key, db=self._env.dbs["pending"])
        if raw is None:
            raise StaleDeliveryError(
                f"{self.topic}[{d.partition}]@{d.offset}: already acked or dead-lettered")
        e = _Entry.decode(raw)
        if e.token != d.receipt:
            raise StaleDeliveryError(
                f"{self.topic}[{d.partition}]@{d.offset}: this delivery expired and the message "
                f"was redelivered (delivery {e.count}); nothing was changed")
        return e

    def ack(self, deliveries: Iterable[Delivery]) -> int:
        """Acknowledge many deliveries in one transaction; returns how many.

        Deliveries that are stale are skipped and reported afterwards with
        :class:`StaleDeliveryError` (its ``stale`` attribute lists them);
        the valid ones are acknowledged all the same.
        """
        self._check_open()
        ds = [self._check_delivery(d) for d in deliveries]
        if not ds:
            return 0
        stale: list[Delivery] = []
        done = 0
        pend = self._env.dbs["pending"]
        with self._broker._write() as txn:
            rec = self._broker._topic(txn, self.topic)
            for d in ds:
                key = self._key(d, rec)
                raw = txn.get(key, db=pend)
                if raw is None or _PENDING.unpack_from(raw)[1] != d.receipt:
                    stale.append(d)
                    continue
                txn.delete(key, db=pend)
                done += 1
            self._maybe_cleanup(txn, rec)
        if stale:
            err = StaleDeliveryError(
                f"{len(stale)} of {len(ds)} deliveries were stale (expired and redelivered, or "
                f"already settled); the other {done} were acknowledged")
            err.stale = stale  # type: ignore[attr-defined]
            raise err
        return done

    def ack_in(self, txn: Any, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge inside a caller's transaction; stale deliveries raise (all or nothing)."""
        rec = self._broker._topic(txn, self.topic)
        for d in deliveries:
            d = self._check_delivery(d)
            key = self._key(d, rec)
            self._valid(txn, key, d)
            txn.delete(key, db=self._env.dbs["pending"])

    def nack(self, d: Delivery, delay: float | None = None, error: str | None = None) -> None:
        """Return a message: visible again after ``delay`` (default: backoff policy).

        At ``max_deliveries`` it is dead-lettered instead.  Raises
        :class:`StaleDeliveryError` if the delivery is no longer valid.
        """
        self._check_open()
        d = self._check_delivery(d)
        if delay is not None:
            require_positive_number(delay, "delay")
        if error is not None and not isinstance(error, str):
            raise TypeError("error must be str")
        now = _now_ms()
        moved = False
        with self._broker._write() as txn:
            rec = self._broker._topic(txn, self.topic)
            key = self._key(d, rec)
            e = self._valid(txn, key, d)
            if error is not None:
                e.error = error
            if self.max_deliveries is not None and e.count >= self.max_deliveries:
                self._dead_letter_in(txn, rec, rec.pids[d.partition], d.offset, e,
                                     "max deliveries exceeded", now)
                moved = True
            else:
                if delay is None:
                    delay = 0.0 if self._backoff is None else self._backoff.delay(e.count)
                e.visible = now + int(delay * 1000)
                e.token = 0
                e.owner = b"\x00" * 16
                txn.put(key, e.encode(), db=self._env.dbs["pending"])
                meta = self._load_meta(txn)
                if e.visible < meta.min_visible_ms:
                    meta.min_visible_ms = e.visible
                    self._store_meta(txn, meta)
        self._env.notify_topics((self.dead_letter_topic,) if moved and self.dead_letter_topic
                                else (self.topic,))

    def dead_letter(self, d: Delivery, reason: str = "rejected") -> None:
        """Move a delivered message to the dead-letter topic now."""
        self._check_open()
        d = self._check_delivery(d)
        if not isinstance(reason, str):
            raise TypeError("reason must be str")
        with self._broker._write() as txn:
            rec = self._broker._topic(txn, self.topic)
            key = self._key(d, rec)
            e = self._valid(txn, key, d)
            self._dead_letter_in(txn, rec, rec.pids[d.partition], d.offset, e, reason, _now_ms())
        if self.dead_letter_topic:
            self._env.notify_topics((self.dead_letter_topic,))

    def extend(self, d: Delivery, seconds: float) -> None:
        """Keep a delivery invisible for ``seconds`` more (from now)."""
        self._check_open()
        d = self._check_delivery(d)
        require_positive_number(seconds, "seconds", allow_zero=False)
        with self._broker._write() as txn:
            rec = self._broker._topic(txn, self.topic)
            key = self._key(d, rec)
            e = self._valid(txn, key, d)
            e.visible = _now_ms() + int(seconds * 1000)
            txn.put(key, e.encode(), db=self._env.dbs["pending"])
        d.visible_at_ms = e.visible

    def _dead_letter_in(self, txn: Any, rec: _log.TopicRecord, pid: int, off: int, e: _Entry,
                        reason: str, now: int) -> None:
        """In ``txn``: append the message to the DLQ (if any) and delete its entry."""
        key = self._qg.encode() + b"\x00" + _PK_TAIL.pack(pid, off)
        txn.delete(key, db=self._env.dbs["pending"])
        if self.dead_letter_topic is None:
            return
        msg = self._read_one(txn, rec, pid, off)
        if msg is None:
            return
        headers = [(n, v) for n, v in msg.headers if n not in _DLQ_HEADERS]
        headers += [
            (H_TOPIC, self.topic.encode()),
            (H_PARTITION, str(msg.partition).encode()),
            (H_OFFSET, str(off).encode()),
            (H_GROUP, self.group.encode()),
            (H_COUNT, str(e.count).encode()),
            (H_ERROR, e.error.encode()),
            (H_FIRST, str(e.first).encode()),
            (H_LAST, str(e.last).encode()),
            (H_REASON, reason.encode()),
            (H_TIME, str(now).encode()),
        ]
        _append_one(self._broker, txn, self.dead_letter_topic, msg.key, msg.value, headers,
                    msg.timestamp_ms)

    def _maybe_cleanup(self, txn: Any, rec: _log.TopicRecord) -> None:
        if rec.config.get("cleanup") != "consumed":
            return
        now = _now_ms()
        last = self.__dict__.get("_last_cleanup", 0)
        if now - last < 200:
            return
        self.__dict__["_last_cleanup"] = now
        env = self._env
        cfg = rec.topic_config()
        for pid in rec.pids:
            floor = consumed_floor(txn, env.dbs, rec, pid)
            if floor is None:
                continue
            st = _log.load_state_w(txn, env, pid)
            if _log.apply_retention(txn, env.dbs, pid, st, cfg, now, floor):
                _log.store_state(txn, env.dbs, pid, st)

    # -- inspection ------------------------------------------------------------------------
    def pending(self) -> list[dict[str, Any]]:
        """In-flight and waiting-for-retry messages of this group (for inspection)."""
        out = []
        with self._env.read_txn() as txn:
            rec = self._broker._topic(txn, self.topic)
            for key, raw in self._scan_pending(txn):
                pid, off = _PK_TAIL.unpack_from(key, len(key) - 12)
                e = _Entry.decode(raw)
                out.append({"partition": rec.pids.index(pid), "offset": off,
                            "delivery_count": e.count, "visible_at_ms": e.visible,
                            "owner": e.owner.rstrip(b"\x00").decode() or None,
                            "last_error": e.error or None})
        return out

    def lag(self) -> int:
        """Messages not yet acknowledged by this group (pending + never delivered)."""
        with self._env.read_txn() as txn:
            rec = self._broker._topic(txn, self.topic)
            total = len(self._scan_pending(txn))
            for pid in rec.pids:
                st = _log.load_state(txn, self._env.dbs, pid)
                raw = txn.get(group_pid_key(self._qg, pid), db=self._env.dbs["offsets"])
                cursor = 0 if raw is None else _U64.unpack(raw)[0]
                total += max(0, st.next - max(cursor, st.start))
        return total

    # -- lifecycle --------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("this queue consumer is closed")
        if self._broker.closed:
            raise ClosedError("the broker of this queue consumer is closed")

    def close(self) -> None:
        """Stop; messages still held become visible to others at once. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(1.0)
        if os.getpid() != self._pid or self._broker.closed:
            return
        try:
            with self._broker._write() as txn:
                meta = self._load_meta(txn)
                released = 0
                for key, raw in self._scan_pending(txn):
                    e = _Entry.decode(raw)
                    if e.owner == self._owner:
                        e.visible, e.owner, e.token = 0, b"\x00" * 16, 0
                        txn.put(key, e.encode(), db=self._env.dbs["pending"])
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

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _append_one(broker: Broker, txn: Any, topic: str, key: bytes | None, value: bytes | None,
                headers: list[tuple[str, bytes]], ts: int, partition: int | None = None) -> int:
    """Append one record inside ``txn`` (no size cap: it was accepted once already)."""
    env = broker._env
    rec = broker._topic(txn, topic)
    part = broker._choose_partition(rec, key, partition)
    batches = _core.encode_batches([value if value is not None else b""],
                                   None if key is None else [key], [headers], ts,
                                   max_message_bytes=1 << 30)
    pid = rec.pids[part]
    st = _log.load_state_w(txn, env, pid)
    off = _log.append_batches(txn, env.dbs, pid, batches, st)
    _log.store_state(txn, env.dbs, pid, st)
    return off


def consumed_floor(txn: Any, dbs: dict[str, Any], rec: _log.TopicRecord, pid: int) -> int | None:
    """Lowest offset of partition ``pid`` that some queue group of the topic still needs."""
    prefix = f"~q~{rec.name}~".encode()
    cur = txn.cursor(db=dbs["groups"])
    groups = []
    if cur.set_range(prefix):
        for k in cur.iternext(keys=True, values=False):
            k = bytes(k)
            if not k.startswith(prefix):
                break
            groups.append(k.decode())
    if not groups:
        return None
    floor: int | None = None
    for qg in groups:
        raw = txn.get(group_pid_key(qg, pid), db=dbs["offsets"])
        cursor = 0 if raw is None else _U64.unpack(raw)[0]
        low = cursor
        pc = txn.cursor(db=dbs["pending"])
        pfx = qg.encode() + b"\x00" + pid.to_bytes(4, "big")
        if pc.set_range(pfx):
            k = bytes(pc.key())
            if k.startswith(pfx):
                low = min(low, _U64.unpack(k[-8:])[0])
        floor = low if floor is None else min(floor, low)
    return floor


def _drop_topic_queues(txn: Any, dbs: dict[str, Any], rec: _log.TopicRecord) -> None:
    """Delete-topic hook: forget queue groups, cursors and pending entries of the topic."""
    prefix = f"~q~{rec.name}~".encode()
    for dbname in ("groups", "pending"):
        cur = txn.cursor(db=dbs[dbname])
        doomed = []
        if cur.set_range(prefix):
            for k in cur.iternext(keys=True, values=False):
                k = bytes(k)
                if not k.startswith(prefix):
                    break
                doomed.append(k)
        for k in doomed:
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
                      last_error=_header(msg, H_ERROR) or None, message=msg)


_DLQ_DONE = "~dlq~"


def dead_letters(broker: Broker, dlq_topic: str, limit: int = 1000) -> list[DeadLetter]:
    """Dead letters in ``dlq_topic`` not yet redriven or purged, oldest first."""
    validate_topic_name(dlq_topic)
    require_int(limit, "limit", minimum=1)
    out: list[DeadLetter] = []
    env = broker._live_env()
    with env.read_txn() as txn:
        rec = broker._topic(txn, dlq_topic)
        for part, pid in enumerate(rec.pids):
            st = _log.load_state(txn, env.dbs, pid)
            msgs: list[_core.Message] = []
            _log.read_records(txn, env.dbs, pid, st.start, limit, msgs, dlq_topic, part, st.next)
            for m in msgs:
                if txn.get(_done_key(dlq_topic, pid, m.offset), db=env.dbs["pending"]) is None:
                    out.append(_as_dead_letter(m))
                    if len(out) >= limit:
                        return out
    return out


def _done_key(dlq_topic: str, pid: int, off: int) -> bytes:
    return f"{_DLQ_DONE}{dlq_topic}".encode() + b"\x00" + _PK_TAIL.pack(pid, off)


def redrive(broker: Broker, dlq_topic: str,
            where: Callable[[DeadLetter], bool] | None = None, limit: int | None = None,
            to_topic: str | None = None) -> int:
    """Send dead letters back to their original topic (or ``to_topic``); returns how many.

    Each redriven message is appended with its original key, value, headers
    (the ``x-*`` dead-letter headers removed) and marked done in the same
    transaction, so a crash never redrives twice.  ``where`` filters.
    """
    if to_topic is not None:
        validate_topic_name(to_topic)
    n = 0
    touched: set[str] = set()
    env = broker._live_env()
    with broker._write() as txn:
        letters = _undone(broker, txn, dlq_topic)
        rec = broker._topic(txn, dlq_topic)
        for dl in letters:
            if where is not None and not where(dl):
                continue
            if limit is not None and n >= limit:
                break
            target = to_topic or dl.original_topic
            if target is None:
                continue
            try:
                broker._topic(txn, target)
            except TopicNotFoundError:
                continue
            msg = dl.message
            headers = [(k, v) for k, v in msg.headers if k not in _DLQ_HEADERS]
            _append_one(broker, txn, target, msg.key, msg.value, headers, msg.timestamp_ms,
                        dl.original_partition if (to_topic is None and dl.original_partition
                                                  is not None and dl.original_partition <
                                                  len(broker._topic(txn, target).pids)) else None)
            txn.put(_done_key(dlq_topic, rec.pids[dl.partition], dl.offset), b"",
                    db=env.dbs["pending"])
            touched.add(target)
            n += 1
    if touched:
        env.notify_topics(touched)
    return n


def purge_dead_letters(broker: Broker, dlq_topic: str,
                       where: Callable[[DeadLetter], bool] | None = None) -> int:
    """Mark dead letters done without redriving them; returns how many."""
    n = 0
    env = broker._live_env()
    with broker._write() as txn:
        rec = broker._topic(txn, dlq_topic)
        for dl in _undone(broker, txn, dlq_topic):
            if where is not None and not where(dl):
                continue
            txn.put(_done_key(dlq_topic, rec.pids[dl.partition], dl.offset), b"",
                    db=env.dbs["pending"])
            n += 1
    return n


def _undone(broker: Broker, txn: Any, dlq_topic: str) -> list[DeadLetter]:
    validate_topic_name(dlq_topic)
    env = broker._env
    rec = broker._topic(txn, dlq_topic)
    out = []
    for part, pid in enumerate(rec.pids):
        st = _log.load_state(txn, env.dbs, pid)
        msgs: list[_core.Message] = []
        _log.read_records(txn, env.dbs, pid, st.start, 1 << 30, msgs, dlq_topic, part, st.next)
        for m in msgs:
            if txn.get(_done_key(dlq_topic, pid, m.offset), db=env.dbs["pending"]) is None:
                out.append(_as_dead_letter(m))
    return out


def _register_hooks() -> None:
    from mqlite import broker as _broker

    if _drop_topic_queues not in _broker._TOPIC_DELETE_HOOKS:
        _broker._TOPIC_DELETE_HOOKS.append(_drop_topic_queues)
    if consumed_floor not in _broker._CONSUMED_FLOOR_HOOKS:
        _broker._CONSUMED_FLOOR_HOOKS.append(consumed_floor)


_register_hooks()


def _after_fork_in_child() -> None:
    for q in list(_live_queues):
        if q._lock_fd >= 0:
            try:
                os.close(q._lock_fd)
            except OSError:
                pass
            q._lock_fd = -1


os.register_at_fork(after_in_child=_after_fork_in_child)
_ = GroupError
