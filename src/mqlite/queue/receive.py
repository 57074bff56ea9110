"""Receiving: due redeliveries first, then new messages; the blocking wait.

Owns the bodies of :meth:`Queue.receive`: one write transaction takes due
pending entries (expired, released or nacked; an entry at ``max_deliveries``
moves to the dead-letter topic instead) and then new messages after each
partition's cursor, writing one pending entry per delivery range and
advancing the cursor; between attempts it waits on the wake-up word of the
queue's group (D74), bounded by the next visibility deadline and the next due
delayed message.

Callers: :class:`~mqlite.queue.consumer.Queue` only (these functions are its
methods' bodies and use its package-internal fields).
Changes: pending entries, cursors and the group record's ``min_visible_ms``
of the queue's group; appends to the dead-letter topic.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from mqlite import _core
from mqlite._engine import now_ms
from mqlite._storage import log as _log
from mqlite._storage import pending as _pending
from mqlite._storage import queues as _queues
from mqlite._storage.pending import NOBODY, Entry
from mqlite.config import MAX_VISIBILITY_TIMEOUT_S, require_int, require_positive_number
from mqlite.queue.consumed import cleanup_consumed
from mqlite.queue.deadletters import REASON_MAX_DELIVERIES, to_dlq
from mqlite.queue.deliveries import Delivery, Receipt
from mqlite.queue.policy import FOREVER, load_meta, seconds_ms

if TYPE_CHECKING:
    from mqlite.queue.core import QueueCore

__all__ = ["ERROR_TIMEOUT", "ReceiveStep", "receive", "receive_step"]

ERROR_TIMEOUT = "visibility timeout expired"

_Taken = list[tuple[Receipt, int, list[_core.Message]]]


class ReceiveStep(NamedTuple):
    """One round of :meth:`Queue.receive_step` (fields as :class:`mqlite.consumer.PollStep`)."""

    deliveries: list[Delivery]
    done: bool
    slot: int
    seq: int
    wait: float
    #: ``slot`` wakes one waiter per bump (the group's word, D67, D74): a wait that was
    #: woken and leaves without a round passes its wake-up on (D69).  ``False`` for the
    #: topic's word (no group word was free), which wakes every waiter.
    one: bool = True


def visibility_ms(q: QueueCore, visibility_timeout: float | None) -> int:
    """The visibility timeout of one receive, in ms (validated)."""
    if visibility_timeout is None:
        return q.visibility_timeout_ms
    return seconds_ms(visibility_timeout, "visibility_timeout", allow_zero=True,
                      maximum=MAX_VISIBILITY_TIMEOUT_S)


def receive(q: QueueCore, max_messages: int, timeout: float,
            visibility_timeout: float | None) -> list[Delivery]:
    """:meth:`Queue.receive` (documented there)."""
    q._check_open()
    require_int(max_messages, "max_messages", minimum=1)
    require_positive_number(timeout, "timeout")
    vt = visibility_ms(q, visibility_timeout)
    notifier = q._env.notifier
    life = q._life
    deadline = time.monotonic() + timeout
    first = True
    # Whether the last wait may have taken a one-at-a-time wake-up (D67) that no round
    # used yet: set before the wait (an exception may leave it, e.g. KeyboardInterrupt
    # from a signal handler run just after it), cleared when the wait returned without
    # being woken — it timed out, or saw the word moved at a check, so the bump's
    # wake-up went to another sleeper or to nobody (D76) — and when a round returned.
    # Leaving with it set passes the wake-up on (D69).  Only a wait on the group's own
    # word takes a wake-up from anybody: the topic's word (when no group word was
    # free, D74) wakes every waiter.
    woke = False
    try:
        while True:
            step = receive_step(q, max_messages, vt, first)
            woke = False
            first = False
            if step.done:
                return step.deliveries
            remaining = deadline - time.monotonic()
            if remaining <= 0 or life.woken():
                return []
            woke = step.one
            how = _wait(notifier, step.slot, step.seq, min(remaining, step.wait))
            woke = woke and how == WOKEN
            if life.woken():
                return []
            q._check_open()
    finally:
        if woke:
            # Another receiver may sleep on while the message this one was woken for
            # waits: wake one (nothing when none waits).
            q._env.wake(q._slot, passing=True)


#: What :func:`_wait` returns when a wake-up took the thread off the futex queue (0: timed
#: out, 1: the word was seen moved at a check; ``Notifier.wait_woken``, D76).
WOKEN = 2

# The blocking wait of :func:`receive` (``Notifier.wait_woken``), a module global so that
# tests can run a hook between a wait and the next round (tests/unit/test_queue_pass.py).
_wait: Callable[[Any, int, int, float], int] = _core.Notifier.wait_woken


def receive_step(q: QueueCore, max_messages: int, vt: int, first: bool,
                 cls: type[Delivery] = Delivery) -> ReceiveStep:
    """One round of receiving: take what is there, else say what to wait on.

    ``first``: take at once, unless this queue's last round took nothing;
    otherwise (after a wake-up, which is only a hint, or while the queue is idle)
    look in a read transaction before taking the write lock.  So a consumer
    polling an empty queue takes no write lock and writes nothing (D57), and one
    that keeps finding messages pays no extra read.  The look sees everything the
    write would take: due redeliveries (and with them the moves to the dead-letter
    topic) through the group's ``min_visible_ms``, new messages through the cursors
    and the partitions' ends; due delayed messages are promoted before it.
    """
    from mqlite import scheduler

    engine = q._engine
    slot = q._slot
    notifier = q._env.notifier
    # Loaded before the state is read: a round that finds nothing waits on it, and a
    # change committed after this load bumps it (D74: Env.queue_words).
    seq = notifier.load(slot)
    one = q._one  # (of this round's word: a bump below may move the queue to its word)
    if not one and q._refresh_word():
        # A registration gave the group a word since (D85): the version word was loaded
        # after the topic's word's seq, and the registration bumps the version word
        # before the topic's, so a move missed here shows in that seq.
        slot = q._slot
        one = True
        seq = notifier.load(slot)
    next_due = scheduler.next_due_ms(engine)
    now = now_ms()
    take = first and not q._idle
    if next_due is not None and next_due <= now:
        scheduler.promote_due(engine)
        next_due = scheduler.next_due_ms(engine)
        take = True
    next_visible = FOREVER
    if not take:
        take, next_visible = _peek(q, now)
    if take:
        out, next_visible, more = _receive_once(q, max_messages, vt, cls)
        if out:
            q._idle = False
            if more:
                # Writers wake one receiver of the group (D67, D74): this one left
                # messages behind, so it wakes the next.
                if one:
                    notifier.bump_one(slot)
                else:
                    _bump_fallback(q, slot, one=True)
            return ReceiveStep(out, True, slot, seq, 0.0, one)
        now = now_ms()
    q._idle = True
    wait = math.inf
    if next_visible < FOREVER:
        wait = max(0.0, (next_visible - now) / 1000.0) + 0.001
    if next_due is not None:
        wait = min(wait, max(0.0, (next_due - now) / 1000.0) + 0.001)
    return ReceiveStep([], False, slot, seq, wait, one)


def _bump_fallback(q: QueueCore, slot: int, *, one: bool) -> None:
    """The bump of a receiver without its group's word, after its commit: the topic's
    word (``slot``, every waiter) and, when a registration gave the group a word since
    this consumer last looked, that word too (one waiter for a chained wake-up), where
    the group's other receivers may sleep already (D85).  The topic's bump comes
    first: a full barrier between the commit and the version word's load, so either
    the load sees the registration's bump or the receivers that moved to the word read
    after this commit."""
    notifier = q._env.notifier
    notifier.bump(slot)
    if q._refresh_word():
        if one:
            notifier.bump_one(q._slot)
        else:
            notifier.bump(q._slot)


def _peek(q: QueueCore, now: int) -> tuple[bool, int]:
    """(something may be receivable now, earliest visible_at hint) in a read txn."""
    env = q._env
    dbs = env.dbs
    qg = q._qg
    with env.read_txn() as txn:
        rec = q._topic_in(txn)  # deleted (and maybe created again) since: raise, not wait
        meta = load_meta(txn, dbs, qg)
        hint = 0 if meta is None else meta.min_visible_ms
        if hint <= now:
            return True, hint
        for pid in rec.pids:
            st = _log.load_state(txn, dbs, pid)
            if max(_queues.cursor(txn, dbs, qg, pid), st.start) < st.next:
                return True, hint
    return False, hint


def _receive_once(q: QueueCore, max_messages: int, vt: int,
                  cls: type[Delivery] = Delivery) -> tuple[list[Delivery], int, bool]:
    """Take up to ``max_messages`` in one write transaction: (deliveries, the earliest
    visibility deadline, whether receivable messages may be left: it stopped at
    ``max_messages`` before reading everything it saw)."""
    engine = q._engine
    env = q._env
    dbs = env.dbs
    topic = q.topic
    qg = q._qg
    now = now_ms()
    taken: _Taken = []
    got = 0
    dlq_moved = False
    txn = env.write_txn()
    try:
        rec = q._topic_in(txn)  # the topic this consumer joined, not a newer one
        meta = q._load_meta(txn)
        if meta.policy is not None and meta.policy != q._policy:
            q._adopt(meta.policy)  # changed by set_queue_policy
        hint = was = meta.min_visible_ms
        more = False
        # 1. redeliveries that are due
        if hint <= now:
            got, dlq_moved, hint = _redeliver(q, txn, rec, now, vt, max_messages, taken)
            more = got >= max_messages and hint <= now  # due ones left
        # 2. new messages
        if got < max_messages:
            pids = rec.pids
            n = len(pids)
            start = q._rotation % n
            q._rotation += 1
            pfx = q._prefix
            owner = q._owner
            visible = now + vt
            admitted = False
            for i in range(n):
                part = (start + i) % n
                pid = pids[part]
                cursor = _queues.cursor(txn, dbs, qg, pid)
                st = _log.load_state_w(txn, env, pid)
                cursor = max(cursor, st.start)
                if cursor >= st.next:
                    continue
                msgs: list[_core.Message] = []
                nxt = _log.read_records(txn, dbs, pid, cursor, max_messages - got, msgs,
                                        topic, part, st.next)
                if not msgs:
                    continue
                if not admitted:  # the first new delivery of this call: pending state grows
                    engine.admit_growth(txn)
                    admitted = True
                first = msgs[0].offset
                span = msgs[-1].offset - first + 1
                # all set for dense offsets; kept exact all the same
                bm = _pending.bitmap(span) if span == len(msgs) else \
                    _pending.bitmap(span, first, msgs)
                token = secrets.randbits(63) | 1
                key = _pending.add_fresh(txn, dbs, pfx, pid, first, visible, token, now, owner,
                                         span, bm)
                taken.append((Receipt(q, key, token, 1, visible, first, pid), part, msgs))
                got += len(msgs)
                _queues.set_cursor(txn, dbs, qg, pid, nxt)
                hint = min(hint, visible)
                if got >= max_messages:
                    # left: this partition's rest, or partitions not looked at
                    more = nxt < st.next or i < n - 1
                    break
        else:
            more = True  # full of redeliveries: new messages were not looked at
        if hint != meta.min_visible_ms:
            meta.min_visible_ms = hint
            q._store_meta(txn, meta)
        if dlq_moved:
            cleanup_consumed(engine, txn, topic)
    except BaseException as exc:  # noqa: BLE001 - fail() aborts and re-raises
        env.fail(txn, exc, f"receive from {topic!r}")
    env.commit(txn)
    if got and hint < was:
        # Waiting consumers bound their wait by the earliest visibility deadline they
        # saw: wake them only when it moved earlier (the first delivery of an idle
        # queue, a shorter visibility timeout), not for every delivery (D67).  Only
        # this group's: the deadline is the group's (D74).
        if q._one:
            env.notifier.bump(q._slot)
        else:
            _bump_fallback(q, q._slot, one=False)
    # Messages moved to the dead-letter topic: the commit notified it (appended to,
    # ``Engine.append_in`` marks it touched).
    # Build the Delivery objects outside the write transaction.
    out: list[Delivery] = []
    ap = out.append
    D = cls
    for r, part, msgs in taken:
        for m in msgs:
            d = D(topic, part, m.offset, m.timestamp_ms, m.key, m.value, m.headers or None)
            d._r = r
            ap(d)
    return out, hint, more


def _redeliver(q: QueueCore, txn: Any, rec: _log.TopicRecord, now: int, vt: int,
               max_messages: int, taken: _Taken) -> tuple[int, bool, int]:
    """Take due pending entries; returns (messages taken, dead-lettered any, new hint)."""
    dbs = q._env.dbs
    pfx = q._prefix
    due, new_min = _pending.due(txn, dbs, pfx, now, FOREVER)
    got = 0
    moved = False
    visible = now + vt
    for e in due:
        if got >= max_messages:
            new_min = min(new_min, e.visible)
            continue
        if e.pid not in rec.pids:  # cannot happen: topic deletion drops entries
            _pending.delete(txn, dbs, e.key)
            continue
        part = rec.pids.index(e.pid)
        msgs = _read_entry(q, txn, e, part)
        timed_out = e.token != 0 and e.owner != NOBODY
        error = ERROR_TIMEOUT if timed_out else e.error
        _pending.delete(txn, dbs, e.key)
        if not msgs:  # all removed by retention meanwhile
            continue
        if q.max_deliveries is not None and e.count >= q.max_deliveries:
            e.error = error
            to_dlq(q._engine, txn, q.dead_letter_topic, q.topic, q.group, part, msgs, e,
                   REASON_MAX_DELIVERIES, now)
            moved = True
            continue
        want = max_messages - got
        take, rest = msgs[:want], msgs[want:]
        if rest:  # the remainder stays visible under a dead token
            first = rest[0].offset
            span = rest[-1].offset - first + 1
            _pending.add(txn, dbs, pfx, Entry(
                b"", e.pid, first, e.visible, 0, e.first_ms, e.last_ms, e.count, NOBODY,
                span, _pending.bitmap(span, first, rest), error))
            new_min = min(new_min, e.visible)
        first = take[0].offset
        span = take[-1].offset - first + 1
        token = secrets.randbits(63) | 1
        count = e.count + 1
        key = _pending.add(txn, dbs, pfx, Entry(
            b"", e.pid, first, visible, token, e.first_ms, now, count, q._owner, span,
            _pending.bitmap(span, first, take), error))
        taken.append((Receipt(q, key, token, count, visible, first, e.pid), part, take))
        got += len(take)
        new_min = min(new_min, visible)
    return got, moved, new_min


def _read_entry(q: QueueCore, txn: Any, e: Entry, part: int) -> list[_core.Message]:
    """The still-pending messages of an entry that are still stored."""
    msgs: list[_core.Message] = []
    _log.read_records(txn, q._env.dbs, e.pid, e.first, e.span, msgs, q.topic, part,
                      e.first + e.span)
    bm = e.bm
    first = e.first
    out = []
    for m in msgs:
        j = m.offset - first
        if bm[j >> 3] >> (j & 7) & 1:
            out.append(m)
    return out
