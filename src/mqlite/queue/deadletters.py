"""Dead letters: the move to the dead-letter topic, and the tools over it.

Owns the ``x-*`` dead-letter headers, :func:`to_dlq` (append messages of a
pending entry to the group's dead-letter topic inside the caller's
transaction), :class:`DeadLetter` and the public tools :func:`dead_letters`,
:func:`redrive` and :func:`purge_dead_letters`, which mark letters done in
``_storage.pending`` in the same transaction that redrives them, and the
predicate :class:`DeadLetterFilter` (``mqlite dlq``'s and the console's filters)
and :class:`DeadLetterCursor` (where a chunked redrive resumes).

Cost: the tools read letters in short read-transaction steps and stop at the
``limit``-th match; the write transaction looks up only the chosen letters, so a
redrive or listing of k letters does not read the whole topic (D83).

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
           "DeadLetterCursor", "DeadLetterFilter", "dead_letter_filter", "dead_letters",
           "purge_dead_letters", "redrive", "to_dlq"]

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


#: Largest original partition or offset a filter takes (offsets are signed 64-bit).
_MAX_I63 = 2**63 - 1
#: Records one scan step reads at most / at least; each step is its own short read
#: transaction, and the filter runs between steps, outside any transaction.
_STEP_MAX, _STEP_MIN = 1000, 100


def _check_filter(label: Callable[[str], str], reason: object, from_topic: object,
                  from_partition: object, from_offset_min: object,
                  from_offset_max: object) -> None:
    for name, text in (("reason", reason), ("from_topic", from_topic)):
        if text is None:
            continue
        if not isinstance(text, str):
            raise TypeError(f"{label(name)} must be str, not {type(text).__name__}")
        if text == "":
            raise ValueError(f"{label(name)} needs a non-empty value")
    for name, v, what in (("from_partition", from_partition, "a partition number"),
                          ("from_offset_min", from_offset_min, "an offset"),
                          ("from_offset_max", from_offset_max, "an offset")):
        if v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"{label(name)} must be int, not {type(v).__name__}")
        if not 0 <= v <= _MAX_I63:
            raise ValueError(f"{label(name)} is {what}, at least 0, got {v}")
    if (isinstance(from_offset_min, int) and isinstance(from_offset_max, int)
            and from_offset_min > from_offset_max):
        raise ValueError(f"{label('from_offset_min')} {from_offset_min} is above "
                         f"{label('from_offset_max')} {from_offset_max}: nothing would match")


class DeadLetterFilter:
    """A ``where`` for :func:`dead_letters`, :func:`redrive` and :func:`purge_dead_letters`
    from the filters ``mqlite dlq`` and the console offer.

    A letter matches when every given filter holds: ``reason`` is a
    case-sensitive substring of its recorded reason; ``from_topic`` is its
    original topic; ``from_partition`` its original partition; its original
    offset lies within ``[from_offset_min, from_offset_max]`` (either bound may
    be left out).  A letter without the header a filter reads does not match it.
    With no filter given every letter matches.

    Raises
    ------
    TypeError
        A text that is not ``str`` or a number that is not ``int``.
    ValueError
        An empty text, a partition or offset below 0 or above ``2**63 - 1``, or
        ``from_offset_min > from_offset_max``.
    """

    __slots__ = ("from_offset_max", "from_offset_min", "from_partition", "from_topic",
                 "reason")

    def __init__(self, *, reason: str | None = None, from_topic: str | None = None,
                 from_partition: int | None = None, from_offset_min: int | None = None,
                 from_offset_max: int | None = None) -> None:
        _check_filter(str, reason, from_topic, from_partition, from_offset_min,
                      from_offset_max)
        self.reason = reason
        self.from_topic = from_topic
        self.from_partition = from_partition
        self.from_offset_min = from_offset_min
        self.from_offset_max = from_offset_max

    def __call__(self, dl: DeadLetter) -> bool:
        """Whether ``dl`` matches every filter given."""
        if self.reason is not None and (dl.reason is None or self.reason not in dl.reason):
            return False
        if self.from_topic is not None and dl.original_topic != self.from_topic:
            return False
        if self.from_partition is not None and dl.original_partition != self.from_partition:
            return False
        lo, hi = self.from_offset_min, self.from_offset_max
        if lo is not None or hi is not None:
            off = dl.original_offset
            if off is None or (lo is not None and off < lo) or (hi is not None and off > hi):
                return False
        return True

    def __repr__(self) -> str:
        given = ", ".join(f"{n}={getattr(self, n)!r}" for n in (
            "reason", "from_topic", "from_partition", "from_offset_min", "from_offset_max")
            if getattr(self, n) is not None)
        return f"DeadLetterFilter({given})"


def dead_letter_filter(*, reason: str | None = None, from_topic: str | None = None,
                       from_partition: int | None = None, from_offset_min: int | None = None,
                       from_offset_max: int | None = None,
                       label: Callable[[str], str] = str) -> DeadLetterFilter | None:
    """The :class:`DeadLetterFilter` of the filters given, or ``None`` when none is.

    ``label`` names a parameter in error messages the way the caller's user
    knows it (``mqlite dlq`` passes its option names, the console its form
    fields); by default the parameter's own name.

    Raises
    ------
    TypeError, ValueError
        As :class:`DeadLetterFilter`, naming the filter with ``label``.
    """
    _check_filter(label, reason, from_topic, from_partition, from_offset_min, from_offset_max)
    if (reason is None and from_topic is None and from_partition is None
            and from_offset_min is None and from_offset_max is None):
        return None
    return DeadLetterFilter(reason=reason, from_topic=from_topic, from_partition=from_partition,
                            from_offset_min=from_offset_min, from_offset_max=from_offset_max)


class DeadLetterCursor:
    """Where the next :func:`redrive` of a run over one dead-letter topic resumes.

    Pass the same cursor to successive ``redrive(..., cursor=c)`` calls (with
    the same ``where`` and ``to_topic``): each call starts every partition
    after the last letter an earlier call examined, so a redrive of N letters in
    chunks reads each letter about once in total instead of once per chunk.  A
    call moves the cursor only when its write transaction commits (a refused or
    failed call leaves it where it was).  Letters a call examined and left (the
    filter refused them, or their target topic is gone) are not offered again
    to later calls with this cursor; letters dead-lettered meanwhile are.  A
    cursor belongs to the first topic it is used with.
    """

    __slots__ = ("_examined", "_next", "_topic")

    def __init__(self) -> None:
        self._topic: str | None = None
        self._next: dict[int, int] = {}  # partition id -> first offset not examined yet
        self._examined = 0

    @property
    def topic(self) -> str | None:
        """The dead-letter topic this cursor belongs to (``None`` until first used)."""
        return self._topic

    @property
    def examined(self) -> int:
        """Undone letters the committed calls with this cursor read (and filtered)."""
        return self._examined

    def _bind(self, topic: str) -> None:
        if self._topic is None:
            self._topic = topic
        elif self._topic != topic:
            raise ValueError(f"this DeadLetterCursor belongs to {self._topic!r}, not "
                             f"{topic!r}: use a new DeadLetterCursor() per dead-letter topic")

    def _advance(self, positions: dict[int, int], examined: int) -> None:
        self._next.update(positions)
        self._examined += examined

    def __repr__(self) -> str:
        return f"DeadLetterCursor(topic={self._topic!r}, examined={self._examined})"


class _Scan(msgspec.Struct):
    """What :func:`_scan` found: the letters, the partition ids it read, and where each
    partition's examination stopped (a cursor's next start), and how many it examined."""

    letters: list[DeadLetter]
    pids: list[int]
    positions: dict[int, int]
    examined: int


def _scan(engine: Engine, dlq_topic: str, limit: int | None,
          accept: Callable[[DeadLetter], bool] | None,
          start: dict[int, int] | None = None,
          prepare: Callable[[Any, list[DeadLetter]], None] | None = None) -> _Scan:
    """Up to ``limit`` (``None``: all) undone letters of ``dlq_topic`` that ``accept``
    takes, oldest first per partition, partition by partition; stops reading at the
    ``limit``-th.

    Reads in steps of at most ``_STEP_MAX`` records, each in its own short read
    transaction; ``prepare(txn, letters)`` runs inside a step's transaction (to
    look up what ``accept`` needs), ``accept`` between steps, outside any
    transaction (it may be user code).  ``start`` maps partition ids to the
    first offset to examine (a cursor's positions).
    """
    env = engine.live_env()
    dbs = env.dbs
    with env.read_txn() as txn:
        pids = list(engine.topic(txn, dlq_topic).pids)
    out: list[DeadLetter] = []
    positions: dict[int, int] = {}
    examined = 0
    for part, pid in enumerate(pids):
        if limit is not None and len(out) >= limit:
            break
        pos = 0 if start is None else start.get(pid, 0)
        while limit is None or len(out) < limit:
            want = _STEP_MAX if limit is None else min(_STEP_MAX,
                                                       max(_STEP_MIN, limit - len(out)))
            msgs: list[_core.Message] = []
            with env.read_txn() as txn:
                if engine.topic(txn, dlq_topic).pids[part:part + 1] != [pid]:
                    break  # deleted and created again meanwhile: not the letters we read
                st = _log.load_state(txn, dbs, pid)
                pos = max(pos, st.start, _pending.done_floor(txn, dbs, dlq_topic, pid))
                if pos >= st.next:
                    break
                end = _log.read_records(txn, dbs, pid, pos, want, msgs, dlq_topic, part,
                                        st.next)
                letters = [_as_dead_letter(m)
                           for m in _pending.not_done(txn, dbs, dlq_topic, pid, msgs)]
                if prepare is not None:
                    prepare(txn, letters)
            if not msgs:
                break
            pos = end
            for i, dl in enumerate(letters):
                if accept is None or accept(dl):
                    out.append(dl)
                    if limit is not None and len(out) >= limit:
                        pos = dl.offset + 1
                        letters = letters[:i + 1]
                        break
            examined += len(letters)
        positions[pid] = pos
    return _Scan(out, pids, positions, examined)


def _still_undone(engine: Engine, txn: Any, dlq_topic: str, rec: _log.TopicRecord,
                  pids: list[int], letters: Sequence[DeadLetter]) -> set[tuple[int, int]]:
    """``(partition, offset)`` of ``letters`` (read from partition ids ``pids``) that are
    still undone in ``txn``: a lookup per letter, not a scan."""
    dbs = engine.env.dbs
    by_part: dict[int, list[Any]] = {}
    for dl in letters:
        by_part.setdefault(dl.partition, []).append(dl.message)
    out: set[tuple[int, int]] = set()
    for part, msgs in by_part.items():
        pid = pids[part]
        if rec.pids[part:part + 1] != [pid]:
            continue  # the topic was deleted (and created again) since the scan
        st = _log.load_state(txn, dbs, pid)
        low = max(st.start, _pending.done_floor(txn, dbs, dlq_topic, pid))
        live = [m for m in msgs if low <= m.offset < st.next]
        out.update((part, m.offset) for m in _pending.not_done(txn, dbs, dlq_topic, pid, live))
    return out


def _mark_done(engine: Engine, txn: Any, dlq_topic: str, rec: _log.TopicRecord,
               marks: dict[int, list[int]]) -> None:
    """Mark offsets done, then advance each partition's floor over contiguous marks."""
    dbs = engine.env.dbs
    for part, offs in marks.items():
        pid = rec.pids[part]
        st = _log.load_state(txn, dbs, pid)
        _pending.mark_done(txn, dbs, dlq_topic, pid, offs, st.start)


def _check_where(where: object) -> None:
    if where is not None and not callable(where):
        raise TypeError("where must be a callable taking a DeadLetter (or a "
                        "mqlite.DeadLetterFilter)")


def dead_letters(engine: Engine, dlq_topic: str, limit: int = 1000,
                 where: Callable[[DeadLetter], bool] | None = None) -> list[DeadLetter]:
    """Up to ``limit`` dead letters in ``dlq_topic`` not yet redriven or purged (those
    ``where`` accepts, when given), oldest first per partition, partition by partition.

    Reading stops at the ``limit``-th match: listing the first few letters of a
    large dead-letter topic does not read the rest.
    """
    validate_topic_name(dlq_topic)
    require_int(limit, "limit", minimum=1)
    _check_where(where)
    return _scan(engine, dlq_topic, limit, where).letters


def redrive(engine: Engine, dlq_topic: str,
            where: Callable[[DeadLetter], bool] | None = None, limit: int | None = None,
            to_topic: str | None = None, cursor: DeadLetterCursor | None = None) -> int:
    """Send dead letters back to their original topic (or ``to_topic``); returns how many.

    Each redriven message is appended with its original key, value and
    headers (the ``x-*`` dead-letter headers removed) to its original
    partition when it still exists, and marked done in the same transaction
    (one write transaction per call), so a crash never redrives twice.
    ``where`` filters; letters whose target topic no longer exists are left in
    place and do not count against ``limit`` (at most ``limit`` letters are
    redriven).  Letters are read only up to the ``limit``-th redrivable match,
    from where ``cursor`` (a :class:`DeadLetterCursor`) says the previous call
    of a run stopped, so chunks of a long redrive cost O(N) reads in total.  A
    redrive is a send: above the high-water mark it raises ``StorageFullError``
    and redrives nothing (and leaves ``cursor`` unmoved).
    """
    validate_topic_name(dlq_topic)
    if to_topic is not None:
        validate_topic_name(to_topic)
    require_int(limit, "limit", minimum=1, allow_none=True)
    _check_where(where)
    if cursor is not None:
        if not isinstance(cursor, DeadLetterCursor):
            raise TypeError(f"cursor must be a mqlite.DeadLetterCursor, not "
                            f"{type(cursor).__name__}")
        cursor._bind(dlq_topic)
    env = engine.live_env()
    exists: dict[str, bool] = {}

    def prepare(txn: Any, letters: list[DeadLetter]) -> None:
        for dl in letters:
            name = to_topic or dl.original_topic
            if name is not None and name not in exists:
                try:
                    engine.topic(txn, name)
                    exists[name] = True
                except TopicNotFoundError:
                    exists[name] = False

    def accept(dl: DeadLetter) -> bool:
        name = to_topic or dl.original_topic
        if name is None or not exists.get(name, False):
            return False  # left in place, and not counted against the limit
        return where is None or bool(where(dl))  # user code runs outside any transaction

    scan = _scan(engine, dlq_topic, limit, accept,
                 None if cursor is None else cursor._next, prepare)
    n = 0
    touched: set[str] = set()

    def admit(txn: Any, nbytes: int) -> None:
        engine.check_space(env, txn, nbytes)

    with engine.write() as txn:
        rec = engine.topic(txn, dlq_topic)
        still = _still_undone(engine, txn, dlq_topic, rec, scan.pids, scan.letters)
        marks: dict[int, list[int]] = {}
        for dl in scan.letters:
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
    if cursor is not None:
        cursor._advance(scan.positions, scan.examined)
    if touched:
        env.notify_topics(touched)
    return n


def purge_dead_letters(engine: Engine, dlq_topic: str,
                       where: Callable[[DeadLetter], bool] | None = None) -> int:
    """Discard dead letters (all, or those ``where`` accepts); returns how many.

    They stay in the dead-letter topic's log (a normal topic: retention
    removes them) but are no longer listed or redriven.  One write transaction;
    ``where`` runs before it, outside any transaction.
    """
    validate_topic_name(dlq_topic)
    _check_where(where)
    scan = _scan(engine, dlq_topic, None, where)
    n = 0
    with engine.write() as txn:
        rec = engine.topic(txn, dlq_topic)
        still = _still_undone(engine, txn, dlq_topic, rec, scan.pids, scan.letters)
        marks: dict[int, list[int]] = {}
        for dl in scan.letters:
            if (dl.partition, dl.offset) in still:
                marks.setdefault(dl.partition, []).append(dl.offset)
                n += 1
        _mark_done(engine, txn, dlq_topic, rec, marks)
    return n
