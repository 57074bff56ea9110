"""The :class:`Queue`: one competing consumer of a queue group.

Composes the concerns of this package: it validates its options, joins the
group (``policy``: the group's stored policy is adopted or a conflict raised),
takes a lock file and starts the watcher (``liveness``), and forwards
``receive`` to ``receive`` and ack / nack / extend / dead_letter to ``settle``.
It owns the consumer's process-local state; the underscore fields below are
shared with the package's modules, which implement its methods, and with
nothing else.  Closing releases the consumer's held messages at once.

Callers: ``Broker.queue`` (users), ``Delivery`` (settling), ``Transaction``
(``ack_in``), the engine's ``close`` (adopted child).
Changes: the group record (consumer joins and leaves) and, through the
modules it composes, pending entries, cursors and dead-letter topics.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Self

from mqlite._engine import draining, retry_draining
from mqlite._lifecycle import UseGuard, guarded
from mqlite._storage import log as _log
from mqlite._storage import pending as _pending
from mqlite._storage import queues as _queues
from mqlite._storage.env import NOTIFY_SLOTS, QUEUE_VERSION_SLOT, QUEUE_WORD_FIRST
from mqlite._storage.pending import NOBODY, Entry
from mqlite.config import (
    MAX_VISIBILITY_TIMEOUT_S,
    UNSET,
    require_int,
    validate_group_name,
    validate_topic_name,
)
from mqlite.config import Unset as _Unset
from mqlite.errors import ClosedError, GroupError, TopicNotFoundError
from mqlite.queue import receive as _receive
from mqlite.queue import settle as _settle
from mqlite.queue.deliveries import Delivery
from mqlite.queue.liveness import QueueLiveness
from mqlite.queue.policy import (
    QueueMeta,
    QueuePolicy,
    given_policy,
    load_meta,
    merge_policy,
    queue_policy,
    seconds_ms,
    store_meta,
)
from mqlite.retry import Backoff

if TYPE_CHECKING:
    from mqlite._engine import Engine
    from mqlite._storage.log import TopicRecord

__all__ = ["Queue"]


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
        ``0 <= visibility_timeout <= 43200``, 12 hours, as SQS; 0 leaves a
        received message visible to others at once).
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
        self.visibility_timeout_ms = seconds_ms(visibility_timeout, "visibility_timeout",
                                                allow_zero=True,
                                                maximum=MAX_VISIBILITY_TIMEOUT_S)
        self._given = given_policy(topic, max_deliveries, dead_letter_topic, retry_backoff)
        self._policy = QueuePolicy()
        self._backoff: Backoff | None = None
        self._engine = engine
        self._env = engine.live_env()
        self.topic = topic
        self.group = group
        self._qg = _queues.group_name(topic, group)
        self._prefix = _pending.prefix(self._qg)  # of the group's pending entries
        self.max_deliveries: int | None = None
        self.dead_letter_topic: str | None = None
        engine.topic_fresh(topic)
        # fail before creating anything; _register checks again under the write lock
        merge_policy(queue_policy(engine, topic, group), self._given, topic, group, alter=False)
        if self._given.get("dead_letter_topic") is not None:
            engine.create_topic(self._given["dead_letter_topic"], exist_ok=True)
        self.owner_id = uuid.uuid4().hex[:16]
        self._owner = self.owner_id.encode()
        self._closed = False
        self._rotation = 0
        self._idle = False
        self._pid = os.getpid()
        # Receivers wait on their group's word, woken one at a time (D67, D74); set by
        # the registration.  Until then (and for good when every queue word is taken)
        # the topic's word, which every change wakes in full (D70's way).
        self._slot = self._env.topic_slot(topic)
        self._one = False
        # While ``_one`` is false: the version word (QUEUE_VERSION_SLOT) as loaded before
        # this consumer last read its group's word.  Once it moves, a registration may
        # have given the group a word (a deletion freed one): _refresh_word (D85).
        self._version = 0
        # The topic this consumer joined: its first partition id, read by the
        # registration (partition ids are never reused, so a topic deleted and created
        # again under the same name has another).  Every call checks it (_topic_in).
        self._incarnation = -1
        self._life = UseGuard("queue consumer", self._wake_waiter, exclusive=False)
        self._liveness = QueueLiveness(self)
        self._register()
        try:
            self._liveness.start()  # reaps once first (a crash before we joined)
            engine.adopt(self)  # broker.close() closes this queue consumer
        except BaseException:
            self.close()
            raise

    # -- membership --------------------------------------------------------------------
    def _register(self) -> None:
        name = self._liveness.create_lock()
        # before the transaction: a registration that gives the group a word after it
        # moves the version word past this value (_refresh_word)
        version = self._env.notifier.load(QUEUE_VERSION_SLOT)
        try:
            policy, word, late = retry_draining(lambda: self._register_in_txn(name))
        except BaseException:
            self._liveness.drop_lock()
            raise
        self._adopt(policy)
        if word is not None:
            self._slot, self._one = word, True
        else:
            self._version = version
        # After the commit, before this consumer can receive: writers whose cache of the
        # topic's queue words predates this bump read them again (Env.queue_words, D74).
        self._env.wake(QUEUE_VERSION_SLOT)
        if late:
            # The group had consumers before it got its word (none was free when they
            # registered): they sleep on the topic's word, which settles and chained
            # wake-ups of the group no longer bump.  Wake them all, after the version
            # bump: each looks again, sees the version moved and moves to the group's
            # word (_refresh_word; D85).
            self._env.wake(self._env.topic_slot(self.topic))

    def _register_in_txn(self, name: str) -> tuple[QueuePolicy, int | None, bool]:
        """The registration's write transaction (retried as a draining write: joining a
        group that exists is always admitted): the group's policy, its wake-up word
        (allocated by the group's first registration; ``None`` when none was free) and
        whether the word was allocated now for a group that existed without one."""
        dbs = self._env.dbs
        late = False
        with self._engine.write() as txn:
            # the topic may have gone since the constructor's check: no orphan record
            self._incarnation = self._engine.topic(txn, self.topic).pids[0]
            existed = load_meta(txn, dbs, self._qg) is not None
            if not existed:
                self._engine.admit_growth(txn)  # a new group adds state
            meta = self._load_meta(txn)
            meta.policy = merge_policy(meta.policy, self._given, self.topic, self.group,
                                       alter=False)
            meta.consumers[self.owner_id] = name
            self._store_meta(txn, meta)
            word = _queues.word_of(txn, dbs, self._qg)
            if word is None:  # a new group, or one stored before groups had words
                word = _queues.allocate_word(txn, dbs, self._qg, QUEUE_WORD_FIRST,
                                             NOTIFY_SLOTS)
                late = existed and word is not None
            elif not QUEUE_WORD_FIRST <= word < NOTIFY_SLOTS:
                word = None  # damaged: wait on the topic's word (writers skip it too)
        return meta.policy, word, late

    def _refresh_word(self) -> bool:
        """For a consumer without its group's word (``_one`` false): when the version
        word moved since it last looked, read the group's word again and, if the group
        has one now, wait and bump there from now on (D85).  Whether it moved to it.

        A group registered when every word was taken has none; a later registration of
        the same group, after a deletion freed one, allocates it, and from then on the
        group's own wake-ups (settles, chained wake-ups, writers) go to that word only.
        Callers load the word they wait on *before* calling this (the registration
        bumps the version word, then the topic's), or bump the topic's word before it
        (a full barrier before this load; D74's argument for the writers' caches).
        """
        env = self._env
        version = env.notifier.load(QUEUE_VERSION_SLOT)
        if version == self._version:
            return False
        with env.read_txn() as txn:
            word = _queues.word_of(txn, env.dbs, self._qg)
        self._version = version
        if word is None or not QUEUE_WORD_FIRST <= word < NOTIFY_SLOTS:
            return False
        self._slot = word  # before _one: a reader that sees _one true sees the word
        self._one = True
        return True

    def _adopt(self, policy: QueuePolicy) -> None:
        self._policy = policy
        self.max_deliveries = policy.max_deliveries
        self.dead_letter_topic = policy.dead_letter_topic
        self._backoff = policy.retry_backoff

    @property
    def policy(self) -> QueuePolicy:
        """The group's retry/dead-letter policy as of this consumer's last ``receive()``."""
        return self._policy

    def _topic_in(self, txn: Any) -> TopicRecord:
        """The record of this consumer's topic in ``txn``: the topic it joined.

        Raises
        ------
        TopicNotFoundError
            The topic was deleted since this consumer registered, even when a topic
            of the same name exists again (its partition ids differ: they are never
            reused).  Its group's record, cursors and pending entries went with it, so
            this consumer can neither receive from the new topic nor settle anything
            in it: like SQS's ``QueueDoesNotExist`` on a deleted queue's handle.
        """
        try:
            rec = self._engine.topic(txn, self.topic)
        except TopicNotFoundError:
            raise TopicNotFoundError(self._gone_message(again=False)) from None
        if rec.pids[0] != self._incarnation:
            raise TopicNotFoundError(self._gone_message(again=True))
        return rec

    def _gone_message(self, *, again: bool) -> str:
        what = "deleted and created again" if again else "deleted"
        then = "" if again else f" after broker.create_topic({self.topic!r})"
        return (f"topic {self.topic!r} was {what} since this queue consumer of group "
                f"{self.group!r} was opened; its deliveries went with the old topic and it "
                f"cannot receive from or settle in a new one: close it and open a new "
                f"queue consumer with broker.queue({self.topic!r}, {self.group!r}){then}")

    def _load_meta(self, txn: Any) -> QueueMeta:
        """The group's record; a missing one starts empty.  Missing only in the
        registration of a new group: a topic's deletion removes it, and every other
        caller has checked in the same transaction that the topic is the one this
        consumer joined (:meth:`_topic_in`), so it never re-creates the record of a
        deleted group."""
        meta = load_meta(txn, self._env.dbs, self._qg)
        if meta is None:
            return QueueMeta(topic=self.topic,
                             consumers={self.owner_id: self._liveness.lock_name},
                             min_visible_ms=0)
        return meta

    def _store_meta(self, txn: Any, meta: QueueMeta) -> None:
        store_meta(txn, self._env.dbs, self._qg, meta)

    def _scan(self, txn: Any, pid: int | None = None) -> list[Entry]:
        """Decoded pending entries of this group (of one partition id when given)."""
        return _pending.scan(txn, self._env.dbs, self._prefix, pid)

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

    # -- receiving ---------------------------------------------------------------------
    @guarded
    def receive(self, max_messages: int = 10, timeout: float = 1.0,
                visibility_timeout: float | None = None) -> list[Delivery]:
        """Take up to ``max_messages`` messages, waiting up to ``timeout`` s for some.

        Redeliveries (expired, released or nacked messages that are due) come
        first, then new messages in offset order per partition.  Each returned
        message is invisible to other consumers of the group until acked,
        nacked, or ``visibility_timeout`` (default: the queue's) passes.
        Waiting blocks on the cross-process wake-up word of the queue's group
        (no polling); it is bounded by the next visibility deadline and the
        next due delayed message.  :meth:`wakeup`, or :meth:`close` from another
        thread or a signal handler, ends the wait at once (an empty list).
        Writers wake one waiting receiver of each queue group of the topic per
        change (D67, D74); a receive that was woken and returns or raises
        without taking what it was woken for wakes another one (D69).

        Raises
        ------
        TopicNotFoundError
            The topic was deleted since this consumer was opened, even if a topic of
            the same name exists again: open a new queue consumer (D80).  A receive
            asleep at the deletion raises at once (the deletion wakes it).
        ClosedError, CorruptRecordError, TypeError, ValueError
        """
        return _receive.receive(self, max_messages, timeout, visibility_timeout)

    @guarded
    def receive_step(self, max_messages: int = 10, visibility_timeout: float | None = None,
                     *, first: bool = True,
                     cls: type[Delivery] = Delivery) -> _receive.ReceiveStep:
        """One non-blocking round of :meth:`receive`, for event loops (``mqlite.aio``).

        Takes what is receivable now; when nothing is, says what to wait on:
        until wake-up word ``slot`` differs from ``seq`` or ``wait`` seconds
        pass (``one``: the word wakes one waiter per bump, so a wait that was
        woken and leaves without calling again passes the wake-up on with
        ``Notifier.pass_on``; D69, D74), then call again with ``first=False``
        (which looks in a read transaction before taking the write lock, as
        ``first=True`` does too when the last round took nothing).  Writes (run it off the event loop thread).
        ``cls``: the class of the deliveries it builds, a subclass of
        :class:`Delivery` (``mqlite.aio`` builds its own directly).

        Raises
        ------
        As :meth:`receive`; ``TypeError`` for a ``cls`` that is not a Delivery class.
        """
        self._check_open()
        require_int(max_messages, "max_messages", minimum=1)
        if cls is not Delivery and not (isinstance(cls, type) and issubclass(cls, Delivery)):
            raise TypeError(f"cls must be a subclass of mqlite.queue.Delivery, not {cls!r}")
        vt = _receive.visibility_ms(self, visibility_timeout)
        return _receive.receive_step(self, max_messages, vt, first, cls)

    # -- settling ----------------------------------------------------------------------
    @guarded
    @draining
    def ack(self, deliveries: Delivery | Iterable[Delivery]) -> int:
        """Acknowledge many deliveries in one transaction; returns how many.

        Deliveries that are stale are skipped and reported afterwards with
        :class:`StaleDeliveryError` (its ``stale`` attribute lists them and
        ``settled`` counts the others); the valid ones are acknowledged all the
        same.  When the topic was deleted since this consumer was opened (even if
        created again), :class:`TopicNotFoundError` instead, and nothing is
        acknowledged: the deliveries went with the old topic, and one handed out
        under the new topic is not settled through this consumer (D80).  The
        other settling calls (``nack``, ``extend``, ``dead_letter``, ``ack_in``,
        ``Delivery.ack`` ...), :meth:`pending` and :meth:`lag` raise it too.
        """
        return _settle.ack(self, deliveries)

    @guarded
    @draining
    def _settle_one(self, d: Delivery, op: str) -> None:
        _settle.settle_one(self, d)

    def ack_in(self, txn: Any, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge inside a caller's transaction; any stale delivery raises (all or nothing)."""
        _settle.ack_in(self, txn, deliveries)

    @guarded
    @draining
    def nack(self, deliveries: Delivery | Iterable[Delivery], delay: float | None = None,
             error: str | None = None) -> int:
        """Return messages: visible again after ``delay`` s (default: the backoff policy).

        ``delay`` is in seconds, ``0 <= delay <= 10 years``.

        A message that already had ``max_deliveries`` deliveries is
        dead-lettered instead.  ``error`` is kept as its last error (and
        becomes the ``x-last-error`` header if it is dead-lettered).  Stale
        deliveries raise :class:`StaleDeliveryError` and are left unchanged.
        """
        return _settle.nack(self, deliveries, delay, error)

    @guarded
    @draining
    def dead_letter(self, deliveries: Delivery | Iterable[Delivery],
                    reason: str = "rejected") -> int:
        """Move delivered messages to the dead-letter topic now (dropped when there is none)."""
        return _settle.dead_letter(self, deliveries, reason)

    @guarded
    @draining
    def extend(self, deliveries: Delivery | Iterable[Delivery], seconds: float) -> int:
        """Keep deliveries invisible to others for ``seconds`` more, counted from now.

        ``0 <= seconds <= 43200`` (12 hours, the ``visibility_timeout`` bound);
        ``extend(0)`` makes the messages visible to others at once, as SQS's
        ChangeMessageVisibility with 0 (this delivery then goes stale once another
        consumer receives them).
        """
        return _settle.extend(self, deliveries, seconds)

    # -- inspection ------------------------------------------------------------------------
    def pending(self) -> list[dict[str, Any]]:
        """In-flight and waiting-for-retry messages of this group, one dict per message."""
        out = []
        with self._env.read_txn() as txn:
            rec = self._topic_in(txn)
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
            rec = self._topic_in(txn)
            total = sum(e.pending_count() for e in self._scan(txn))
            for pid in rec.pids:
                st = _log.load_state(txn, self._env.dbs, pid)
                cursor = _queues.cursor(txn, self._env.dbs, self._qg, pid)
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
        self._env.wake(self._slot)  # every receiver of the group: they look again

    def _wake_receiver(self) -> None:
        """After a commit that made messages of this group alone receivable again (a nack,
        an extend that brought a deadline forward, a release by close or by a reap):
        wake one receiver of the group (D76).

        Nothing was appended, so neither the topic's stream consumers (its word and its
        partitions'), the other queue groups of the topic, nor the global word 0 are
        woken.  On the fallback where the group has no word of its own (``_one`` false:
        its receivers sleep on the topic's word, D74) it notifies the topic as a writer
        does (every waiter of the topic's word, one receiver of each group's word).
        """
        if self._one:
            self._env.wake(self._slot, one=True)
        else:
            self._env.notify_topics((self.topic,))

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
        self._liveness.stop()
        if os.getpid() != self._pid or self._engine.closed:
            self._liveness.drop_lock()  # a no-op in a forked child (closed at fork)
            return
        try:
            released = retry_draining(self._release_mine)
            if released:
                self._wake_receiver()  # one receiver of this group (D76)
        finally:
            self._liveness.drop_lock()

    def _release_mine(self) -> int:
        """Leave the group: make this consumer's in-flight messages visible again."""
        with self._engine.write() as txn:
            try:
                self._topic_in(txn)
            except TopicNotFoundError:
                return 0  # the group went with its topic: nothing to release or write
            meta = self._load_meta(txn)
            released = 0
            for e in self._scan(txn):
                if e.owner == self._owner:
                    e.visible, e.owner, e.token = 0, NOBODY, 0
                    _pending.put(txn, self._env.dbs, e)
                    released += 1
            meta.consumers.pop(self.owner_id, None)
            if released:
                meta.min_visible_ms = 0
            self._store_meta(txn, meta)
        return released

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<mqlite.Queue topic={self.topic!r} group={self.group!r} owner={self.owner_id}>"
