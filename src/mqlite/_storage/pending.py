"""Pending entries of queue groups and dead-letter "done" marks, inside caller-supplied
transactions.

Layout (docs/format.md), all integers big-endian::

    pending:  "~q~<topic>~<group>" 0x00 pid u32, first offset u64, uid u32
                  -> visible_at_ms u64 | token u64 | first_ms u64 | last_ms u64 |
                     delivery_count u32 | owner 16 bytes (zeros = nobody) | span u32 |
                     error length u32 | bitmap (ceil(span / 8) bytes; bit i = offset
                     first + i still pending) | last error (UTF-8, at most 4096 bytes)
    pending:  "~dlq~<topic>" 0x00 pid u32 offset u64  -> empty: dead letter done
                                                         (redriven or purged)
    pending:  "~dlq~<topic>" 0x00 pid u32             -> u64 floor: every dead letter
                                                         below it is done

One entry is one *delivery range* (the messages one ``receive()`` handed out);
:class:`Entry` is its decoded form.  A group's entries sort by partition id,
then first offset; ``uid`` (random) keeps two ranges with the same first offset
apart.  Entry keys are opaque to callers: they get them from :func:`scan`,
:func:`add` and friends and hand them back.

Callers: the ``mqlite.queue`` package only.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from mqlite._storage.log import prefix_items, prefix_keys
from mqlite._storage.queues import group_name

__all__ = [
    "MAX_ERROR",
    "NOBODY",
    "Entry",
    "add",
    "add_fresh",
    "bitmap",
    "delete",
    "dlq_depth",
    "done_floor",
    "drop_topic",
    "due",
    "get",
    "held_bits",
    "lowest_pending",
    "mark_done",
    "not_done",
    "prefix",
    "put",
    "queue_counts",
    "scan",
    "write_bits",
]

_HDR = struct.Struct(">QQQQI16sII")  # visible, token, first_ms, last_ms, count, owner, span, errlen
_HSIZE = _HDR.size
_U64 = struct.Struct(">Q")
_PK = struct.Struct(">IQI")  # pid, first offset, uid
NOBODY = b"\x00" * 16
MAX_ERROR = 4096
_DLQ_DONE = "~dlq~"


def prefix(qg: str) -> bytes:
    """The key prefix of queue group ``qg``'s entries (an opaque handle for the calls here)."""
    return qg.encode() + b"\x00"


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


def bitmap(span: int, first: int = 0, msgs: Iterable[Any] | None = None) -> bytearray:
    """A bitmap of ``span`` bits: all set, or those of the ``.offset`` of each of ``msgs``
    (counted from ``first``)."""
    if msgs is None:
        return _ones(span)
    bm = bytearray((span + 7) >> 3)
    for m in msgs:
        j = m.offset - first
        bm[j >> 3] |= 1 << (j & 7)
    return bm


class Entry:
    """One decoded pending entry (a delivery range); ``key`` is ``b""`` until stored."""

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
    def decode(cls, key: bytes, raw: Any) -> Entry:
        raw = bytes(raw)
        v, t, f, la, c, o, span, elen = _HDR.unpack_from(raw)
        nb = (span + 7) >> 3
        pid, first, _ = _PK.unpack_from(key, len(key) - _PK.size)
        err = raw[_HSIZE + nb:_HSIZE + nb + elen].decode("utf-8", "replace") if elen else ""
        return cls(key, pid, first, v, t, f, la, c, o, span, bytearray(raw[_HSIZE:_HSIZE + nb]),
                   err)

    def encode(self) -> bytes:
        err = self.error.encode("utf-8")[:MAX_ERROR] if self.error else b""
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


# -- entries -------------------------------------------------------------------------------

def scan(txn: Any, dbs: dict[str, Any], pfx: bytes, pid: int | None = None) -> list[Entry]:
    """Decoded entries under ``pfx`` (of one partition id when given), in key order."""
    if pid is not None:
        pfx += pid.to_bytes(4, "big")
    return [Entry.decode(k, v) for k, v in prefix_items(txn, dbs["pending"], pfx)]


def due(txn: Any, dbs: dict[str, Any], pfx: bytes, now: int, later: int
        ) -> tuple[list[Entry], int]:
    """(entries under ``pfx`` visible at ``now``, the earliest ``visible_at`` of the others,
    or ``later`` when it is smaller); only the due ones are decoded."""
    out: list[Entry] = []
    cur = txn.cursor(db=dbs["pending"])
    if cur.set_range(pfx):
        unpack = _U64.unpack_from
        for k, v in cur:
            if not k.startswith(pfx):
                break
            visible = unpack(v)[0]
            if visible <= now:
                out.append(Entry.decode(bytes(k), v))
            elif visible < later:
                later = visible
    return out, later


def get(txn: Any, dbs: dict[str, Any], key: bytes) -> Entry | None:
    raw = txn.get(key, db=dbs["pending"])
    return None if raw is None else Entry.decode(key, raw)


def put(txn: Any, dbs: dict[str, Any], e: Entry) -> None:
    """Store ``e`` under its key (replacing it), or delete it when no bit is left."""
    if e.empty():
        txn.delete(e.key, db=dbs["pending"])
    else:
        txn.put(e.key, e.encode(), db=dbs["pending"])


def delete(txn: Any, dbs: dict[str, Any], key: bytes) -> None:
    txn.delete(key, db=dbs["pending"])


def _insert(txn: Any, db: Any, pfx: bytes, pid: int, first: int, value: bytes) -> bytes:
    while True:
        key = pfx + _PK.pack(pid, first, secrets.randbits(32))
        if txn.put(key, value, db=db, overwrite=False):
            return key


def add(txn: Any, dbs: dict[str, Any], pfx: bytes, e: Entry) -> bytes:
    """Store ``e`` as a new entry of the group ``pfx``; returns its key (``e.key`` unset)."""
    return _insert(txn, dbs["pending"], pfx, e.pid, e.first, e.encode())


def add_fresh(txn: Any, dbs: dict[str, Any], pfx: bytes, pid: int, first: int, visible: int,
              token: int, now: int, owner: bytes, span: int, bm: bytearray) -> bytes:
    """:func:`add` of a first delivery (count 1, no error) without building an :class:`Entry`."""
    return _insert(txn, dbs["pending"], pfx, pid, first,
                   _HDR.pack(visible, token, now, now, 1, owner, span, 0) + bm)


def held_bits(txn: Any, dbs: dict[str, Any], key: bytes, token: int
              ) -> tuple[bytes, bytearray] | None:
    """(stored value, its bitmap) of entry ``key`` if it is still held under ``token``.

    The ack fast path: clear bits in the bitmap, then :func:`write_bits`.
    """
    raw = txn.get(key, db=dbs["pending"])
    if raw is None or _U64.unpack_from(raw, 8)[0] != token:
        return None
    span = _HDR.unpack_from(raw)[6]
    return raw, bytearray(raw[_HSIZE:_HSIZE + ((span + 7) >> 3)])


def write_bits(txn: Any, dbs: dict[str, Any], key: bytes, raw: Any, bm: bytearray) -> None:
    """Store ``raw`` (from :func:`held_bits`) with bitmap ``bm``; delete it when ``bm`` is 0."""
    if any(bm):
        raw = bytes(raw)
        txn.put(key, raw[:_HSIZE] + bm + raw[_HSIZE + len(bm):], db=dbs["pending"])
    else:
        txn.delete(key, db=dbs["pending"])


def lowest_pending(txn: Any, dbs: dict[str, Any], qg: str, pid: int, below: int) -> int:
    """The lowest offset of partition id ``pid`` that ``qg`` holds pending, if below
    ``below``; else ``below``."""
    pfx = prefix(qg) + pid.to_bytes(4, "big")
    low = below
    pc = txn.cursor(db=dbs["pending"])
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
    return low


def queue_counts(txn: Any, dbs: dict[str, Any], qg: str, now: int) -> tuple[int, int, int, int]:
    """Counts of queue group ``qg``'s pending messages at ``now`` (ms), read-only.

    Returns ``(due, held, delayed, oldest_first_ms)``: messages visible again
    now (timed out, released or nacked without delay), messages held by a
    consumer under a live token and not yet timed out, messages nacked with a
    delay still running, and the earliest first-delivery time of any pending
    message (-1 when there is none).
    """
    due = held = delayed = 0
    oldest = -1
    unpack = _HDR.unpack_from
    for _, v in prefix_items(txn, dbs["pending"], prefix(qg)):
        vis, token, first_ms, _, _, _, span, _ = unpack(v)
        n = int.from_bytes(v[_HSIZE:_HSIZE + ((span + 7) >> 3)], "little").bit_count()
        if vis <= now:
            due += n
        elif token:
            held += n
        else:
            delayed += n
        if n and (oldest < 0 or first_ms < oldest):
            oldest = first_ms
    return due, held, delayed, oldest


# -- dead-letter done marks ------------------------------------------------------------------

def _done_prefix(dlq_topic: str, pid: int) -> bytes:
    return f"{_DLQ_DONE}{dlq_topic}".encode() + b"\x00" + pid.to_bytes(4, "big")


def done_floor(txn: Any, dbs: dict[str, Any], dlq_topic: str, pid: int) -> int:
    """Every dead letter of ``dlq_topic``'s partition id ``pid`` below this is done."""
    raw = txn.get(_done_prefix(dlq_topic, pid), db=dbs["pending"])
    return 0 if raw is None else int(_U64.unpack(bytes(raw))[0])


def not_done(txn: Any, dbs: dict[str, Any], dlq_topic: str, pid: int,
             msgs: Sequence[Any]) -> list[Any]:
    """The messages of ``msgs`` (of partition id ``pid``) not marked done, in order."""
    pend = dbs["pending"]
    pfx = _done_prefix(dlq_topic, pid)
    return [m for m in msgs if txn.get(pfx + _U64.pack(m.offset), db=pend) is None]


def mark_done(txn: Any, dbs: dict[str, Any], dlq_topic: str, pid: int, offsets: Sequence[int],
              log_start: int) -> None:
    """Mark ``offsets`` done, then advance the partition's floor over contiguous marks
    (never below ``log_start``, the first offset still stored)."""
    pend = dbs["pending"]
    pfx = _done_prefix(dlq_topic, pid)
    for off in offsets:
        txn.put(pfx + _U64.pack(off), b"", db=pend)
    floor = max(done_floor(txn, dbs, dlq_topic, pid), log_start)
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


def dlq_depth(txn: Any, dbs: dict[str, Any], dlq_topic: str, pid: int, start: int,
              end: int) -> int:
    """Dead letters of ``dlq_topic``'s partition id ``pid`` not yet done, among the stored
    offsets ``start`` (log start) to ``end`` (exclusive)."""
    low = max(done_floor(txn, dbs, dlq_topic, pid), start)
    if low >= end:
        return 0
    pfx = _done_prefix(dlq_topic, pid)
    marks = 0
    cur = txn.cursor(db=dbs["pending"])
    if cur.set_range(pfx + _U64.pack(low)):
        for raw in cur.iternext(keys=True, values=False):
            k = bytes(raw)
            if not k.startswith(pfx) or len(k) != len(pfx) + 8:
                break
            if _U64.unpack_from(k, len(pfx))[0] >= end:
                break
            marks += 1
    return end - low - marks


def drop_topic(txn: Any, dbs: dict[str, Any], topic: str) -> None:
    """Delete every queue group's entries of ``topic`` and its dead-letter done marks."""
    pend = dbs["pending"]
    for pfx in (group_name(topic, "").encode(), f"{_DLQ_DONE}{topic}\x00".encode()):
        for k in prefix_keys(txn, pend, pfx):
            txn.delete(k, db=pend)
