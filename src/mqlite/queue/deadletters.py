"""Dead letters: the move to the dead-letter topic, and the tools over it.

Owns the ``x-*`` dead-letter headers, :func:`to_dlq` (append messages of a
pending entry to the group's dead-letter topic inside the caller's
transaction), :class:`DeadLetter` and the public tools :func:`dead_letters`,
:func:`redrive` and :func:`purge_dead_letters`, which mark letters done in
``_storage.pending`` in the same transaction that redrives them.

Callers: ``receive`` (max deliveries reached on redelivery), ``settle``
(nack at max deliveries, ``dead_letter``), ``Broker.dead_letters`` /
``redrive`` / ``purge_dead_letters``.
Changes: appends to the dead-letter topic (or, for redrive, to the original
topic) and the dead-letter done marks.

Space: every append here is admitted before it writes (D57): a move to the
dead-letter topic as a growing write (refused above 95% of the map, with the
receive, nack or ``dead_letter`` that asked for it: nothing changes), a redrive
as a send (refused above 90%, nothing redriven).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from mqlite import _core
from mqlite._engine import now_ms
from mqlite._storage import log as _log
from mqlite._storage import pending as _pending
from mqlite.config import TopicConfig, require_int, validate_topic_name
from mqlite.errors import StorageFullError, TopicNotFoundError

if TYPE_CHECKING:
    from mqlite._engine import Engine
    from mqlite._storage.pending import Entry

__all__ = ["DLQ_HEADERS", "H_COUNT", "H_ERROR", "H_ERROR_TYPE", "H_FIRST", "H_GROUP", "H_LAST", "H_OFFSET", "H_PARTITION",
           "H_REASON", "H_TIME", "H_TOPIC", "REASON_MAX_DELIVERIES", "DeadLetter",
           "dead_letters", "purge_dead_letters", "redrive", "to_dlq"]

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
H_ERROR_TYPE = "x-error-type"  # set by mqlite.App's dead letters (the exception's type)
_DLQ_HEADERS = frozenset({H_TOPIC, H_PARTITION, H_OFFSET, H_COUNT, H_ERROR, H_FIRST, H_LAST,
                          H_REASON, H_GROUP, H_TIME, H_ERROR_TYPE})
#: The provenance headers a dead letter gains (removed again by ``redrive``).
DLQ_HEADERS = _DLQ_HEADERS
REASON_MAX_DELIVERIES = "max deliveries exceeded"
_MAX_ERROR = _pending.MAX_ERROR


def to_dlq(engine: Engine, txn: Any, dlq: str | None, topic: str, group: str, part: int,
           msgs: Sequence[Any], e: Entry, reason: str, now: int) -> None:
    """In ``txn``: append ``msgs`` (of entry ``e`` of ``topic``'s partition ``part``) to
    the dead-letter topic ``dlq``, if any (``None``: they are dropped)."""
    if dlq is None or not msgs:
        return
    common: list[tuple[str, bytes]] = [
        (H_TOPIC, topic.encode()),
        (H_PARTITION, str(part).encode()),
        (H_OFFSET, b""),  # per message, below
        (H_GROUP, group.encode()),
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
    try:
        _append_many(engine, txn, dlq, items, None, engine.admit_growth)
    except StorageFullError as exc:
        raise type(exc)(
            f"moving {len(items)} message(s) of {topic!r} to the dead-letter topic {dlq!r} "
            "was refused, nothing was changed (a delivery you hold can be acked instead, "
            f"which drops it): {exc}"
        ) from exc


def _target_topic(engine: Engine, txn: Any, topic: str) -> _log.TopicRecord:
    """Topic record for an append inside ``txn``; a missing dead-letter topic is recreated."""
    try:
        return engine.topic(txn, topic)
    except TopicNotFoundError:
        env = engine.env
        env.topic_cache.clear()
        return _log.create_topic(txn, env.dbs, topic, TopicConfig(), now_ms())


def _append_many(engine: Engine, txn: Any, topic: str,
                 items: Sequence[tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int]],
                 partition: int | None, admit: Callable[[Any, int], None]) -> None:
    """Append records (key, value, headers, timestamp) inside ``txn``, no size cap
    (they were accepted once already); keyed records go to their key's partition.

    ``admit(txn, nbytes)`` is called with the encoded size of all of them before the
    first is written (raises ``StorageFullError`` to refuse them all)."""
    rec = _target_topic(engine, txn, topic)
    by_part: dict[int, list[int]] = {}
    for i, (k, _, _, _) in enumerate(items):
        p = engine.choose_partition(rec, k, partition if partition is None or
                                     partition < len(rec.pids) else None)
        by_part.setdefault(p, []).append(i)
    planned: list[tuple[int, list[bytes]]] = []
    for part, idx in by_part.items():
        sel = [items[i] for i in idx]
        keys = [k for k, _, _, _ in sel]
        planned.append((part, engine.encode(rec, [v for _, v, _, _ in sel],
                                            None if all(k is None for k in keys) else keys,
                                            [h for _, _, h, _ in sel],
                                            [t for _, _, _, t in sel], capped=False)))
    admit(txn, sum(len(b) for _, batches in planned for b in batches))
    for part, batches in planned:
        engine.append_in(txn, rec, part, batches)


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


def _undone(engine: Engine, txn: Any, dlq_topic: str, limit: int | None = None
            ) -> list[DeadLetter]:
    validate_topic_name(dlq_topic)
    dbs = engine.env.dbs
    rec = engine.topic(txn, dlq_topic)
    out: list[DeadLetter] = []
    for part, pid in enumerate(rec.pids):
        st = _log.load_state(txn, dbs, pid)
        pos = max(st.start, _pending.done_floor(txn, dbs, dlq_topic, pid))
        while pos < st.next:
            msgs: list[_core.Message] = []
            pos = _log.read_records(txn, dbs, pid, pos, 1000, msgs, dlq_topic, part, st.next)
            if not msgs:
                break
            for m in _pending.not_done(txn, dbs, dlq_topic, pid, msgs):
                out.append(_as_dead_letter(m))
                if limit is not None and len(out) >= limit:
                    return out
    return out


def _mark_done(engine: Engine, txn: Any, dlq_topic: str, rec: _log.TopicRecord,
               marks: dict[int, list[int]]) -> None:
    """Mark offsets done, then advance each partition's floor over contiguous marks."""
    dbs = engine.env.dbs
    for part, offs in marks.items():
        pid = rec.pids[part]
        st = _log.load_state(txn, dbs, pid)
        _pending.mark_done(txn, dbs, dlq_topic, pid, offs, st.start)


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
    topic no longer exists are left in place and do not count against
    ``limit`` (at most ``limit`` letters are redriven).  A redrive is a send: above the
    high-water mark it raises ``StorageFullError`` and redrives nothing.
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
        exists: dict[str | None, bool] = {None: False}  # None: no original topic recorded
        for name in {to_topic or dl.original_topic for dl in letters}:
            if name is None:
                continue
            try:
                engine.topic(txn, name)
                exists[name] = True
            except TopicNotFoundError:
                exists[name] = False
    chosen: list[DeadLetter] = []
    for dl in letters:
        if limit is not None and len(chosen) >= limit:
            break
        if not exists[to_topic or dl.original_topic]:
            continue  # left in place, and not counted against the limit
        if where is None or where(dl):  # user code runs outside the write lock
            chosen.append(dl)
    n = 0
    touched: set[str] = set()

    def admit(txn: Any, nbytes: int) -> None:
        engine.check_space(env, txn, nbytes)

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
            try:
                _append_many(engine, txn, target,
                             [(msg.key, msg.value, headers, msg.timestamp_ms)], part, admit)
            except StorageFullError as exc:
                raise type(exc)(f"redrive of {dlq_topic!r} refused, nothing was "
                                f"redriven: {exc}") from exc
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
