"""Settling deliveries: ack, nack, extend, dead-letter, and the write-back of entries.

Owns the bodies of :meth:`Queue.ack` (the hot path: one ``get`` per pending
entry, bits cleared in place, one write per entry), :meth:`Queue.ack_in`
(inside a caller's transaction, all or nothing), :meth:`Queue.nack`,
:meth:`Queue.extend` and :meth:`Queue.dead_letter`.  A delivery is valid while
its entry still exists under the token it was made with and its bit is set;
a stale one changes nothing and is reported with
:class:`~mqlite.StaleDeliveryError`.  Messages nacked, extended or
dead-lettered are split out of their entry into one of their own.

Callers: :class:`~mqlite.queue.consumer.Queue` (these functions are its
methods' bodies) and, through ``Queue.ack_in``, ``Transaction``.
Changes: pending entries and the group record's ``min_visible_ms``; appends to
the dead-letter topic; log head deletion under ``cleanup="consumed"``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from mqlite import _core
from mqlite._engine import RING_OK, RING_RETRY, now_ms, on_ring_kind
from mqlite._storage import log as _log
from mqlite._storage import pending as _pending
from mqlite._storage.pending import NOBODY, Entry
from mqlite.config import MAX_DELAY_S, MAX_VISIBILITY_TIMEOUT_S
from mqlite.errors import StaleDeliveryError
from mqlite.queue.consumed import cleanup_consumed
from mqlite.queue.deadletters import REASON_MAX_DELIVERIES, to_dlq
from mqlite.queue.deliveries import Delivery, Receipt
from mqlite.queue.policy import seconds_ms

if TYPE_CHECKING:
    from mqlite._engine import Engine
    from mqlite.queue.core import QueueCore

__all__ = ["ack", "ack_in", "dead_letter", "extend", "nack", "settle_one"]

_Groups = dict[bytes, tuple[Entry, list[Delivery]]]


def _as_list(q: QueueCore, deliveries: Delivery | Iterable[Delivery]) -> list[Delivery]:
    if isinstance(deliveries, Delivery):
        ds = [deliveries]
    elif isinstance(deliveries, list):
        ds = deliveries
    elif isinstance(deliveries, (_core.Message, str, bytes)):
        raise TypeError(f"expected a Delivery from receive(), not {type(deliveries).__name__}")
    else:
        ds = list(deliveries)
    qg = q._qg
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
                             f"was given to the queue of {q.topic!r} (group {q.group!r})")
    return ds


def _collect(q: QueueCore, txn: Any, ds: Sequence[Delivery]) -> tuple[_Groups, list[Delivery]]:
    """Valid deliveries grouped by their pending entry (bits already cleared), and stale."""
    dbs = q._env.dbs
    groups: _Groups = {}
    stale: list[Delivery] = []
    for d in ds:
        r = d._r
        g = groups.get(r.key)
        if g is None:
            e = _pending.get(txn, dbs, r.key)
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
    # an entry whose every given delivery was stale (e.g. already acked while the entry
    # still holds other messages) is left alone: nothing of it is settled here
    return {k: g for k, g in groups.items() if g[1]}, stale


def ack(q: QueueCore, deliveries: Delivery | Iterable[Delivery]) -> int:
    """:meth:`Queue.ack` (documented there)."""
    q._check_open()
    if isinstance(deliveries, Delivery):
        ds: list[Delivery] = [deliveries]
    elif isinstance(deliveries, list):
        ds = deliveries
    else:
        ds = _as_list(q, deliveries)
    if not ds:
        return 0
    env = q._env
    if env.combiner is not None and _ack_by_ring(q, ds):
        return len(ds)
    dbs = env.dbs
    qg = q._qg
    held = _pending.held_bits
    stale: list[Delivery] = []
    done = 0
    txn = env.write_txn()
    try:
        r0: Any = None
        bm: Any = None
        first = nb = 0
        ok = False
        foreign = False
        touched: list[tuple[Receipt, Any, bytearray]] = []
        for d in ds:
            try:
                r = d._r
            except AttributeError:
                raise TypeError("expected a Delivery from receive(), not "
                                f"{type(d).__name__}") from None
            if r is not r0:
                if type(r) is not Receipt or type(d) is not Delivery and \
                        not isinstance(d, Delivery):
                    raise TypeError(f"expected a Delivery from receive(), not "
                                    f"{type(d).__name__}")
                if r.qg != qg:
                    raise ValueError(f"a delivery of {r.queue.topic!r} (group "
                                     f"{r.queue.group!r}) was given to the queue of "
                                     f"{q.topic!r} (group {q.group!r})")
                if r.queue is not q and not foreign:
                    # Another consumer's delivery: its topic may be newer than this
                    # one's (deleted and created again since this one was opened).
                    # Its own are of this one's topic, and an entry found under their
                    # key proves that topic is still there (partition ids are never
                    # reused).
                    q._topic_in(txn)
                    foreign = True
                r0 = r
                got = held(txn, dbs, r.key, r.token)
                ok = got is not None
                if got is not None:
                    for tr, _traw, tbm in touched:
                        if tr.key == r.key:
                            bm = tbm
                            break
                    else:
                        bm = got[1]
                        touched.append((r, got[0], bm))
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
        if stale:
            # Deliveries of a topic deleted since (their entries went with it): say so,
            # not "stale" (every delivery of this consumer is then stale: nothing acked).
            q._topic_in(txn)
        for r, raw, bm in touched:
            _pending.write_bits(txn, dbs, r.key, raw, bm)
        if done:
            cleanup_consumed(q._engine, txn, q.topic)
    except BaseException as exc:  # noqa: BLE001 - fail() aborts and re-raises
        env.fail(txn, exc, f"ack on {q.topic!r}")
    env.commit(txn)
    if stale:
        err = StaleDeliveryError(
            f"{len(stale)} of {len(ds)} deliveries were stale (expired and redelivered, "
            f"released, or already settled); the other {done} were acknowledged")
        err.stale = stale
        err.settled = done
        raise err
    return done


def settle_one(q: QueueCore, d: Delivery) -> None:
    """``Delivery.ack()``: :func:`ack` of one delivery, with a message about it."""
    try:
        q.ack([d])
    except StaleDeliveryError:
        raise StaleDeliveryError(
            f"{q.topic}[{d.partition}]@{d.offset}: this delivery is stale (its visibility "
            "timeout expired or its owner was released, and the message may have been "
            "redelivered; or it was already settled); nothing was changed") from None


def ack_in(q: QueueCore, txn: Any, deliveries: Sequence[Delivery]) -> None:
    """:meth:`Queue.ack_in` (documented there)."""
    ds = _as_list(q, list(deliveries))
    q._topic_in(txn)  # deleted (maybe created again) since: TopicNotFoundError
    groups, stale = _collect(q, txn, ds)
    if stale:
        d = stale[0]
        raise StaleDeliveryError(
            f"{q.topic}[{d.partition}]@{d.offset}: stale delivery; nothing was acknowledged")
    _write_back(q, txn, groups)


def _write_back(q: QueueCore, txn: Any, groups: _Groups) -> None:
    dbs = q._env.dbs
    for e, _ in groups.values():
        _pending.put(txn, dbs, e)


#: What a settle did to one entry (``_Fn``'s result, bits): messages moved to the
#: dead-letter topic (or dropped, without one) ...
_MOVED = 1
#: ... and messages of the group receivable sooner than every waiting receiver's wait
#: is bounded by (a nack; an extend that brought the group's earliest deadline forward).
_SOONER = 2

_Fn = Callable[[Any, _log.TopicRecord, Entry, list[Delivery], int], int]


def _apply(q: QueueCore, deliveries: Delivery | Iterable[Delivery], what: str, fn: _Fn
           ) -> tuple[int, bool]:
    """Run ``fn`` per entry on the valid deliveries in one transaction; raise for stale.

    Wake-ups (D76): when ``fn`` made messages receivable sooner, one receiver of this
    group (``Queue._wake_receiver``), nobody else: nothing was appended to the topic.
    Messages moved to the dead-letter topic were appended there, and the commit
    notifies that topic in full (``Engine.append_in`` marks it touched).
    """
    q._check_open()
    ds = _as_list(q, deliveries)
    if not ds:
        return 0, False
    now = now_ms()
    did = 0
    with q._engine.write() as txn:
        rec = q._topic_in(txn)  # deleted (maybe created again) since: TopicNotFoundError
        groups, stale = _collect(q, txn, ds)
        _write_back(q, txn, groups)
        done = 0
        for e, group in groups.values():
            did |= fn(txn, rec, e, group, now)
            done += len(group)
        if did & _MOVED:
            cleanup_consumed(q._engine, txn, q.topic)
    if did & _SOONER:
        q._wake_receiver()
    if stale:
        if len(ds) == 1:
            d = stale[0]
            msg = (f"{q.topic}[{d.partition}]@{d.offset}: this delivery is stale (timed "
                   "out and possibly redelivered, released, or already settled); nothing "
                   "was changed")
        else:
            msg = (f"{len(stale)} of {len(ds)} deliveries were stale; the other {done} "
                   f"were {what}")
        err = StaleDeliveryError(msg)
        err.stale = stale
        err.settled = done
        raise err
    return done, bool(did & _MOVED)


def _split(q: QueueCore, txn: Any, e: Entry, group: list[Delivery], *, visible: int, token: int,
           owner: bytes, count: int, error: str) -> bytes:
    """Write a new entry holding ``group``'s offsets (taken out of ``e``)."""
    ms = _messages_of(group)
    first = ms[0].offset
    span = ms[-1].offset - first + 1
    new = Entry(b"", e.pid, first, visible, token, e.first_ms, e.last_ms, count, owner,
                span, _pending.bitmap(span, first, ms), error)
    return _pending.add(txn, q._env.dbs, q._prefix, new)


def _lower_hint(q: QueueCore, txn: Any, visible: int) -> bool:
    """Bring the group's ``min_visible_ms`` forward to ``visible``; ``True`` when it did
    (receivers asleep bound their waits by it: only then may one need waking)."""
    meta = q._load_meta(txn)
    if visible < meta.min_visible_ms:
        meta.min_visible_ms = visible
        q._store_meta(txn, meta)
        return True
    return False


def _messages_of(group: list[Delivery]) -> list[Delivery]:
    return sorted(group, key=lambda d: d.offset)


def nack(q: QueueCore, deliveries: Delivery | Iterable[Delivery], delay: float | None,
         error: str | None) -> int:
    """:meth:`Queue.nack` (documented there)."""
    delay_ms = None if delay is None else seconds_ms(delay, "delay", allow_zero=True,
                                                     maximum=MAX_DELAY_S)
    if error is not None and not isinstance(error, str):
        raise TypeError("error must be str")

    def fn(txn: Any, rec: _log.TopicRecord, e: Entry, group: list[Delivery],
           now: int) -> int:
        err = e.error if error is None else error
        if q.max_deliveries is not None and e.count >= q.max_deliveries:
            e.error = err
            to_dlq(q._engine, txn, q.dead_letter_topic, q.topic, q.group,
                   rec.pids.index(e.pid), _messages_of(group), e, REASON_MAX_DELIVERIES, now)
            return _MOVED
        d_ms = delay_ms
        if d_ms is None:
            d_ms = 0 if q._backoff is None else int(q._backoff.delay(e.count) * 1000)
        visible = now + d_ms
        _split(q, txn, e, group, visible=visible, token=0, owner=NOBODY, count=e.count,
               error=err)
        _lower_hint(q, txn, visible)
        # Always wakes one receiver, even when the hint did not move (kept as before:
        # a nack is the common way back, and one spurious round of one receiver is
        # cheap); with a delay the woken receiver bounds its wait by it.
        return _SOONER

    return _apply(q, deliveries, "nacked", fn)[0]


def dead_letter(q: QueueCore, deliveries: Delivery | Iterable[Delivery], reason: str) -> int:
    """:meth:`Queue.dead_letter` (documented there)."""
    if not isinstance(reason, str):
        raise TypeError("reason must be str")

    def fn(txn: Any, rec: _log.TopicRecord, e: Entry, group: list[Delivery],
           now: int) -> int:
        to_dlq(q._engine, txn, q.dead_letter_topic, q.topic, q.group, rec.pids.index(e.pid),
               _messages_of(group), e, reason, now)
        return _MOVED

    return _apply(q, deliveries, "dead-lettered", fn)[0]


def extend(q: QueueCore, deliveries: Delivery | Iterable[Delivery], seconds: float) -> int:
    """:meth:`Queue.extend` (documented there)."""
    ms = seconds_ms(seconds, "seconds", allow_zero=True, maximum=MAX_VISIBILITY_TIMEOUT_S)

    post: list[tuple[list[Delivery], Receipt]] = []

    def fn(txn: Any, rec: _log.TopicRecord, e: Entry, group: list[Delivery],
           now: int) -> int:
        visible = now + ms
        key = _split(q, txn, e, group, visible=visible, token=e.token, owner=e.owner,
                     count=e.count, error=e.error)
        # The extended messages now live in an entry of their own, same token.
        post.append((group, Receipt(group[0]._r.queue, key, e.token, e.count, visible,
                                    min(d.offset for d in group), e.pid)))
        # A later deadline makes nothing receivable sooner: every receiver asleep bounds
        # its wait by the group's earliest deadline, which this did not move (D76).
        # ``extend(0)`` (receivable now) always wakes one, even under a stale hint.
        return _SOONER if _lower_hint(q, txn, visible) or ms == 0 else 0

    try:
        n = _apply(q, deliveries, "extended", fn)[0]
    finally:
        if sys.exc_info()[0] in (None, StaleDeliveryError):  # committed
            for group, r in post:
                for d in group:
                    d._r = r
    return n


# -- acks through the commit ring (docs/decisions.md D27) ----------------------------------------

#: Commit-ring slot kind of a queue ack (see mqlite._engine.on_ring_kind).
RING_KIND_ACK = 2


class _RingAck(msgspec.Struct, array_like=True):
    topic: str
    qg: str
    entries: list[tuple[bytes, int, int, list[int]]]  # key, token, first offset, offsets


_ring_enc = msgspec.msgpack.Encoder()
_ring_dec = msgspec.msgpack.Decoder(_RingAck)


def _ack_by_ring(q: QueueCore, ds: list[Delivery]) -> bool:
    """Acknowledge ``ds`` through the cross-process commit ring; ``True`` when done.

    All or nothing: when a delivery is not a well-formed one of this queue, or
    the committer finds one stale, nothing is written and the caller acks alone
    (which reports the stale ones exactly as without the ring).
    """
    by: dict[int, tuple[Any, list[int]]] = {}
    seen: set[tuple[int, int]] = set()
    for d in ds:
        if type(d) is not Delivery:
            return False
        r = d._r
        k = (id(r), d.offset)
        if type(r) is not Receipt or r.queue is not q or k in seen:
            return False  # (another consumer's delivery: the caller checks its topic)
        seen.add(k)
        by.setdefault(id(r), (r, []))[1].append(d.offset)
    if len({r.key for r, _ in by.values()}) != len(by):
        return False
    payload = bytes((RING_KIND_ACK,)) + _ring_enc.encode(_RingAck(
        q.topic, q._qg, [(r.key, r.token, r.first, offs) for r, offs in by.values()]))
    res = q._engine.ring_submit(q._env.combiner, [payload], follow=True)
    return res is not None and res[0][0] == RING_OK


def _apply_ring_ack(engine: Engine, txn: Any, payload: bytes) -> tuple[int, int, int, int]:
    """Inside the committer's transaction: clear the acked bits of one ack, all or nothing."""
    try:
        op = _ring_dec.decode(payload[1:])
    except msgspec.DecodeError:
        return (RING_RETRY, 0, 0, 0)
    dbs = engine.env.dbs
    writes = []
    for key, token, first, offs in op.entries:
        if not key.startswith(_pending.prefix(op.qg)):
            return (RING_RETRY, 0, 0, 0)
        got = _pending.held_bits(txn, dbs, key, token)
        if got is None:
            return (RING_RETRY, 0, 0, 0)
        raw, bm = got
        for off in offs:
            i = off - first
            j, m = i >> 3, 1 << (i & 7)
            if not (0 <= j < len(bm)) or not bm[j] & m:
                return (RING_RETRY, 0, 0, 0)
            bm[j] ^= m
        writes.append((key, raw, bm))
    for key, raw, bm in writes:
        _pending.write_bits(txn, dbs, key, raw, bm)
    cleanup_consumed(engine, txn, op.topic)
    return (RING_OK, 0, 0, 0)


on_ring_kind(RING_KIND_ACK, _apply_ring_ack)
